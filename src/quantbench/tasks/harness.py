"""Run one lm-eval task (or group) on a loaded model and keep a score per item.

Every variant runs the same items with the same settings: the first `limit` items of the
task (spread evenly over a group's subtasks), the same few-shot count, chat-template
choice and generation cap. Items carry lm-eval's document, prompt and target hashes, so
the pairing with the baseline can be checked rather than assumed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantbench.config import TasksConfig
from quantbench.errors import UserError, did_you_mean
from quantbench.models import file_sha256
from quantbench.sandbox import SandboxLimits, describe_sandbox, sandbox_available
from quantbench.store import write_json_atomic
from quantbench.tasks.code import CODE_TASKS, PASS_METRIC, code_task_config
from quantbench.tasks.data import OFFLINE_LAYOUTS, dataset_overrides, resolve_files

PRIMARY_METRICS: dict[str, tuple[str, str]] = {
    "mmlu_pro": ("exact_match", "custom-extract"),
    "gsm8k": ("exact_match", "strict-match"),
    "ifeval": ("prompt_level_strict_acc", "none"),
    "humaneval_plus": (PASS_METRIC, "create_test"),
    "humaneval": (PASS_METRIC, "create_test"),
}
"""Task → (metric, filter) that quantbench pairs and reports; lm-eval's headline for each.
Other tasks use the first metric and filter of their own config."""

MAX_RESPONSE_CHARS = 4000


@dataclass
class LeafTask:
    name: str
    task: Any
    """An lm-eval `Task`."""
    n_docs: int = 0
    take: int = 0


@dataclass
class TaskRun:
    """The outcome of one task on one variant: a score per item plus lm-eval's aggregates."""

    task: str
    metric: str
    filter: str
    items: list[dict[str, Any]]
    aggregates: dict[str, dict[str, float]]
    settings: dict[str, Any]
    data_files: dict[str, str] = field(default_factory=dict)


def stock_task_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def sandbox_limits(config: TasksConfig) -> SandboxLimits:
    return SandboxLimits(timeout_s=config.code_timeout_s, memory_mb=config.code_memory_mb)


def runs_code(name: str) -> bool:
    return name in CODE_TASKS


def check_task(name: str, config: TasksConfig, known: Callable[[], Sequence[str]]) -> None:
    """Refuse, before any compute, a task that cannot run as configured.

    `known` lists lm-eval's task names; it is called only for names quantbench has no
    local layout for, since indexing lm-eval's tasks takes seconds. Such a task reads its
    data from the hub even when `data_dir` is set.
    """
    if runs_code(name):
        if not config.allow_code_execution:
            raise UserError(
                f"task '{name}' executes model-written code; pass --allow-code-execution to run "
                "it inside quantbench's sandbox (no network, read-only filesystem, time and "
                "memory limits)"
            )

        reason = sandbox_available()
        if reason is not None:
            raise UserError(f"task '{name}' needs the code sandbox, which cannot run: {reason}")
    if config.data_dir is not None and name in OFFLINE_LAYOUTS:
        resolve_files(name, config.data_dir)
        return
    names = known()
    if name not in names:
        raise UserError(f"unknown lm-eval task '{name}'{did_you_mean(name, names)}")


def data_files(name: str, config: TasksConfig) -> dict[str, Path]:
    if config.data_dir is not None and name in OFFLINE_LAYOUTS:
        return resolve_files(name, config.data_dir)
    return {}


def build_leaves(name: str, config: TasksConfig, task_manager: Any) -> list[LeafTask]:
    """The lm-eval tasks behind `name`: itself, or a group's subtasks in the group's order."""
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    stock = stock_task_dir()
    files = data_files(name, config)
    overrides = dataset_overrides(files) if files else {}
    if runs_code(name):
        cfg = code_task_config(stock / "humaneval" / f"{name}.yaml", name, sandbox_limits(config))
        return [LeafTask(name, ConfigurableTask(config={**cfg, **overrides}))]
    if name == "mmlu_pro" and files:
        group = load_yaml(stock / "mmlu_pro" / "_mmlu_pro.yaml", resolve_func=False)
        leaves = []
        for sub in group["task"]:
            cfg = load_yaml(stock / "mmlu_pro" / f"{sub}.yaml")
            leaves.append(LeafTask(sub, ConfigurableTask(config={**cfg, **overrides})))
        return leaves
    if files:
        cfg = load_yaml(stock / name / f"{name}.yaml")
        return [LeafTask(name, ConfigurableTask(config={**cfg, **overrides}))]
    loaded = task_manager.load_task_or_group([name])
    leaves = []
    for key, value in loaded.items():
        children = value.items() if isinstance(value, dict) else [(key, value)]
        for leaf_name, task in children:
            if getattr(task.config, "unsafe_code", False) and not runs_code(str(leaf_name)):
                raise UserError(
                    f"task '{leaf_name}' executes model-written code, and quantbench scores "
                    f"code only for {', '.join(sorted(CODE_TASKS))} (in its sandbox)"
                )
            leaves.append(LeafTask(str(leaf_name), task))
    return leaves


def choose_items(leaves: list[LeafTask], limit: int | float | None) -> None:
    """Set how many of each leaf's first documents run: all; a fraction (below 1) of each
    leaf's, rounded up as lm-eval rounds its own `--limit 0.1`; or `limit` items spread
    evenly over the leaves."""
    for leaf in leaves:
        leaf.n_docs = len(leaf.task.eval_docs)
    if limit is None:
        for leaf in leaves:
            leaf.take = leaf.n_docs
        return
    if isinstance(limit, float) and limit < 1:
        for leaf in leaves:
            leaf.take = min(leaf.n_docs, math.ceil(leaf.n_docs * limit))
        return
    remaining = int(limit)
    open_leaves = [leaf for leaf in leaves if leaf.n_docs > 0]
    for leaf in leaves:
        leaf.take = 0
    while remaining > 0 and open_leaves:
        share = max(1, remaining // len(open_leaves))
        for leaf in list(open_leaves):
            grant = min(share, leaf.n_docs - leaf.take, remaining)
            leaf.take += grant
            remaining -= grant
            if leaf.take >= leaf.n_docs:
                open_leaves.remove(leaf)
            if remaining == 0:
                break


def planned_items(counts: list[int], limit: int | float | None) -> int:
    """How many items `choose_items` takes from subtasks of these sizes (a count limit is
    spread until it is spent or every subtask is exhausted, so only the total matters)."""
    if limit is None:
        return sum(counts)
    if isinstance(limit, float) and limit < 1:
        return sum(min(n, math.ceil(n * limit)) for n in counts)
    return min(int(limit), sum(counts))


def item_chunks(chosen: list[LeafTask], size: int) -> list[dict[str, list[int]]]:
    """The chosen items (each leaf's first `take` documents, leaves in order) cut into
    consecutive chunks of `size` items: leaf name → document ids, per chunk.

    A chunk is one lm-eval call, and its scored items are saved before the next starts, so
    a killed stage resumes at this granularity. The cut points are part of a task stage's
    key (`chunk_items`): lm-eval reseeds its few-shot sampler per call, so for randomly
    sampled few-shot tasks they shape the prompts (the prompt hashes check that every
    variant saw the same ones)."""
    flat = [(leaf.name, doc) for leaf in chosen for doc in range(leaf.take)]
    chunks = []
    for start in range(0, len(flat), size):
        chunk: dict[str, list[int]] = {}
        for leaf_name, doc in flat[start : start + size]:
            chunk.setdefault(leaf_name, []).append(doc)
        chunks.append(chunk)
    return chunks


LM_EVAL_DEFAULT_MAX_GEN_TOKS = 256
"""What lm-eval's HF model generates at most when a task sets no `max_gen_toks`."""


def cap_generation(task: Any, cap: int) -> None:
    """Lower a generative task's token limit to `cap`; a smaller limit of its own stays."""
    if task.config.output_type != "generate_until":
        return
    kwargs = dict(task.config.generation_kwargs or {})
    own = int(kwargs.get("max_gen_toks") or LM_EVAL_DEFAULT_MAX_GEN_TOKS)
    kwargs["max_gen_toks"] = min(own, cap)
    task.set_config(key="generation_kwargs", value=kwargs)


def primary_metric(name: str, leaf: LeafTask) -> tuple[str, str]:
    if name in PRIMARY_METRICS:
        return PRIMARY_METRICS[name]
    config = leaf.task.config
    metrics = config.metric_list or [{"metric": "acc"}]
    metric = metrics[0]["metric"]
    metric_name = metric if isinstance(metric, str) else getattr(metric, "__name__", "score")
    filters = config.filter_list or []
    return metric_name, (filters[0]["name"] if filters else "none")


def run_task(
    name: str,
    lm: Any,
    config: TasksConfig,
    task_manager: Any,
    meter: ItemProgress,
    resume: Path | None = None,
) -> TaskRun:
    """Run task `name` through `lm` (an lm-eval `LM`, reporting its requests to
    `meter.within_chunk`) and score every chosen item.

    The items run in chunks of `config.chunk_items`; with `resume` (a folder kept across kills)
    each chunk's scored items are saved there, and chunks found there are not run again.
    `config.apply_chat_template` must be settled (`evaluate.with_chat_template_choice`)."""
    import lm_eval

    leaves = build_leaves(name, config, task_manager)
    choose_items(leaves, config.limit)
    chosen = [leaf for leaf in leaves if leaf.take > 0]
    if not chosen:
        raise UserError(f"task '{name}' has no documents to evaluate")
    metric, filter_name = primary_metric(name, chosen[0])
    if config.max_gen_tokens:
        for leaf in chosen:
            cap_generation(leaf.task, config.max_gen_tokens)
    chat = bool(config.apply_chat_template)
    by_name = {leaf.name: leaf for leaf in chosen}
    chunks = item_chunks(chosen, config.chunk_items)
    meter.begin(sum(leaf.take for leaf in chosen))
    pieces: list[dict[str, Any]] = []
    for index, chunk in enumerate(chunks):
        saved = resume / f"chunk-{index:05d}.json" if resume is not None else None
        piece = _read_piece(saved, chunk)
        if piece is not None:
            pieces.append(piece)
            meter.resumed(sum(map(len, chunk.values())))
            continue
        meter.start_chunk(sum(map(len, chunk.values())))
        truncated_before = getattr(lm, "truncated", 0)
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=[by_name[leaf_name].task for leaf_name in chunk],
            samples=chunk,
            num_fewshot=config.num_fewshot,
            apply_chat_template=chat,
            fewshot_as_multiturn=chat,
            log_samples=True,
            bootstrap_iters=0,
            task_manager=task_manager,
            confirm_run_unsafe_code=runs_code(name),
        )
        if output is None:
            raise RuntimeError("lm-eval returned no results")
        piece = _piece(output, chunk, filter_name, metric, by_name)
        piece["scoring_s"] = time.perf_counter() - meter.chunk_started
        piece["truncated_prompts"] = getattr(lm, "truncated", 0) - truncated_before
        if saved is not None:
            write_json_atomic(saved, piece)
        pieces.append(piece)
        meter.end_chunk()
    items = [item for piece in pieces for item in piece["items"]]
    settings = {
        "limit": config.limit,
        "items_per_subtask": {leaf.name: leaf.take for leaf in chosen},
        "docs_per_subtask": {leaf.name: leaf.n_docs for leaf in chosen},
        "num_fewshot": {
            leaf.name: next(
                (p["n_shot"][leaf.name] for p in pieces if leaf.name in p["n_shot"]), None
            )
            for leaf in chosen
        },
        "apply_chat_template": chat,
        "max_gen_tokens": config.max_gen_tokens,
        "batch_size": config.batch_size,
        "chunk_items": config.chunk_items,
        "resumed_items": meter.resumed_items,
        "truncated_prompts": sum(int(p.get("truncated_prompts") or 0) for p in pieces),
        "lm_eval_version": lm_eval.__version__,
    }
    if runs_code(name):
        settings["sandbox"] = describe_sandbox(sandbox_limits(config))
    files = {split: str(path) for split, path in data_files(name, config).items()}
    return TaskRun(name, metric, filter_name, items, combine_aggregates(pieces), settings, files)


class ItemProgress:
    """Reports a task's progress in items (done / total), with the rate of this run's own
    scoring and the time left at that rate; requests within a chunk move it in between."""

    def __init__(self, report: Callable[[str, int, int], None]) -> None:
        self.report = report
        self.total = 0
        self.done = 0
        self.resumed_items = 0
        self.scored = 0
        self.scoring_s = 0.0
        self._chunk = 0
        self.chunk_started = 0.0

    def begin(self, total: int) -> None:
        self.total = total
        self.report(self._describe(), 0, total)

    def resumed(self, count: int) -> None:
        self.done += count
        self.resumed_items += count

    def start_chunk(self, count: int) -> None:
        self._chunk = count
        self.chunk_started = time.perf_counter()
        self.report(self._describe(), self.done, self.total)

    def within_chunk(self, phase: str, done: int, total: int) -> None:
        """Request progress inside the running chunk (from the lm-eval model)."""
        share = round(self._chunk * done / total) if total else 0
        self.report(f"{phase}, {self._describe()}", self.done + share, self.total)

    def end_chunk(self) -> None:
        self.scoring_s += time.perf_counter() - self.chunk_started
        self.scored += self._chunk
        self.done += self._chunk
        self._chunk = 0
        self.report(self._describe(), self.done, self.total)

    def _describe(self) -> str:
        text = f"{self.done:,}/{self.total:,} items"
        if self.resumed_items:
            text += f" ({self.resumed_items:,} resumed)"
        if self.scored and self.scoring_s > 0:
            rate = self.scored / self.scoring_s
            left = (self.total - self.done) / rate
            text += f", {rate:.2f} items/s, {format_duration(left)} left"
        return text


def format_duration(seconds: float) -> str:
    """A duration for a person: "45 s", "12 min", "3.4 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _piece(
    output: dict[str, Any],
    chunk: dict[str, list[int]],
    filter_name: str,
    metric: str,
    leaves: dict[str, LeafTask],
) -> dict[str, Any]:
    """One chunk's scored items, its per-leaf lm-eval aggregates, item counts and which of
    the aggregates are means over items (the only ones chunks can be combined into)."""
    items = []
    for leaf_name, docs in chunk.items():
        kept = [s for s in output["samples"][leaf_name] if s.get("filter") == filter_name]
        if sorted(int(s["doc_id"]) for s in kept) != docs:
            raise RuntimeError(
                f"{leaf_name}: lm-eval logged {len(kept)} items for filter '{filter_name}', "
                f"expected documents {docs[0]}-{docs[-1]}"
            )
        for sample in sorted(kept, key=lambda s: int(s["doc_id"])):
            items.append(_item(leaf_name, sample, metric))
    results = {
        leaf_name: {
            k: float(v)
            for k, v in output["results"].get(leaf_name, {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and "_stderr" not in k
        }
        for leaf_name in chunk
    }
    n_shot = {leaf_name: output.get("n-shot", {}).get(leaf_name) for leaf_name in chunk}
    counts = {leaf_name: len(docs) for leaf_name, docs in chunk.items()}
    means = {leaf_name: _mean_metrics(leaves[leaf_name].task) for leaf_name in chunk}
    return {
        "items": items,
        "results": results,
        "counts": counts,
        "n_shot": n_shot,
        "mean_metrics": means,
    }


def _mean_metrics(task: Any) -> list[str]:
    """The task's metrics that lm-eval aggregates as a plain mean over items."""
    from lm_eval.api.metrics import mean

    try:
        aggregation = task.aggregation()
    except Exception:  # a task without the usual config: keep nothing across chunks
        return []
    return sorted(name for name, function in aggregation.items() if function is mean)


def _read_piece(path: Path | None, chunk: dict[str, list[int]]) -> dict[str, Any] | None:
    """A chunk saved by an earlier, killed run of this stage, if it covers exactly `chunk`."""
    if path is None or not path.is_file():
        return None
    try:
        piece: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ids = sorted((item["subtask"], item["doc_id"]) for item in piece.get("items", []))
    expected = sorted((leaf, doc) for leaf, docs in chunk.items() for doc in docs)
    return piece if ids == expected else None


def combine_aggregates(pieces: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each leaf's lm-eval aggregates over all its chunks. A leaf scored in one chunk keeps
    lm-eval's figures as they are; over several, only the metrics lm-eval aggregates as a
    plain mean are combined (the item-weighted mean of the chunks' means is then exact), and
    the rest (IFEval's instruction-level accuracy, corpus metrics, standard errors) are
    left out rather than approximated."""
    chunks_of: dict[str, int] = {}
    for piece in pieces:
        for leaf_name in piece["results"]:
            chunks_of[leaf_name] = chunks_of.get(leaf_name, 0) + 1
    sums: dict[str, dict[str, float]] = {}
    weights: dict[str, dict[str, int]] = {}
    for piece in pieces:
        for leaf_name, values in piece["results"].items():
            count = int(piece["counts"][leaf_name])
            means = set(piece.get("mean_metrics", {}).get(leaf_name, []))
            for key, value in values.items():
                if chunks_of[leaf_name] > 1 and key.split(",")[0] not in means:
                    continue
                sums.setdefault(leaf_name, {}).setdefault(key, 0.0)
                sums[leaf_name][key] += value * count
                weights.setdefault(leaf_name, {}).setdefault(key, 0)
                weights[leaf_name][key] += count
    return {
        leaf_name: {key: total / weights[leaf_name][key] for key, total in values.items()}
        for leaf_name, values in sums.items()
    }


def in_chunks(
    call: Callable[..., list[Any]],
    requests: list[Any],
    chunk_size: int,
    report: Callable[[str, int, int], None],
    phase: str,
) -> list[Any]:
    """Run an lm-eval request list through `call` in chunks, reporting after each one.

    Requests go longest context first, so that each chunk batches well and the time left
    shrinks as it goes; results come back in the order of `requests`.
    """
    order = sorted(range(len(requests)), key=lambda i: -len(str(requests[i].args[0])))
    results: list[Any] = [None] * len(requests)
    for start in range(0, len(order), chunk_size):
        chosen = order[start : start + chunk_size]
        for index, result in zip(
            chosen, call([requests[i] for i in chosen], disable_tqdm=True), strict=True
        ):
            results[index] = result
        report(phase, min(start + chunk_size, len(order)), len(order))
    return results


def _item(leaf: str, sample: dict[str, Any], metric: str) -> dict[str, Any]:
    if metric not in sample:
        raise RuntimeError(f"{leaf}: lm-eval logged no '{metric}' (has: {sorted(sample)})")
    value = sample[metric]
    if isinstance(value, list | tuple):  # per-instruction metrics: a prompt scores their mean
        value = sum(map(float, value)) / len(value) if value else 0.0
    resps = sample.get("resps") or [[""]]
    response = resps[0][0] if resps and resps[0] else ""
    return {
        "id": f"{leaf}/{int(sample['doc_id'])}",
        "subtask": leaf,
        "doc_id": int(sample["doc_id"]),
        "score": float(value),
        "doc_hash": sample.get("doc_hash"),
        "prompt_hash": sample.get("prompt_hash"),
        "target_hash": sample.get("target_hash"),
        "response": str(response)[:MAX_RESPONSE_CHARS],
        "extracted": json.dumps(sample.get("filtered_resps"), default=str)[:200],
    }


def files_sha256(files: dict[str, Path]) -> dict[str, str]:
    """Content hashes of a task's local data files (part of the task stage's key)."""

    return {split: file_sha256(path) for split, path in sorted(files.items())}
