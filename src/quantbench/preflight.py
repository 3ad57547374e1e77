"""Pre-flight: every problem of a study, found before minutes of compute are spent.

For each pending variant the scheme checks the model's layer shapes (and may decide, e.g., a
smaller group size), and a memory estimate for loading + calibration is compared with the
memory available now.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from quantbench.calibration import check_local_source
from quantbench.config import CalibrationConfig
from quantbench.models import ModelInfo
from quantbench.plan import VariantPlan
from quantbench.schemes import Preflight

RUNTIME_OVERHEAD_BYTES = 1 << 30  # Python, torch and llm-compressor themselves
GIB = float(1 << 30)


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    calibration_bytes: int
    total_bytes: int


def estimate_memory(
    info: ModelInfo,
    needs_calibration: bool,
    calibration: CalibrationConfig,
    calibration_dtype: str = "bfloat16",
) -> MemoryEstimate:
    """Peak resident bytes to quantize one variant on the CPU (a deliberate over-estimate).

    The model is held in BF16 (float32 when it calibrates in float32) plus a compressed copy
    while saving (≈ 2 × weights). With calibration, GPTQ keeps one float32 Hessian
    (in_features²) per Linear of the current decoder layer, and the sequential pipeline
    caches each sample's hidden states at a layer's input and output.
    """
    weights = info.bf16_bytes
    calibration_bytes = 0
    if needs_calibration:
        value_bytes = 4 if calibration_dtype == "float32" else 2
        weights = weights * value_bytes // 2
        widest = max((layer.in_features for layer in info.linear_layers), default=0)
        per_layer_linears = 7
        hessians = per_layer_linears * widest * widest * 4
        hidden = info.hidden_size or widest
        activations = 2 * calibration.num_samples * calibration.seq_len * hidden * value_bytes
        calibration_bytes = hessians + activations
    total = 2 * weights + calibration_bytes + RUNTIME_OVERHEAD_BYTES
    return MemoryEstimate(weights, calibration_bytes, total)


def available_memory_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def preflight_variants(
    variants: list[VariantPlan],
    info: ModelInfo,
    calibration: CalibrationConfig,
    available_bytes: int,
    calibration_dtype: str = "bfloat16",
) -> dict[str, Preflight]:
    """Run every scheme's checks plus the memory check; problems are collected, not raised.

    `calibration` is the default setting; a variant made with its own (a calibration axis of
    a study matrix) is checked with that one. `calibration_dtype` is what the model computes
    in while calibrating (the study's `compute_dtype` as resolved on this machine).
    """
    for source in {(v.calibration_config or calibration) for v in variants if v.needs_calibration}:
        check_local_source(source)  # a bad calibration file: one line, before any worker
    outcomes: dict[str, Preflight] = {}
    for variant in variants:
        outcome = variant.scheme.preflight(info, variant.requested)
        own = variant.calibration_config or calibration
        estimate = estimate_memory(info, variant.needs_calibration, own, calibration_dtype)
        if estimate.total_bytes > available_bytes:
            outcome.problems.append(
                f"{variant.name}: needs about {estimate.total_bytes / GIB:.1f} GiB to quantize "
                f"but {available_bytes / GIB:.1f} GiB is available; free memory, lower "
                "calibration.num_samples / seq_len, or use a bigger machine"
            )
        outcome.notes.append(f"estimated peak memory {estimate.total_bytes / GIB:.1f} GiB")
        outcomes[variant.name] = replace(outcome, memory_bytes=estimate.total_bytes)
    return outcomes
