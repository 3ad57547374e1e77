"""Backend registry: one module per inference runtime, one line here per backend.

Entries are lazy "module:attribute" strings so that importing this package (to list or
validate backend names) imports no torch or transformers; installed packages add backends
as entry points in the group `quantbench.backends` (see `quantbench.registry`).
"""

from __future__ import annotations

from typing import Any

from quantbench.backends.base import (
    Backend,
    ExecutionMode,
    GenerationOutput,
    GenerationTiming,
    LoadInfo,
    WindowScores,
)
from quantbench.errors import UserError, did_you_mean
from quantbench.registry import Registry

REGISTRY = Registry(
    "backends",
    {
        "hf": "quantbench.backends.hf:HFBackend",
        "vllm": "quantbench.backends.vllm:VLLMBackend",
    },
)


def get_backend(name: str, **kwargs: Any) -> Backend:
    """A new backend registered as `name`, built with `kwargs`, or a user error naming the
    closest match."""
    if name not in REGISTRY:
        raise UserError(
            f"unknown backend '{name}'{did_you_mean(name, REGISTRY)}; "
            f"known backends: {', '.join(REGISTRY)}"
        )
    backend: Backend = REGISTRY.load(name)(**kwargs)
    return backend


__all__ = [
    "REGISTRY",
    "Backend",
    "ExecutionMode",
    "GenerationOutput",
    "GenerationTiming",
    "LoadInfo",
    "WindowScores",
    "get_backend",
]
