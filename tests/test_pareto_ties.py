"""The uncertainty-aware Pareto front: golden statuses, agreement with the classic front when
intervals vanish, and the ties in the recommendation, the tables and the plot."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tests.records import size_record

from quantbench.recommend import recommend
from quantbench.report import plots
from quantbench.report.headline import headline_rows
from quantbench.report.markdown import render_recommendation
from quantbench.results import (
    Constraints,
    DivergenceRecord,
    Interval,
    StudyResults,
    VariantMetrics,
    VariantResult,
)
from quantbench.stats.pareto import FrontStatus, UncertainPoint, uncertain_pareto_front


def test_golden_statuses() -> None:
    """Worked by hand (cost in MiB, mean KL with its interval):

    A 100, 0 [0, 0]             the baseline: nothing no larger overlaps 0 -> front
    B  60, 0.0144 [.0140, .0149] no no-larger point overlaps              -> front
    C  60, 0.029 [.028, .030]    B costs as much, B.high .0149 < .028     -> dominated by B
    D  40, 0.19 [.186, .196]     the smallest                             -> front
    E  50, 0.20 [.15, .25]       D costs less, [.186, .196] overlaps      -> tie with D
    F  70, 0.016 [.0145, .0175]  B costs less, .0149 >= .0145: overlap    -> tie with B
    G  80, 0.05 [.045, .055]     B, C and F all lie wholly below .045     -> dominated
    """
    points = [
        UncertainPoint(100, 0.0, 0.0, 0.0),
        UncertainPoint(60, 0.0144, 0.0140, 0.0149),
        UncertainPoint(60, 0.029, 0.028, 0.030),
        UncertainPoint(40, 0.19, 0.186, 0.196),
        UncertainPoint(50, 0.20, 0.15, 0.25),
        UncertainPoint(70, 0.016, 0.0145, 0.0175),
        UncertainPoint(80, 0.05, 0.045, 0.055),
    ]
    assert uncertain_pareto_front(points) == [
        FrontStatus("front"),
        FrontStatus("front"),
        FrontStatus("dominated", dominated_by=(1,)),
        FrontStatus("front"),
        FrontStatus("tie", tied_with=(3,)),
        FrontStatus("tie", tied_with=(1,)),
        FrontStatus("dominated", dominated_by=(1, 2, 5)),
    ]


def test_equal_points_tie_with_each_other() -> None:
    same = [UncertainPoint(1, 0.1, 0.09, 0.11), UncertainPoint(1, 0.1, 0.09, 0.11)]
    assert uncertain_pareto_front(same) == [
        FrontStatus("tie", tied_with=(1,)),
        FrontStatus("tie", tied_with=(0,)),
    ]
    assert uncertain_pareto_front([]) == []


def _classic_front(
    points: list[tuple[float, float]], minimize: tuple[bool, bool] = (True, True)
) -> list[int]:
    """The classic Pareto front (indices, ascending) of 2-D points, written out as the
    definition reads: a point is dominated when another is at least as good on both axes
    and strictly better on one (exact duplicates do not dominate each other)."""
    if any(math.isnan(c) for p in points for c in p):
        raise ValueError("points contain NaN")
    signs = [1.0 if m else -1.0 for m in minimize]
    costs = [(p[0] * signs[0], p[1] * signs[1]) for p in points]

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])

    return [i for i, b in enumerate(costs) if not any(dominates(a, b) for a in costs)]


def test_zero_width_intervals_give_the_classic_front() -> None:
    """With exact figures (distinct qualities) "outside the intervals" is "better", so the
    front must be the classic one (`_classic_front`, an independent implementation)."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 9))
        costs = rng.integers(1, 6, size=n).astype(float)  # repeated costs on purpose
        quality = rng.permutation(n).astype(float) / 10  # distinct
        points = [UncertainPoint(c, q, q, q) for c, q in zip(costs, quality, strict=True)]
        ours = [i for i, s in enumerate(uncertain_pareto_front(points)) if s.on_front]
        assert ours == _classic_front(list(zip(costs, quality, strict=True)))
        assert all(s.status != "tie" for s in uncertain_pareto_front(points))


def test_point_outside_its_interval_refused() -> None:
    with pytest.raises(ValueError, match="within its interval"):
        UncertainPoint(1, 0.5, 0.6, 0.7)
    with pytest.raises(ValueError, match="finite"):
        UncertainPoint(float("nan"), 0.5, 0.4, 0.6)


def _kl_variant(name: str, scheme: str, mib: int, kl: Interval | None) -> VariantResult:
    divergence = None
    if kl is not None:
        divergence = DivergenceRecord(
            n_tokens=4096,
            top_k=256,
            kl_mean=kl,
            kl_median=kl.estimate,
            kl_p99=kl.estimate * 5,
            kl_max=kl.estimate * 20,
            top1_agreement=Interval(estimate=0.9, low=0.89, high=0.91),
            ref_prob_delta={"mean": -0.01},
        )
    return VariantResult(
        name=name,
        scheme=scheme,
        status="ok",
        metrics=VariantMetrics(size=size_record(mib), divergence=divergence),
    )


def tie_study() -> StudyResults:
    """w8 is larger than fp8 and its KL's interval overlaps fp8's: a tie, not dominated."""
    return StudyResults(
        quantbench_version="0.1.0",
        created_at="2025-01-01T00:00:00+00:00",
        model={"spec": "tiny"},
        config={},
        variants=[
            _kl_variant("bf16", "bf16", 256, None),
            _kl_variant("fp8", "fp8-dynamic", 150, Interval(estimate=0.020, low=0.017, high=0.023)),
            _kl_variant("w8", "w8a8-int8", 160, Interval(estimate=0.022, low=0.019, high=0.025)),
            _kl_variant("w4", "w4a16-gptq", 100, Interval(estimate=0.2, low=0.19, high=0.21)),
            _kl_variant("w4b", "w4a16-gptq", 110, Interval(estimate=0.3, low=0.29, high=0.31)),
        ],
    )


def test_recommendation_marks_ties_in_the_tables() -> None:
    study = tie_study()
    rec = recommend(study, Constraints())
    assert rec.pareto_size_quality == ["bf16", "fp8", "w8", "w4"]  # w4b: dominated by w4
    assert rec.pareto_size_ties == {"w8": ["fp8"]}
    section = render_recommendation(rec)
    assert "- **weights on disk vs quality**: bf16, fp8, w8 (tie with fp8), w4" in section
    study = study.model_copy(update={"recommendation": rec})
    rows = {r.name: r for r in headline_rows(study)}
    assert rows["w8"].text("size_front") == "tie with fp8 (quality within the intervals)"
    assert rows["w4b"].text("size_front") == "dominated"
    assert rows["fp8"].text("size_front") == "front"


def test_plot_draws_the_tie() -> None:
    study = tie_study()
    study = study.model_copy(update={"recommendation": recommend(study, Constraints())})
    svg = plots.size_vs_quality(study) or ""
    assert 'id="qb-size-quality-ties"' in svg and "tie with fp8" in svg
    assert "tie: on the front only within the quality intervals" in svg
    # without a saved recommendation the plot computes the same front itself
    bare = plots.size_vs_quality(tie_study()) or ""
    assert "tie with fp8" in bare
    # no tie, no tie marks
    exact = study.model_copy(
        update={"variants": [v for v in study.variants if v.name != "w8"], "recommendation": None}
    )
    assert "tie with" not in (plots.size_vs_quality(exact) or "")


# --------------------------------------------------------------------------------------
# Pareto front
# --------------------------------------------------------------------------------------


def test_pareto_front_minimize_both() -> None:
    # (size GiB, KL nats)
    points = [
        (16.0, 0.0),  # 0 bf16: best KL -> front
        (8.5, 0.01),  # 1 int8: front
        (8.5, 0.02),  # 2 dominated by 1
        (4.5, 0.05),  # 3 front
        (5.0, 0.06),  # 4 dominated by 3
        (4.5, 0.05),  # 5 exact duplicate of 3 -> kept as well
        (3.0, 0.30),  # 6 smallest -> front
        (16.0, 0.5),  # 7 dominated by 0
    ]
    assert _classic_front(points) == [0, 1, 3, 5, 6]


def test_pareto_front_mixed_directions() -> None:
    # (throughput tok/s: maximise, size GiB: minimise)
    points = [(100.0, 16.0), (180.0, 8.0), (150.0, 4.0), (120.0, 8.0), (90.0, 4.0)]
    assert _classic_front(points, minimize=(False, True)) == [1, 2]
    # Maximise both: (accuracy, throughput)
    pts = [(0.8, 100.0), (0.7, 200.0), (0.6, 150.0), (0.8, 90.0)]
    assert _classic_front(pts, minimize=(False, False)) == [0, 1]


def test_pareto_front_edge_cases() -> None:
    assert _classic_front([]) == []
    assert _classic_front([(1.0, 2.0)]) == [0]
    with pytest.raises(ValueError, match=r"^points contain NaN"):
        _classic_front([(1.0, float("nan"))])
