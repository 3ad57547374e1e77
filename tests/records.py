"""Hand-built records shared by the tests: results for the reports, variant plans for
pre-flight (no model involved)."""

from __future__ import annotations

from quantbench.config import CalibrationConfig
from quantbench.plan import VariantPlan
from quantbench.results import Interval, PerplexityRecord, SizeRecord, Spread
from quantbench.schemes import get_scheme
from quantbench.store import StageRef

MIB = 1 << 20


def spread(median: float) -> Spread:
    return Spread(
        n=5, median=median, p90=median * 1.1, mean=median, min=median, max=median * 1.2, cv=0.05
    )


def size_record(weights_mib: int) -> SizeRecord:
    return SizeRecord(
        weights_bytes=weights_mib * MIB,
        artifact_bytes=weights_mib * MIB + 4096,
        param_bytes_by_dtype={"bfloat16": weights_mib * MIB},
        load_s=0.5,
        rss_loaded_bytes=300 * MIB,
        rss_peak_generating_bytes=350 * MIB,
        backend="hf",
        device="cpu",
    )


def perplexity_record(ppl: float, delta: Interval | None) -> PerplexityRecord:
    return PerplexityRecord(
        corpus="builtin",
        corpus_key="abc",
        tokens_sha256="0" * 64,
        window=512,
        stride=512,
        n_windows=32,
        n_tokens=16352,
        nll_mean=2.7,
        perplexity=Interval(estimate=ppl, low=ppl - 0.3, high=ppl + 0.3),
        delta_vs_baseline=delta,
    )


def variant_plan(
    name: str, scheme: str, calibration: CalibrationConfig | None = None
) -> VariantPlan:
    """A variant of `scheme` as the plan would hold it, with no options."""
    return VariantPlan(
        name=name,
        scheme=get_scheme(scheme),
        requested={},
        options={},
        quantize=StageRef("quantize", name),
        calibration_config=calibration,
    )
