"""Pre-flight: every problem of a study, found before minutes of compute are spent.

For each pending variant the scheme checks the model's layer shapes (and may decide, e.g., a
smaller group size), and `quantbench.memory`'s estimates of its quantization and of its
evaluation are compared with the memory available now. A stage that would not fit is
refused with the figures and the setting that would make it fit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from quantbench.calibration import check_local_source
from quantbench.config import CalibrationConfig
from quantbench.memory import (
    VLLM_CLIENT_BYTES,
    MemoryEstimate,
    largest_fitting,
    quantize_stage_bytes,
    scores_stage_bytes,
    vllm_engine_bytes,
)
from quantbench.models import ModelInfo
from quantbench.plan import VariantPlan
from quantbench.schemes import Preflight

GIB = float(1 << 30)
SCORE_BATCH_WINDOWS = 4
"""Windows per scoring forward (the hf backend's default `score_batch_size`)."""


def available_memory_bytes(limit_gib: float | None = None) -> int:
    """Memory the study may use now, bytes: what the OS reports available, capped at
    `limit_gib` (`execution.memory_limit_gib`) when one is set."""
    import psutil

    available = int(psutil.virtual_memory().available)
    if limit_gib is not None:
        available = min(available, int(limit_gib * GIB))
    return available


@dataclass(frozen=True)
class EvaluationMemory:
    """Where the study's models will be evaluated, and how much room there is."""

    available_bytes: int
    device: str
    """"cpu" or "cuda"."""
    compute_dtype: str
    """What the hf backend computes in there ("bfloat16" or "float32")."""
    window: int
    gpu_visible: bool = False


def _gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"


def quantize_estimate(
    info: ModelInfo, variant: VariantPlan, calibration: CalibrationConfig, calibration_dtype: str
) -> MemoryEstimate:
    return quantize_stage_bytes(
        info,
        quantizes=variant.scheme.quantizes,
        calibrates=variant.needs_calibration,
        num_samples=calibration.num_samples,
        seq_len=calibration.seq_len,
        calibration_dtype=calibration_dtype,
    )


def _quantize_problem(
    info: ModelInfo,
    variant: VariantPlan,
    calibration: CalibrationConfig,
    calibration_dtype: str,
    estimate: MemoryEstimate,
    available: int,
) -> str:
    text = (
        f"{variant.name}: quantizing needs about {_gib(estimate.total_bytes)} "
        f"({_gib(estimate.weights_bytes)} for the weights"
        + (f", {_gib(estimate.work_bytes)} for calibration" if estimate.work_bytes else "")
        + f") but {_gib(available)} is available"
    )
    fits = []
    settings = (("num_samples", "--calibration-samples"), ("seq_len", "--calibration-seq-len"))
    for field, flag in settings if variant.needs_calibration else ():

        def with_setting(n: int, field: str = field) -> MemoryEstimate:
            changed = calibration.model_copy(update={field: n})
            return quantize_estimate(info, variant, changed, calibration_dtype)

        largest = largest_fitting(available, with_setting, getattr(calibration, field) - 1)
        if largest is not None:
            fits.append(f"{flag} {largest}")
    if fits:
        return f"{text}; it would fit with {' or '.join(fits)}"
    return (
        f"{text}; the model alone does not fit: use a machine with more memory "
        "(quantization holds the whole model in RAM, also with --device cuda)"
    )


def evaluation_estimate(
    info: ModelInfo, variant: VariantPlan, memory: EvaluationMemory, dtype: str
) -> MemoryEstimate:
    """`variant`'s model scoring the corpus alone (exact divergence's baseline beside it is
    optional: without room for it the study takes the top-k + tail method,
    `evaluate.plan_divergence`)."""
    return scores_stage_bytes(
        info,
        form=variant.scheme.model_form,
        with_baseline=False,
        compute_dtype=dtype,
        window=memory.window,
        batch_windows=SCORE_BATCH_WINDOWS,
    )


def _evaluation_problem(
    info: ModelInfo, variant: VariantPlan, memory: EvaluationMemory
) -> str | None:
    estimate = evaluation_estimate(info, variant, memory, memory.compute_dtype)
    if estimate.total_bytes <= memory.available_bytes:
        return None
    text = (
        f"{variant.name}: evaluating needs about {_gib(estimate.total_bytes)} on "
        f"{memory.device} ({_gib(estimate.weights_bytes)} for the model in "
        f"{memory.compute_dtype}, {_gib(estimate.work_bytes)} for one batch of logits) but "
        f"{_gib(memory.available_bytes)} is available"
    )
    fits = []
    if memory.device == "cpu" and memory.gpu_visible:
        fits.append("--device cuda")
    if memory.compute_dtype == "float32":
        halved = evaluation_estimate(info, variant, memory, "bfloat16")
        if halved.total_bytes <= memory.available_bytes:
            fits.append("--dtype bfloat16 (slower on a CPU without bf16 matmuls)")
    if fits:
        return f"{text}; it would fit with {' or '.join(fits)}"
    return f"{text}; use a machine with more memory"


def vllm_problem(
    info: ModelInfo, variants: list[VariantPlan], kv_cache_gib: float, available_bytes: int
) -> str | None:
    """Whether vLLM's engine on the CPU fits, for the variant that needs the most (one
    engine runs at a time), beside the evaluation worker that drives it; None if so."""
    kv_cache = int(kv_cache_gib * GIB)
    forms = {v.scheme.model_form for v in variants}
    engine = max(
        (vllm_engine_bytes(info, form, kv_cache) for form in forms),
        key=lambda estimate: estimate.total_bytes,
        default=vllm_engine_bytes(info, "unquantized", kv_cache),
    )
    total = engine.total_bytes + VLLM_CLIENT_BYTES
    if total <= available_bytes:
        return None
    text = (
        f"vLLM's engine needs about {_gib(total)} ({_gib(engine.weights_bytes)} for the "
        f"weights, {kv_cache_gib:g} GiB of KV cache) but {_gib(available_bytes)} is available"
    )
    room = available_bytes - (total - engine.work_bytes)
    kv_fits = int(room / GIB * 4) / 4  # whole quarters of a GiB
    if kv_fits >= 0.25:
        return f"{text}; it would fit with --set evaluation.vllm.kv_cache_gib={kv_fits:g}"
    return f"{text}; use a machine with more memory or the hf backend"


def check_calibration_sources(variants: list[VariantPlan], calibration: CalibrationConfig) -> None:
    """Read every local calibration file the variants calibrate from: a bad one is refused
    in one line, before any worker (or the fork server's imports) starts. `calibration` is
    the default setting, a variant's own replacing it."""
    for source in {(v.calibration_config or calibration) for v in variants if v.needs_calibration}:
        check_local_source(source)


def preflight_variants(
    variants: list[VariantPlan],
    info: ModelInfo,
    calibration: CalibrationConfig,
    available_bytes: int,
    calibration_dtype: str = "bfloat16",
    evaluation: EvaluationMemory | None = None,
) -> dict[str, Preflight]:
    """Run every scheme's checks plus the memory checks; problems are collected, not raised.

    `calibration` is the default setting; a variant made with its own (a calibration axis of
    a study matrix) is checked with that one. `calibration_dtype` is what the model computes
    in while calibrating (the study's `compute_dtype` as resolved on this machine).
    `evaluation`, when the study evaluates models, is where and in what they will run.
    """
    check_calibration_sources(variants, calibration)
    outcomes: dict[str, Preflight] = {}
    for variant in variants:
        outcome = variant.scheme.preflight(info, variant.requested)
        own = variant.calibration_config or calibration
        estimate = quantize_estimate(info, variant, own, calibration_dtype)
        if estimate.total_bytes > available_bytes:
            outcome.problems.append(
                _quantize_problem(info, variant, own, calibration_dtype, estimate, available_bytes)
            )
        if evaluation is not None:
            problem = _evaluation_problem(info, variant, evaluation)
            if problem is not None:
                outcome.problems.append(problem)
        outcome.notes.append(f"estimated peak memory {_gib(estimate.total_bytes)} to quantize")
        outcomes[variant.name] = replace(outcome, memory_bytes=estimate.total_bytes)
    return outcomes
