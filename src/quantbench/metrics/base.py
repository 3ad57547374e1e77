"""What a metric is: a named, cached stage computed for one variant inside its evaluation worker.

A metric declares the stages it reads (its own variant's, e.g. `scores`, and the baseline's,
e.g. the baseline's `generations`), the slice of the evaluation config that shapes its output
(part of its content key), and whether it needs the model loaded. `compute` returns a typed
record (see `quantbench.results`) and may write files into its stage folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from quantbench.backends.base import Backend, LoadInfo
from quantbench.config import EvaluationConfig
from quantbench.corpus import Windows


@dataclass
class EvalContext:
    """Everything a metric may use inside the evaluation worker of one variant."""

    variant: str
    is_baseline: bool
    artifact: Path
    config: EvaluationConfig
    work: Path
    """This metric's stage folder under construction (files written here are kept)."""
    own: dict[str, Path]
    """Finished stage folders of this variant, by stage name."""
    baseline: dict[str, Path]
    """Finished stage folders of the baseline variant, by stage name."""
    windows: Windows | None
    progress: Callable[[str, int, int], None]
    backend_factory: Callable[[str], tuple[Backend, LoadInfo]]
    backend_name: str = "hf"
    """The backend this metric runs through (`EvaluationConfig.backend_for`)."""
    param: str | None = None
    """For a metric with one stage per parameter (the tasks metric: per task), this stage's."""
    corpus_key: str = ""
    """The key of the corpus stage the windows come from ("" when no metric reads them)."""
    task_manager: Callable[[Callable[[], Any]], Any] | None = None
    """The worker's lm-eval task index, built once by the first task stage that asks
    (`task_manager(build)` returns it, calling `build` only the first time)."""
    divergence_method: str = "exact"
    """How a variant is compared with the baseline: "exact" (the baseline's full
    distribution, recomputed in this worker) or "topk_tail" (its stored top-k + tail)."""
    divergence_detail: str = ""
    """Why that method, one sentence for the record and the report."""
    baseline_loader: Callable[[], Backend] | None = None
    """Loads the baseline's artifact in this metric's backend, next to the variant (the
    caller closes it); None for the baseline itself."""
    alone: bool = False
    """The study runs no other stage while this worker runs (timed metrics' workers)."""
    resume: Path | None = None
    """This stage's folder of finished pieces, kept across kills (`StageStore.partial`):
    a long metric (a task) saves its scored items there and skips them when run again."""

    def backend(self) -> tuple[Backend, LoadInfo]:
        return self.backend_factory(self.backend_name)

    def open_baseline(self) -> Backend:
        """The baseline loaded alongside the variant, for the exact divergence method."""
        if self.baseline_loader is None:
            raise RuntimeError("the baseline's artifact was not passed to this worker")
        return self.baseline_loader()


class Metric(Protocol):
    name: str
    version: int
    needs_model: bool
    uses_corpus: bool
    own_inputs: tuple[str, ...]
    baseline_inputs: tuple[str, ...]
    reported: bool
    timed: bool
    """Its figures are times: its stage runs in a worker of its own with no other stage of
    the study running (`quantbench.schedule`).

    A metric may also set `resumable = True`: its stage then gets a folder kept across kills
    (`EvalContext.resume`) for the pieces it has finished."""

    def key_config(self, config: EvaluationConfig) -> dict[str, Any]:
        """The config slice that determines this metric's output."""
        ...

    def compute(self, ctx: EvalContext) -> BaseModel: ...
