"""Task accuracy (lm-evaluation-harness), one stage per task, paired with the baseline.

Each task stage keeps a score per item (`items.json`): the variant's and the baseline's
stages cover the same items, so the comparison is paired. The record reports accuracy with
a Wilson interval, the variant-minus-baseline difference with a paired bootstrap interval
over items, the items that flipped each way, and the exact McNemar p-value. A "same items"
check compares lm-eval's prompt hashes; pairing is refused when they differ.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from quantbench import stats
from quantbench.config import EvaluationConfig, TasksConfig
from quantbench.errors import UserError
from quantbench.metrics.base import EvalContext
from quantbench.models import cache_dir
from quantbench.results import Interval, PairedTaskComparison, TaskRecord
from quantbench.tasks.data import OFFLINE_LAYOUTS, eval_counts
from quantbench.tasks.harness import (
    ItemProgress,
    check_task,
    data_files,
    files_sha256,
    format_duration,
    planned_items,
    run_task,
    runs_code,
)
from quantbench.tasks.punkt import use_punkt_tab

ITEMS_FILE = "items.json"
BOOTSTRAP_RESAMPLES = 2000


@cache
def _lm_eval_task_names() -> tuple[str, ...]:
    from lm_eval.tasks import TaskManager

    return tuple(TaskManager().all_tasks)


class TasksMetric:
    name = "tasks"
    version = 2
    needs_model = True
    uses_corpus = False
    own_inputs: tuple[str, ...] = ()
    baseline_inputs: tuple[str, ...] = ("tasks",)
    reported = True
    timed = False
    resumable = True
    """A stage keeps its scored chunks across kills and resumes at the first unscored one."""

    def params(self, config: EvaluationConfig) -> tuple[str, ...]:
        """One stage per task name, so adding a task later does not re-run the others."""
        if not config.tasks.names:
            raise UserError("the tasks metric needs task names, e.g. --tasks gsm8k,ifeval")
        return config.tasks.names

    def key_config(self, config: EvaluationConfig, param: str | None = None) -> dict[str, Any]:

        settings = config.tasks
        if param is None:
            return {"names": list(settings.names)}
        check_task(param, settings, _lm_eval_task_names)
        cap, context = settings.max_gen_tokens, config.vllm.max_model_len
        if config.backend_for(self.name) == "vllm" and cap is not None and cap >= context:
            raise UserError(
                f"--max-gen-tokens {cap} leaves no room for task prompts in vLLM's context "
                f"of {context} tokens: raise evaluation.vllm.max_model_len"
            )
        key: dict[str, Any] = {
            "task": param,
            "limit": settings.limit,
            "num_fewshot": settings.num_fewshot,
            "apply_chat_template": settings.apply_chat_template,
            "max_gen_tokens": settings.max_gen_tokens,
            "batch_size": settings.batch_size,
            "chunk_items": settings.chunk_items,
            "data_sha256": files_sha256(data_files(param, settings)),
            "lm_eval": _lm_eval_version(),
        }
        if runs_code(param):
            key["sandbox"] = [settings.code_timeout_s, settings.code_memory_mb]
        if config.seed != 0:  # the intervals depend on it (keys of default-seed runs unchanged)
            key["seed"] = config.seed
        return key

    def compute(self, ctx: EvalContext) -> TaskRecord:

        task = ctx.param
        if task is None:
            raise RuntimeError("the tasks metric runs once per task name")
        settings = ctx.config.tasks
        use_punkt_tab(_nltk_data_dir())
        backend, _ = ctx.backend()
        if ctx.task_manager is None:
            raise RuntimeError("the evaluation worker gives task stages its lm-eval task index")
        manager = ctx.task_manager(lambda: _task_manager(settings))
        meter = ItemProgress(_ProgressRelay(ctx, task))
        lm = backend.lm_eval_model(settings.batch_size, meter.within_chunk)
        start = time.perf_counter()
        run = run_task(task, lm, settings, manager, meter, resume=ctx.resume)
        wall_s = time.perf_counter() - start
        run.settings["backend"] = ctx.config.backend_key(self.name)
        (ctx.work / ITEMS_FILE).write_text(
            json.dumps(
                {"task": task, "metric": run.metric, "filter": run.filter, "items": run.items},
                ensure_ascii=False,
                indent=1,
            )
        )
        reference_dir = ctx.work if ctx.is_baseline else ctx.baseline.get("tasks")
        baseline_items = _read_items(reference_dir) if reference_dir else None
        return summarize_task(
            task,
            run.metric,
            run.filter,
            run.items,
            baseline_items,
            seed=ctx.config.seed,
            aggregates=run.aggregates,
            settings=run.settings,
            data_files=run.data_files,
            wall_s=wall_s,
        )


class _ProgressRelay:
    """Forwards the model's request progress as '<task>: generating' phases."""

    def __init__(self, ctx: EvalContext, task: str) -> None:
        self.ctx, self.task = ctx, task

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.ctx.progress(f"{self.task}: {phase}", done, total)


@dataclass(frozen=True)
class TaskWork:
    """What a pending task stage will do, for `quantbench plan`: its item count (None for a
    task whose documents only lm-eval can count: hub data) and an estimate of its duration,
    seconds, from a measured rate (None when nothing was measured yet)."""

    items: int | None
    seconds: float | None
    source: str

    def describe(self) -> str:
        if self.items is None:
            return "items counted when lm-eval builds the task (hub data)"
        text = f"{self.items:,} items"
        if self.seconds is None:
            return f"{text}; {self.source}"
        return f"{text}, about {format_duration(self.seconds)} ({self.source})"


def planned_work(
    task: str,
    settings: TasksConfig,
    saved_chunks: list[tuple[int, float]],
    finished: list[tuple[int, float]],
) -> TaskWork:
    """A pending task stage's items and duration. The rate comes from this stage's own saved
    chunks (items, scoring seconds) when a killed run left some, else from finished stages
    of the same task on the same backend in this folder (items, scoring seconds), else it is
    unknown: per-item cost varies too much between tasks to borrow another task's."""
    items = None
    if settings.data_dir is not None and task in OFFLINE_LAYOUTS:
        items = planned_items(eval_counts(task, settings.data_dir), settings.limit)
    if items is None:
        return TaskWork(None, None, "")
    for pieces, source in (
        (saved_chunks, "at the rate of this stage's first {n:,} items"),
        (finished, "at the rate of {n:,} items of this task already scored here"),
    ):
        done = sum(n for n, _ in pieces)
        seconds = sum(s for _, s in pieces)
        if done and seconds > 0:
            left = items - (done if pieces is saved_chunks else 0)
            return TaskWork(items, max(0, left) * seconds / done, source.format(n=done))
    return TaskWork(items, None, "no rate measured yet (one appears once a chunk is scored)")


def _read_items(stage_dir: Path) -> list[dict[str, Any]]:
    data = json.loads((stage_dir / ITEMS_FILE).read_text())
    items: list[dict[str, Any]] = data["items"]
    return items


def summarize_task(
    task: str,
    metric: str,
    filter_name: str,
    items: list[dict[str, Any]],
    baseline_items: list[dict[str, Any]] | None,
    *,
    seed: int,
    aggregates: dict[str, dict[str, float]],
    settings: dict[str, Any],
    data_files: dict[str, str],
    wall_s: float,
) -> TaskRecord:
    """Accuracy with its interval, per-subtask accuracy, and the paired comparison."""
    scores = np.array([item["score"] for item in items], dtype=np.float64)
    binary = bool(np.all((scores == 0.0) | (scores == 1.0)))
    mean = float(scores.mean())
    if binary:
        low, high = stats.wilson_interval(int(scores.sum()), len(scores))
    else:
        low, high = stats.bootstrap_ci(scores, n_resamples=BOOTSTRAP_RESAMPLES, seed=seed)
    subtasks: dict[str, list[float]] = {}
    for item in items:
        subtasks.setdefault(item["subtask"], []).append(item["score"])
    comparison = None
    if baseline_items is not None:
        comparison = compare_items(items, baseline_items, seed=seed)
    return TaskRecord(
        task=task,
        metric=metric,
        filter=filter_name,
        n_items=len(items),
        accuracy=Interval(estimate=mean, low=low, high=high),
        accuracy_interval="wilson" if binary else "bootstrap",
        subtasks={name: float(np.mean(values)) for name, values in subtasks.items()},
        vs_baseline=comparison,
        aggregates=aggregates,
        settings=settings,
        data_files=data_files,
        wall_s=wall_s,
    )


def compare_items(
    items: list[dict[str, Any]], baseline_items: list[dict[str, Any]], *, seed: int
) -> PairedTaskComparison:
    """Pair items by id (checking their prompts match) and compare variant with baseline."""
    base = {item["id"]: item for item in baseline_items}
    own = {item["id"]: item for item in items}
    if set(base) != set(own):
        raise UserError(
            f"the variant ran {len(own)} items and the baseline {len(base)}, "
            f"{len(set(own) ^ set(base))} not shared; re-run both with the same settings"
        )
    ids = sorted(own)
    mismatched = [
        i
        for i in ids
        if own[i].get("prompt_hash") and own[i].get("prompt_hash") != base[i].get("prompt_hash")
    ]
    if mismatched:
        raise UserError(
            f"{len(mismatched)} item(s) had different prompts for the variant and the baseline "
            f"(e.g. {mismatched[0]}), so they cannot be paired"
        )
    variant_scores = np.array([own[i]["score"] for i in ids], dtype=np.float64)
    base_scores = np.array([base[i]["score"] for i in ids], dtype=np.float64)
    estimate, low, high = stats.paired_bootstrap_diff_ci(
        variant_scores, base_scores, n_resamples=BOOTSTRAP_RESAMPLES, seed=seed
    )
    binary = bool(np.all(np.isin(np.concatenate([variant_scores, base_scores]), (0.0, 1.0))))
    right_to_wrong = int(np.sum((base_scores == 1.0) & (variant_scores == 0.0)))
    wrong_to_right = int(np.sum((base_scores == 0.0) & (variant_scores == 1.0)))
    return PairedTaskComparison(
        n_paired=len(ids),
        difference_points=Interval(estimate=100 * estimate, low=100 * low, high=100 * high),
        right_to_wrong=right_to_wrong,
        wrong_to_right=wrong_to_right,
        mcnemar_p=stats.mcnemar_exact_p(right_to_wrong, wrong_to_right) if binary else None,
    )


def _nltk_data_dir() -> Path:

    return cache_dir() / "nltk_data"


def _task_manager(settings: TasksConfig) -> Any:
    """lm-eval's task index; skipped (≈ 9 s) when every task runs from local files."""
    from lm_eval.tasks import TaskManager

    local = settings.data_dir is not None and all(n in OFFLINE_LAYOUTS for n in settings.names)
    return TaskManager(include_defaults=not local)


def _lm_eval_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return None
