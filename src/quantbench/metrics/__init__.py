"""Metric registry: one module per metric, one line here per metric.

`scores` is an internal stage (per-token log-probs and divergence arrays over the corpus
windows) that `perplexity` and `divergence` summarize; it is not reported by itself.
Entries are lazy "module:attribute" strings so that planning imports no torch; installed
packages add metrics as entry points in the group `quantbench.metrics` (see
`quantbench.registry`). A metric class is instantiated with no arguments.
"""

from __future__ import annotations

from quantbench.errors import UserError, did_you_mean
from quantbench.metrics.base import EvalContext, Metric
from quantbench.registry import Registry

BUILTIN: dict[str, str] = {
    "size": "quantbench.metrics.size:SizeMetric",
    "scores": "quantbench.metrics.scores:ScoresStage",
    "perplexity": "quantbench.metrics.perplexity:PerplexityMetric",
    "divergence": "quantbench.metrics.divergence:DivergenceMetric",
    "speed": "quantbench.metrics.speed:SpeedMetric",
    "generations": "quantbench.metrics.generations:GenerationsMetric",
    "tasks": "quantbench.metrics.tasks:TasksMetric",
}
REGISTRY = Registry("metrics", BUILTIN)
EXECUTION_ORDER = ("speed", "generations", "size", "scores", "perplexity", "divergence", "tasks")
"""Generation runs before scoring so that the size metric's peak memory is generation's;
tasks (the longest stages) run last, so the other figures are saved first. Plugins' metrics
run after all of these."""


def execution_order() -> tuple[str, ...]:
    """Every registered metric in the order a worker runs them."""
    return (*EXECUTION_ORDER, *(name for name in REGISTRY if name not in EXECUTION_ORDER))


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
    return load_metric(name)


def load_metric(name: str) -> Metric:
    """The metric (or internal stage) registered as `name`, instantiated."""
    metric: Metric = REGISTRY.load(name)()
    return metric


def stages_for(requested: tuple[str, ...]) -> list[Metric]:
    """The metrics asked for plus the internal stages they read, in execution order."""
    wanted = {get_metric(name).name for name in requested}
    for name in list(wanted):
        wanted.update(load_metric(name).own_inputs)
    return [load_metric(name) for name in execution_order() if name in wanted]


__all__ = [
    "EXECUTION_ORDER",
    "REGISTRY",
    "EvalContext",
    "Metric",
    "execution_order",
    "get_metric",
    "load_metric",
    "split_stage_name",
    "stage_name",
    "stages_for",
]
