"""Recovery, paired differences, Holm and non-inferiority: golden values, then the recovery
table in every output (hand-made records, no model)."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from quantbench.recommend import recommend
from quantbench.report.csv_table import render_csv
from quantbench.report.html import render_html
from quantbench.report.markdown import render_markdown
from quantbench.report.model_card import render_card
from quantbench.report.recovery_table import recovery_rows
from quantbench.results import (
    Constraints,
    Interval,
    PairedTaskComparison,
    StudyResults,
    TaskRecord,
    VariantMetrics,
    VariantResult,
)
from quantbench.stats.tasks import (
    INCONCLUSIVE,
    INFERIOR,
    NON_INFERIOR,
    PairedCounts,
    holm_adjust,
    non_inferiority,
    paired_difference_ci,
    recovery_ci,
    recovery_from_difference,
)

Z95 = 1.959963984540054  # standard normal 97.5% quantile

# --------------------------------------------------------------------------------------
# Holm
# --------------------------------------------------------------------------------------


def test_holm_golden_values() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running max
    # 0.02, 0.03, 0.06, 0.06; back in input order:
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # R: p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05), "holm") = 0.05 0.08 0.09 0.09 0.09
    assert holm_adjust([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx(
        [0.05, 0.08, 0.09, 0.09, 0.09]
    )
    assert holm_adjust([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm_adjust([0.2]) == [0.2]  # one test: nothing to adjust
    assert holm_adjust([]) == []


def test_holm_matches_the_closed_testing_definition() -> None:
    """Holm's adjusted p of hypothesis i is the largest Bonferroni p over the intersection
    hypotheses that contain it in the step-down order: max over j <= rank(i) of
    min(1, (m - j + 1) p_(j)). Computed here by brute force on random p-values."""
    rng = np.random.default_rng(7)
    for _ in range(50):
        m = int(rng.integers(1, 12))
        p = rng.uniform(0, 0.2, size=m).tolist()
        ranks = sorted(range(m), key=lambda i: p[i])
        expected = [0.0] * m
        for position, i in enumerate(ranks):
            expected[i] = max(min(1.0, (m - j) * p[ranks[j]]) for j in range(position + 1))
        assert holm_adjust(p) == pytest.approx(expected)


def test_holm_refuses_a_non_probability() -> None:
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        holm_adjust([0.1, 1.5])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        holm_adjust([math.nan])


# --------------------------------------------------------------------------------------
# Paired difference and recovery
# --------------------------------------------------------------------------------------

TABLE = PairedCounts(both_right=30, right_to_wrong=5, wrong_to_right=2, both_wrong=13)


def test_counts_from_a_task_record_summary() -> None:
    counts = PairedCounts.from_summary(50, 0.70, right_to_wrong=5, wrong_to_right=2)
    assert counts == TABLE
    assert counts.n == 50 and counts.baseline_right == 35 and counts.variant_right == 32
    with pytest.raises(ValueError, match="do not fit"):
        PairedCounts.from_summary(10, 0.2, right_to_wrong=5, wrong_to_right=0)
    with pytest.raises(ValueError, match="no items"):
        PairedCounts(0, 0, 0, 0)


def test_paired_difference_golden_values() -> None:
    """Bonett–Price by hand: p12 = 6/52, p21 = 3/52, centre -3/52,
    half = z sqrt((9/52 - (3/52)^2) / 52)."""
    estimate, low, high = paired_difference_ci(TABLE)
    centre = -3 / 52
    half = Z95 * math.sqrt((9 / 52 - centre**2) / 52)
    assert estimate == pytest.approx(-6.0)
    assert (low, high) == pytest.approx((100 * (centre - half), 100 * (centre + half)))
    assert (low, high) == pytest.approx((-16.9675, 5.4290), abs=1e-4)
    # nothing flipped among 50 items: an interval as wide as 50 items allow, not zero
    none = paired_difference_ci(PairedCounts(30, 0, 0, 20))
    assert none == pytest.approx((0.0, -5.3304, 5.3304), abs=1e-4)


def test_recovery_golden_values() -> None:
    """log R on the adjusted table: log(33/36), Var = 9 / (36 · 33)."""
    estimate, low, high = recovery_ci(TABLE)
    assert estimate == pytest.approx(100 * 32 / 35)
    se = math.sqrt(9 / (36 * 33))
    centre = math.log(33 / 36)
    assert low == pytest.approx(100 * math.exp(centre - Z95 * se))
    assert high == pytest.approx(100 * math.exp(centre + Z95 * se))
    assert (low, high) == pytest.approx((77.2901, 108.7174), abs=1e-4)


def test_recovery_variance_equals_the_matrix_delta_method() -> None:
    """An independent route: per-item 0/1 arrays of the (adjusted) table, the covariance
    matrix of the two means from numpy, and the gradient of log(mean_v / mean_b)."""
    a, b1, c1, d = 30, 6, 3, 13
    base = np.array([1] * a + [1] * b1 + [0] * c1 + [0] * d, dtype=float)
    var = np.array([1] * a + [0] * b1 + [1] * c1 + [0] * d, dtype=float)
    n = base.size
    cov = np.cov(np.vstack([var, base]), ddof=0) / n
    grad = np.array([1 / var.mean(), -1 / base.mean()])
    se = math.sqrt(float(grad @ cov @ grad))
    centre = math.log(var.mean() / base.mean())
    _, low, high = recovery_ci(TABLE)
    assert low == pytest.approx(100 * math.exp(centre - Z95 * se), rel=1e-12)
    assert high == pytest.approx(100 * math.exp(centre + Z95 * se), rel=1e-12)


def test_recovery_edge_cases() -> None:
    assert recovery_ci(PairedCounts(0, 0, 3, 47)) is None  # baseline never right
    zero = recovery_ci(PairedCounts(0, 4, 0, 46))  # variant never right
    assert zero is not None and zero[0] == 0.0 and 0 < zero[1] < zero[2]
    same = recovery_ci(PairedCounts(30, 0, 0, 20))
    assert same is not None and same[0] == 100.0 and same[1] < 100.0 < same[2]


def test_intervals_cover_at_their_level() -> None:
    """Monte Carlo: 3,000 paired tables of 200 items from a known 2×2 distribution; the
    95% intervals must contain the true difference and ratio about 95% of the time."""
    rng = np.random.default_rng(11)
    probabilities = [0.60, 0.08, 0.04, 0.28]  # both right, right→wrong, wrong→right, neither
    true_difference = 100 * (0.04 - 0.08)
    true_recovery = 100 * (0.60 + 0.04) / (0.60 + 0.08)
    tables = rng.multinomial(200, probabilities, size=3000)
    diff_hits = rec_hits = 0
    for a, b, c, d in tables:
        counts = PairedCounts(int(a), int(b), int(c), int(d))
        _, low, high = paired_difference_ci(counts)
        diff_hits += low <= true_difference <= high
        recovery = recovery_ci(counts)
        assert recovery is not None
        rec_hits += recovery[1] <= true_recovery <= recovery[2]
    assert 0.93 <= diff_hits / 3000 <= 0.975
    assert 0.93 <= rec_hits / 3000 <= 0.975


def test_recovery_from_a_graded_difference() -> None:
    assert recovery_from_difference(50.0, (-5.0, -10.0, 0.0)) == pytest.approx((90.0, 80.0, 100.0))
    assert recovery_from_difference(0.0, (0.0, -1.0, 1.0)) is None


# --------------------------------------------------------------------------------------
# Non-inferiority
# --------------------------------------------------------------------------------------


def test_non_inferiority_verdicts() -> None:
    assert non_inferiority(-0.5, 3.0, margin=1.0) == NON_INFERIOR
    assert non_inferiority(-9.0, -1.5, margin=1.0) == INFERIOR
    assert non_inferiority(-3.0, 2.0, margin=1.0) == INCONCLUSIVE
    assert INCONCLUSIVE == "inconclusive: raise --limit"
    # the bound itself is not beyond the margin (a one-sided test needs strict exclusion)
    assert non_inferiority(-1.0, 2.0, margin=1.0) == INCONCLUSIVE
    assert non_inferiority(-4.0, -1.0, margin=1.0) == INCONCLUSIVE
    assert non_inferiority(0.0, 0.0, margin=0.0) == INCONCLUSIVE
    with pytest.raises(ValueError, match="margin"):
        non_inferiority(-1.0, 1.0, margin=-1.0)
    with pytest.raises(ValueError, match="low <= high"):
        non_inferiority(1.0, -1.0, margin=1.0)


# --------------------------------------------------------------------------------------
# In the recommendation and the reports
# --------------------------------------------------------------------------------------


def _task(
    name: str, n: int, right: int, paired: tuple[int, int] | None, fewshot: int = 5
) -> TaskRecord:
    comparison = None
    if paired is not None:
        rtw, wtr = paired
        comparison = PairedTaskComparison(
            n_paired=n,
            difference_points=Interval(
                estimate=100 * (wtr - rtw) / n, low=-20.0, high=10.0
            ),  # the record's bootstrap interval; recovery uses the 2×2 table instead
            right_to_wrong=rtw,
            wrong_to_right=wtr,
            mcnemar_p=0.5,
        )
    acc = right / n
    return TaskRecord(
        task=name,
        metric="exact_match",
        filter="custom-extract",
        n_items=n,
        accuracy=Interval(estimate=acc, low=max(0.0, acc - 0.1), high=min(1.0, acc + 0.1)),
        vs_baseline=comparison,
        settings={"num_fewshot": {name: fewshot}, "limit": n},
        wall_s=1.0,
    )


def _variant(name: str, scheme: str, tasks: dict[str, TaskRecord]) -> VariantResult:
    return VariantResult(name=name, scheme=scheme, status="ok", metrics=VariantMetrics(tasks=tasks))


def task_study() -> StudyResults:
    """Baseline 35/50 right on task a, 20/50 on b; variant x flips 5 → wrong, 2 → right on a
    (the golden table) and nothing on b; variant y loses 15 items on a."""
    return StudyResults(
        quantbench_version="0.1.0",
        created_at="2025-01-01T00:00:00+00:00",
        model={"spec": "tiny"},
        config={},
        variants=[
            _variant(
                "bf16", "bf16", {"a": _task("a", 50, 35, None), "b": _task("b", 50, 20, None)}
            ),
            _variant(
                "x",
                "fp8-dynamic",
                {"a": _task("a", 50, 32, (5, 2)), "b": _task("b", 50, 20, (0, 0))},
            ),
            _variant(
                "y",
                "w4a16-gptq",
                {"a": _task("a", 50, 20, (15, 0)), "b": _task("b", 50, 20, (1, 1))},
            ),
        ],
    )


def test_task_verdicts_in_the_recommendation() -> None:
    rec = recommend(task_study(), Constraints(non_inferiority_margin=1.0))
    judged = {(t.task, t.variant): t for t in rec.tasks}
    assert list(judged) == [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")]
    x_a = judged[("a", "x")]
    assert x_a.recovery_pct is not None and x_a.recovery_method == "delta"
    assert (x_a.recovery_pct.estimate, x_a.recovery_pct.low, x_a.recovery_pct.high) == (
        pytest.approx(recovery_ci(TABLE))  # type: ignore[arg-type]
    )
    assert x_a.difference_points.low == pytest.approx(-16.9675, abs=1e-4)
    assert x_a.verdict == INCONCLUSIVE and x_a.margin_points == 1.0
    # every p is 0.5 in the records: Holm over the four comparisons gives min(1, 4·0.5) = 1
    assert [t.p_value for t in rec.tasks] == [0.5] * 4
    assert [t.p_holm for t in rec.tasks] == [1.0] * 4
    y_a = judged[("a", "y")]
    assert y_a.verdict == INFERIOR  # 15 of 35 right answers lost: shown worse than 1 point
    y = next(v for v in rec.verdicts if v.variant == "y")
    assert not y.acceptable and y.broken[0].startswith("a shown more than 1 point worse")
    x = next(v for v in rec.verdicts if v.variant == "x")
    assert x.acceptable  # inconclusive tasks do not reject, the summary names them
    assert "raise --limit" in rec.summary and "x on a" in rec.summary


def test_recovery_table_in_every_output() -> None:
    study = task_study()
    study = study.model_copy(
        update={"recommendation": recommend(study, Constraints(non_inferiority_margin=1.0))}
    )
    rows = recovery_rows(study)
    assert rows[0].cells()[:6] == [
        "a",
        "5",
        "exact_match (custom-extract)",
        "50",
        "x",
        "70.0",
    ]
    text = render_markdown(study)
    assert "## Recovery against the baseline" in text
    assert (
        "| a | 5 | exact_match (custom-extract) | 50 | x | 70.0 | 64.0 | 91.4 [77.3, 108.7] |"
        in text
    )
    assert "Holm p" in text and "inconclusive: raise --limit" in text and "| inferior |" in text
    html = render_html(study)
    assert "Recovery against the baseline" in html and "91.4 [77.3, 108.7]" in html
    card = render_card(study, study.variant("x"))
    assert "## Accuracy recovery" in card and "91.4 [77.3, 108.7]" in card
    assert "| y |" not in card  # the card shows its own variant only
    table = list(csv.DictReader(io.StringIO(render_csv(study))))
    x = next(r for r in table if r["variant"] == "x")
    assert float(x["a_recovery_pct"]) == pytest.approx(100 * 32 / 35)
    assert float(x["a_holm_p"]) == 1.0 and x["a_non_inferiority"] == INCONCLUSIVE
