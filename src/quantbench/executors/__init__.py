"""Executor registry: one module per executor, one line here per executor."""

from __future__ import annotations

import importlib
from typing import Any

from quantbench.errors import UserError, did_you_mean
from quantbench.executors.base import Executor

REGISTRY: dict[str, str] = {
    "local": "quantbench.executors.local:LocalExecutor",
    "ray": "quantbench.executors.ray:RayExecutor",
}


def get_executor(name: str, **kwargs: Any) -> Executor:
    target = REGISTRY.get(name)
    if target is None:
        raise UserError(
            f"unknown executor '{name}'{did_you_mean(name, REGISTRY)}; known: {', '.join(REGISTRY)}"
        )
    module_name, attribute = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"the {name} executor needs {exc.name}: pip install 'quantbench[{name}]'"
        ) from None
    executor: Executor = getattr(module, attribute)(**kwargs)
    return executor


__all__ = ["REGISTRY", "Executor", "get_executor"]
