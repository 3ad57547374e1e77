"""What each stage asks a cluster for: derived from the stage, overridable per study.

Quantization and evaluation take one GPU where the driver sees CUDA (llm-compressor and
the hf backend then use it), otherwise CPU cores; quantization also states the memory that
pre-flight estimated, so Ray does not pack two GPTQ runs into one node's RAM. The study's
`execution.resources` replaces any of these per stage kind.
"""

from __future__ import annotations

from typing import Literal

from quantbench.config import ExecutionConfig
from quantbench.executors.base import Resources
from quantbench.hardware import GPU_DEVICE_NODES, gpus_visible

CPU_STAGE_CORES = 2.0
"""Cores a CPU-only quantize or evaluate stage asks for (torch uses all it is given)."""

__all__ = ["CPU_STAGE_CORES", "GPU_DEVICE_NODES", "gpus_visible", "stage_resources"]


def stage_resources(
    kind: Literal["quantize", "evaluate"],
    execution: ExecutionConfig,
    memory_bytes: int | None = None,
    gpu: bool = False,
) -> Resources:
    """Resources for a stage of `kind` ('quantize' or 'evaluate')."""
    derived: Resources = (
        {"num_gpus": 1.0, "num_cpus": 1.0} if gpu else {"num_cpus": CPU_STAGE_CORES}
    )
    if memory_bytes:
        derived["memory"] = float(memory_bytes)
    override = execution.resources.get(kind)
    return {**derived, **(override.request() if override else {})}
