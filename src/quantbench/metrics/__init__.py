"""Metric registry: one module per metric, one line here per metric.

`scores` is an internal stage (per-token log-probs and divergence arrays over the corpus
windows) that `perplexity` and `divergence` summarize; it is not reported by itself.
Entries are lazy "module:attribute" strings so that planning imports no torch.
"""

from __future__ import annotations

import importlib

from quantbench.errors import UserError, did_you_mean
from quantbench.metrics.base import EvalContext, Metric

REGISTRY: dict[str, str] = {
    "size": "quantbench.metrics.size:SizeMetric",
    "scores": "quantbench.metrics.scores:ScoresStage",
    "perplexity": "quantbench.metrics.perplexity:PerplexityMetric",
    "divergence": "quantbench.metrics.divergence:DivergenceMetric",
    "speed": "quantbench.metrics.speed:SpeedMetric",
    "generations": "quantbench.metrics.generations:GenerationsMetric",
    "tasks": "quantbench.metrics.tasks:TasksMetric",
}
EXECUTION_ORDER = ("speed", "generations", "size", "scores", "perplexity", "divergence", "tasks")
"""Generation runs before scoring so that the size metric's peak memory is generation's;
tasks (the longest stages) run last, so the other figures are saved first."""


def stage_name(metric: str, param: str | None) -> str:
    """A metric run once per parameter (e.g. per task) has one stage per value: 'tasks.gsm8k'."""
    return metric if param is None else f"{metric}.{param}"


def split_stage_name(name: str) -> tuple[str, str | None]:
    metric, _, param = name.partition(".")
    return metric, (param or None)


def get_metric(name: str) -> Metric:
    target = REGISTRY.get(name)
    if target is None or name == "scores":
        public = [n for n in REGISTRY if n != "scores"]
        raise UserError(
            f"unknown metric '{name}'{did_you_mean(name, public)}; known: {', '.join(public)}"
        )
    return _load(target)


def _load(target: str) -> Metric:
    module_name, attribute = target.split(":")
    metric: Metric = getattr(importlib.import_module(module_name), attribute)()
    return metric


def stages_for(requested: tuple[str, ...]) -> list[Metric]:
    """The metrics asked for plus the internal stages they read, in execution order."""
    wanted = {get_metric(name).name for name in requested}
    for name in list(wanted):
        wanted.update(_load(REGISTRY[name]).own_inputs)
    return [_load(REGISTRY[name]) for name in EXECUTION_ORDER if name in wanted]


__all__ = [
    "EXECUTION_ORDER",
    "REGISTRY",
    "EvalContext",
    "Metric",
    "get_metric",
    "split_stage_name",
    "stage_name",
    "stages_for",
]
