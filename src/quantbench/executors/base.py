"""How a study's independent jobs run: in order here, or spread over a Ray cluster.

An executor does two things. `capacity` says what the study's jobs (quantize one variant,
evaluate one variant, time one variant) may use at once, which `quantbench.schedule` shares
out; the jobs themselves stay in the driver, where the progress display and the stage store
live. `launch` runs the heavy part of a job, a quantbench worker module (`python -m
quantbench.quantize REQUEST`), somewhere with the resources the stage asks for, and streams
its progress events back. Workers read their inputs from the study's output folder and
commit their stage there, so every node must reach it: the same path on a shared filesystem,
or a URL (`output.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from quantbench.schedule import Capacity

Resources = dict[str, float]
"""Ray-style resource request: num_cpus, num_gpus, memory (bytes)."""


class Launch(Protocol):
    def __call__(
        self,
        module: str,
        request: dict[str, Any],
        request_path: Path,
        log_path: Path,
        on_event: Callable[[dict[str, Any]], None],
        on_stderr: Callable[[str], None] = ...,
        resources: Resources | None = None,
    ) -> int:
        """Run `python -m module request_path` to completion; return its exit status."""
        ...


class Executor(Protocol):
    name: str

    def capacity(self, memory_bytes: int | None, max_parallel: int | None) -> Capacity:
        """What the study's jobs may use together (`quantbench.schedule`): this machine's
        cores and `memory_bytes` here; on a cluster, what the cluster places."""
        ...

    def launch(
        self,
        module: str,
        request: dict[str, Any],
        request_path: Path,
        log_path: Path,
        on_event: Callable[[dict[str, Any]], None],
        on_stderr: Callable[[str], None] = ...,
        resources: Resources | None = None,
    ) -> int:
        """Run a worker module where `resources` are available; return its exit status."""
        ...

    def prestart(self) -> None:
        """Begin, in the background, what workers will need (the local executor's fork
        server imports torch and transformers) while the driver prepares their inputs."""
        ...

    def describe(self) -> dict[str, Any]:
        """Where the work ran (for provenance)."""
        ...

    def close(self) -> None: ...
