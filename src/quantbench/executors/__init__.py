"""Executor registry: one module per executor, one line here per executor; installed packages
add executors as entry points in the group `quantbench.executors` (see `quantbench.registry`)."""

from __future__ import annotations

from typing import Any

from quantbench.errors import UserError, did_you_mean
from quantbench.executors.base import Executor
from quantbench.registry import Registry

REGISTRY = Registry(
    "executors",
    {
        "local": "quantbench.executors.local:LocalExecutor",
        "ray": "quantbench.executors.ray:RayExecutor",
    },
)


def get_executor(name: str, **kwargs: Any) -> Executor:
    if name not in REGISTRY:
        raise UserError(
            f"unknown executor '{name}'{did_you_mean(name, REGISTRY)}; known: {', '.join(REGISTRY)}"
        )
    try:
        factory = REGISTRY.load(name)
    except ImportError as exc:  # a built-in executor whose optional dependency is missing
        raise UserError(
            f"the {name} executor needs {exc.name}: pip install 'quantbench[{name}]'"
        ) from None
    executor: Executor = factory(**kwargs)
    return executor


__all__ = ["REGISTRY", "Executor", "get_executor"]
