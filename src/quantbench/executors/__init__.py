"""Executor registry: one module per executor, one line here per executor."""

from __future__ import annotations

import importlib

from quantbench.errors import UserError, did_you_mean
from quantbench.executors.base import Executor

REGISTRY: dict[str, str] = {
    "local": "quantbench.executors.local:LocalExecutor",
}


def get_executor(name: str) -> Executor:
    target = REGISTRY.get(name)
    if target is None:
        raise UserError(
            f"unknown executor '{name}'{did_you_mean(name, REGISTRY)}; known: {', '.join(REGISTRY)}"
        )
    module_name, attribute = target.split(":")
    executor: Executor = getattr(importlib.import_module(module_name), attribute)()
    return executor


__all__ = ["REGISTRY", "Executor", "get_executor"]
