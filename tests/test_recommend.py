"""The recommendation from hand-made `StudyResults` (no models, milliseconds)."""

from __future__ import annotations

from typing import Literal

import pytest

from quantbench.recommend import recommend
from quantbench.report.markdown import render_markdown, render_recommendation
from quantbench.results import (
    Constraints,
    DivergenceRecord,
    Interval,
    ObjectiveChoice,
    PerplexityRecord,
    Recommendation,
    SizeRecord,
    SpeedPoint,
    SpeedRecord,
    Spread,
    StudyResults,
    VariantMetrics,
    VariantResult,
    VariantVerdict,
)

MIB = 1 << 20
Mode = Literal["native", "emulated"]


def _spread(median: float) -> Spread:
    return Spread(n=5, median=median, p90=median, mean=median, min=median, max=median, cv=0.01)


def _size(weights_mib: float) -> SizeRecord:
    weights = int(weights_mib * MIB)
    return SizeRecord(
        weights_bytes=weights,
        artifact_bytes=weights + 4096,
        param_bytes_by_dtype={"bfloat16": weights},
        load_s=0.5,
        rss_loaded_bytes=300 * MIB,
        rss_peak_generating_bytes=350 * MIB,
        backend="hf",
        device="cpu",
    )


def _perplexity(ppl: float, ratio: float | None = None) -> PerplexityRecord:
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
        ratio_vs_baseline=ratio,
    )


def _divergence(kl: float) -> DivergenceRecord:
    return DivergenceRecord(
        n_tokens=16352,
        top_k=256,
        kl_mean=Interval(estimate=kl, low=kl * 0.9, high=kl * 1.1),
        kl_median=kl / 2,
        kl_p99=kl * 10,
        kl_max=kl * 50,
        top1_agreement=Interval(estimate=0.97, low=0.96, high=0.98),
        ref_prob_delta={"mean": -0.002},
    )


def _speed(mode: Mode, tpot_s: float, tok_s_b8: float) -> SpeedRecord:
    points = [
        SpeedPoint(
            batch_size=batch,
            prompt_tokens=64,
            output_tokens=32,
            ttft_s=_spread(0.02),
            tpot_s=_spread(tpot_s),
            e2e_s=_spread(1.0),
            throughput_tok_s=_spread(tok_s_b8 if batch == 8 else 1.0 / tpot_s),
        )
        for batch in (1, 8)
    ]
    return SpeedRecord(
        backend="hf",
        execution_mode=mode,
        detail="test",
        device="cpu",
        warmup=1,
        repeats=5,
        points=points,
    )


def _variant(
    name: str,
    scheme: str,
    size_mib: float | None,
    kl: float | None = None,
    ppl: float | None = None,
    speed: SpeedRecord | None = None,
    status: Literal["ok", "failed"] = "ok",
) -> VariantResult:
    return VariantResult(
        name=name,
        scheme=scheme,
        status=status,
        error="boom" if status == "failed" else None,
        metrics=VariantMetrics(
            size=_size(size_mib) if size_mib is not None else None,
            divergence=_divergence(kl) if kl is not None else None,
            perplexity=_perplexity(ppl) if ppl is not None else None,
            speed=speed,
        ),
    )


def _study(*variants: VariantResult) -> StudyResults:
    return StudyResults(
        quantbench_version="0.1.0",
        created_at="2025-01-01T00:00:00+00:00",
        model={"spec": "tiny"},
        config={},
        variants=list(variants),
    )


def _three(mode: Mode = "emulated") -> StudyResults:
    """bf16 baseline, an fp8-like variant (small KL) and a w4-like one (large KL, smallest)."""
    return _study(
        _variant("bf16", "bf16", 256, ppl=15.0, speed=_speed("native", 0.020, 200.0)),
        _variant("fp8", "fp8-dynamic", 155.7, kl=0.012, ppl=15.1, speed=_speed(mode, 0.015, 300)),
        _variant("w4", "w4a16-gptq", 80, kl=0.192, ppl=16.5, speed=_speed(mode, 0.012, 250.0)),
    )


def _choice(rec: Recommendation, objective: str) -> ObjectiveChoice:
    return next(c for c in rec.choices if c.objective == objective)


def _verdict(rec: Recommendation, name: str) -> VariantVerdict:
    return next(v for v in rec.verdicts if v.variant == name)


def test_no_constraints_every_ok_variant_is_acceptable() -> None:
    rec = recommend(_three(), Constraints())
    assert all(v.acceptable and not v.broken and not v.unknown for v in rec.verdicts)
    smallest = _choice(rec, "smallest on disk")
    assert smallest.variant == "w4" and smallest.unit == "bytes"
    assert smallest.value == pytest.approx(80 * MIB)
    assert "every ok variant is acceptable" in rec.summary
    assert "no constraints set" in rec.summary.lower()
    assert "w4 (80.0 MiB)" in rec.summary


def test_max_kl_picks_the_smallest_acceptable() -> None:
    rec = recommend(_three(), Constraints(max_kl=0.05))
    assert _choice(rec, "smallest on disk").variant == "fp8"
    assert _verdict(rec, "bf16").acceptable and _verdict(rec, "fp8").acceptable
    w4 = _verdict(rec, "w4")
    assert not w4.acceptable
    assert w4.broken == ["KL 0.192 nats/token > max 0.05"]
    assert rec.summary.startswith("Under max KL 0.05 nats/token: smallest on disk is fp8")
    assert "155.7 MiB" in rec.summary and "speed cannot be judged here (emulated)" in rec.summary


def test_max_kl_zero_leaves_only_the_baseline() -> None:
    rec = recommend(_three("native"), Constraints(max_kl=0))
    assert [v.variant for v in rec.verdicts if v.acceptable] == ["bf16"]
    assert "only the baseline" in rec.summary
    for choice in rec.choices:
        assert choice.variant == "bf16"
        assert "only the baseline" in choice.reason
    assert "KL 0.0120 nats/token > max 0" in _verdict(rec, "fp8").broken


def test_emulated_speed_is_not_judged() -> None:
    rec = recommend(_three("emulated"), Constraints())
    assert not rec.speed_judged
    for objective in ("lowest latency", "highest throughput"):
        choice = _choice(rec, objective)
        assert not choice.judged and choice.variant is None and choice.value is None
        assert "emulated" in choice.reason and "emulation overhead" in choice.reason
    assert _choice(rec, "smallest on disk").judged
    assert rec.pareto_speed_quality == []


def test_native_speed_picks_the_fastest_acceptable() -> None:
    rec = recommend(_three("native"), Constraints(max_kl=0.05))
    assert rec.speed_judged
    latency = _choice(rec, "lowest latency")
    assert latency.judged and latency.variant == "fp8"  # w4 is faster but not acceptable
    assert latency.value == pytest.approx(0.015) and latency.unit == "s/token"
    throughput = _choice(rec, "highest throughput")
    assert throughput.variant == "fp8" and throughput.value == pytest.approx(300.0)
    assert "batch 8" in throughput.reason
    unconstrained = recommend(_three("native"), Constraints())
    assert _choice(unconstrained, "lowest latency").variant == "w4"
    assert _choice(unconstrained, "highest throughput").variant == "fp8"


def test_failed_variant_is_never_chosen() -> None:
    study = _study(
        _variant("bf16", "bf16", 256, ppl=15.0),
        _variant("tiny", "w4a16-gptq", 10, kl=0.001, ppl=15.0, status="failed"),
    )
    rec = recommend(study, Constraints())
    tiny = _verdict(rec, "tiny")
    assert not tiny.acceptable and tiny.broken == ["failed"]
    assert _choice(rec, "smallest on disk").variant == "bf16"
    assert "tiny" not in rec.pareto_size_quality


def test_missing_divergence_is_unknown_not_acceptable() -> None:
    study = _study(
        _variant("bf16", "bf16", 256, ppl=15.0),
        _variant("int8", "w8a8-int8", 128, ppl=15.1),
    )
    rec = recommend(study, Constraints(max_kl=0.05))
    int8 = _verdict(rec, "int8")
    assert not int8.acceptable and not int8.broken
    assert len(int8.unknown) == 1 and "KL unknown" in int8.unknown[0]
    assert _verdict(rec, "bf16").acceptable  # KL to itself is 0
    assert _choice(rec, "smallest on disk").variant == "bf16"
    assert "only the baseline" in rec.summary and "cannot be checked" in rec.summary


def test_accuracy_constraint_is_unknown_without_task_metrics() -> None:
    rec = recommend(_three(), Constraints(max_accuracy_drop=1.0))
    assert _verdict(rec, "bf16").acceptable
    for name in ("fp8", "w4"):
        verdict = _verdict(rec, name)
        assert not verdict.acceptable and "accuracy drop unknown" in verdict.unknown[0]


def test_accuracy_drop_read_from_task_metrics_when_present() -> None:
    class _WithTasks(VariantMetrics):
        tasks: dict[str, float]

    def variant(name: str, scheme: str, accuracy: float) -> VariantResult:
        return VariantResult(
            name=name,
            scheme=scheme,
            status="ok",
            metrics=_WithTasks(size=_size(100), tasks={"arc": accuracy, "hella": 0.5}),
        )

    study = _study(variant("bf16", "bf16", 0.60), variant("a", "x", 0.595), variant("b", "y", 0.55))
    rec = recommend(study, Constraints(max_accuracy_drop=1.0))
    assert _verdict(rec, "bf16").acceptable and _verdict(rec, "a").acceptable
    assert _verdict(rec, "b").broken == ["accuracy drop 5.0 points on arc > max 1 points"]


def test_ppl_increase_is_in_percent() -> None:
    study = _study(
        _variant("bf16", "bf16", 256, ppl=10.0),
        _variant("ok", "fp8-dynamic", 128, ppl=10.15),  # +1.5 %
        _variant("bad", "w4a16-gptq", 64, ppl=10.25),  # +2.5 %
    )
    rec = recommend(study, Constraints(max_ppl_increase_pct=2.0))
    assert _verdict(rec, "bf16").acceptable and _verdict(rec, "ok").acceptable
    assert _verdict(rec, "bad").broken == ["perplexity increase 2.50% > max 2%"]
    assert _choice(rec, "smallest on disk").variant == "ok"
    assert "max perplexity increase 2%" in rec.summary


def test_ppl_increase_prefers_the_recorded_ratio() -> None:
    base = _variant("bf16", "bf16", 256, ppl=10.0)
    variant = _variant("q", "fp8-dynamic", 128)
    variant.metrics.perplexity = _perplexity(10.1, ratio=1.03)
    rec = recommend(_study(base, variant), Constraints(max_ppl_increase_pct=2.0))
    assert _verdict(rec, "q").broken == ["perplexity increase 3.00% > max 2%"]


def test_ppl_increase_guards_a_zero_baseline() -> None:
    study = _study(_variant("bf16", "bf16", 256, ppl=0.0), _variant("q", "x", 128, ppl=10.0))
    rec = recommend(study, Constraints(max_ppl_increase_pct=2.0))
    assert _verdict(rec, "bf16").acceptable
    assert "perplexity increase unknown" in _verdict(rec, "q").unknown[0]


def test_pareto_fronts_on_a_hand_made_case() -> None:
    study = _study(
        _variant("bf16", "bf16", 256, ppl=10.0, speed=_speed("native", 0.020, 100)),
        _variant("a", "x", 128, kl=0.01, ppl=10.1, speed=_speed("native", 0.010, 100)),
        _variant("b", "x", 130, kl=0.02, ppl=10.2, speed=_speed("native", 0.008, 100)),  # size
        _variant("c", "x", 64, kl=0.20, ppl=12.0, speed=_speed("native", 0.012, 100)),
        _variant("d", "x", 32, kl=0.30, ppl=13.0, status="failed"),
        _variant("e", "x", None, kl=0.001, ppl=10.0),  # no size: on neither front
    )
    rec = recommend(study, Constraints())
    assert rec.quality_metric == "kl_mean"
    # size front: bf16 (KL 0), a, c; b is dominated by a on both axes.
    assert rec.pareto_size_quality == ["bf16", "a", "c"]
    # speed front: bf16 (0 KL), a (0.010 s, KL 0.01), b (0.008 s, 0.02); c dominated by a.
    assert rec.pareto_speed_quality == ["bf16", "a", "b"]


def test_pareto_falls_back_to_perplexity_without_divergence() -> None:
    study = _study(
        _variant("bf16", "bf16", 256, ppl=10.0),
        _variant("a", "x", 128, kl=0.01, ppl=10.1),
        _variant("b", "x", 64, ppl=10.05),  # no divergence record
    )
    rec = recommend(study, Constraints())
    assert rec.quality_metric == "perplexity"
    # a is larger than b and worse on perplexity, but within the intervals: a tie, not dominated
    assert rec.pareto_size_quality == ["bf16", "a", "b"]
    assert rec.pareto_size_ties == {"bf16": ["a", "b"], "a": ["b"]}


def test_no_acceptable_variant_says_why() -> None:
    study = _study(_variant("int8", "w8a8-int8", 128, kl=0.3), _variant("x", "y", 1, kl=0.0))
    study.variants[1].status = "failed"
    rec = recommend(study, Constraints(max_kl=0.05))
    smallest = _choice(rec, "smallest on disk")
    assert smallest.variant is None
    assert "no variant is acceptable" in smallest.reason
    assert "KL 0.300 nats/token > max 0.05" in smallest.reason and "x failed" in smallest.reason
    assert "no variant is acceptable" in rec.summary


def test_render_recommendation_and_markdown_section() -> None:
    study = _three()
    rec = recommend(study, Constraints(max_kl=0.05))
    section = render_recommendation(rec)
    assert section.startswith("## Recommendation")
    assert "Constraints: max KL 0.05 nats/token." in section
    assert "| smallest on disk | fp8 | 155.7 MiB |" in section
    assert "| lowest latency | not judged |" in section
    assert "| **w4** | not acceptable | KL 0.192 nats/token > max 0.05 | – |" in section
    assert "| **bf16** | acceptable | – | – |" in section
    assert "- **weights on disk vs quality**: bf16, fp8, w4" in section
    assert "not drawn: the speed figures are emulated" in section

    text = render_markdown(study.model_copy(update={"recommendation": rec}))
    assert section in text
    assert text.index("## Headline") < text.index("## Recommendation") < text.index("## Variants")
    without = render_markdown(study)
    assert "## Recommendation\n\nNo recommendation was computed for this study." in without

    empty = render_recommendation(recommend(study, Constraints()))
    assert "Constraints: none set." in empty
