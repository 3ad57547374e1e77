"""The recommendation's small helpers, pinned value by value.

Added for the mutants of `quantbench.recommend` that survived `benchmarks/mutation.py
recommend` (results/mutation_recommend.md): figures read from records, text helpers, and the
defensive readers of task metrics. Each expected value is worked out by hand beside it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from quantbench import recommend as rec
from quantbench.results import (
    Constraints,
    DivergenceRecord,
    Interval,
    PerplexityRecord,
    StudyResults,
    TaskVerdict,
    VariantMetrics,
    VariantResult,
    find_baseline,
)
from quantbench.stats_tasks import INFERIOR
from records import MIB, perplexity_record


def _variant(name: str = "v", **metrics: Any) -> VariantResult:
    return VariantResult(
        name=name, scheme="w8a8-int8", status="ok", metrics=VariantMetrics(**metrics)
    )


def _ppl(estimate: float, ratio: float | None = None) -> PerplexityRecord:
    return perplexity_record(estimate, None).model_copy(update={"ratio_vs_baseline": ratio})


def _tasks(**scores: object) -> Any:
    """A variant-like object whose metrics.tasks is whatever the test hands in."""
    return SimpleNamespace(metrics=SimpleNamespace(tasks=scores or None))


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------


def test_kl_mean_reads_the_record_and_zero_for_the_baseline_only() -> None:
    interval = Interval(estimate=0.25, low=0.2, high=0.3)
    divergence = DivergenceRecord.model_construct(kl_mean=interval)
    with_kl = _variant(divergence=divergence)
    base = _variant("bf16")
    assert rec.kl_mean(with_kl, base) == 0.25
    assert rec.kl_mean(base, base) == 0.0
    assert rec.kl_mean(_variant("other"), base) is None
    assert rec.kl_mean(_variant("other"), None) is None


def test_ppl_increase_in_percent_and_why_not() -> None:
    base = _variant("bf16", perplexity=_ppl(10.0))
    # The recorded ratio wins: 1.25 -> +25 %.
    assert rec.ppl_increase_pct(_variant(perplexity=_ppl(99.0, ratio=1.25)), base) == (25.0, "")
    # Else the two estimates: 11 / 10 - 1 = +10 %.
    got, why = rec.ppl_increase_pct(_variant(perplexity=_ppl(11.0)), base)
    assert got == pytest.approx(10.0) and why == ""
    assert rec.ppl_increase_pct(base, base) == (0.0, "")
    bare_base = _variant("bf16")
    assert rec.ppl_increase_pct(bare_base, bare_base) == (0.0, "")
    assert rec.ppl_increase_pct(_variant(), base) == (None, "no perplexity measured")
    measured = _variant(perplexity=_ppl(11.0))
    assert rec.ppl_increase_pct(measured, None) == (None, "no baseline to compare with")
    assert rec.ppl_increase_pct(measured, bare_base) == (None, "the baseline has no perplexity")
    zero = _variant("bf16", perplexity=_ppl(0.0))
    assert rec.ppl_increase_pct(measured, zero) == (None, "the baseline perplexity is 0.0")
    infinite = _variant("bf16", perplexity=_ppl(float("inf")))
    assert rec.ppl_increase_pct(measured, infinite) == (None, "the baseline perplexity is inf")


def test_number_reads_numbers_records_and_mappings() -> None:
    assert rec._number(3) == 3.0 and isinstance(rec._number(3), float)
    assert rec._number(0.5) == 0.5
    assert rec._number(True) is None  # a flag is not a score
    assert rec._number("0.5") is None
    assert rec._number(Interval(estimate=0.7, low=0.6, high=0.8)) == 0.7
    for key in ("accuracy", "acc", "score", "value", "estimate"):
        assert rec._number({key: 0.4}) == 0.4, key
    assert rec._number({"acc": 0.1, "accuracy": 0.9}) == 0.9  # "accuracy" is looked up first
    assert rec._number({"accuracy": {"estimate": 0.3}}) == 0.3
    assert rec._number(SimpleNamespace(score=0.2)) == 0.2
    assert rec._number({"other": 1}) is None


def test_task_accuracies_from_mappings_and_sequences() -> None:
    assert rec.task_accuracies(_tasks()) is None
    mapping = _tasks(gsm8k=0.5, ifeval={"accuracy": 0.25}, broken="n/a")
    assert rec.task_accuracies(mapping) == {"gsm8k": 0.5, "ifeval": 0.25}
    wrapped = SimpleNamespace(metrics=SimpleNamespace(tasks=SimpleNamespace(tasks={"a": 0.1})))
    assert rec.task_accuracies(wrapped) == {"a": 0.1}
    listed = SimpleNamespace(
        metrics=SimpleNamespace(
            tasks=[
                SimpleNamespace(name="a", accuracy=0.1),
                SimpleNamespace(name=None, task="b", accuracy=0.2),
                {"name": "c", "accuracy": 0.3},
                {"task": "d", "accuracy": 0.4},
                {"accuracy": 0.5},  # no name: skipped
                {"name": "e"},  # no figure: skipped
            ]
        )
    )
    assert rec.task_accuracies(listed) == {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}
    text = SimpleNamespace(metrics=SimpleNamespace(tasks="gsm8k"))
    assert rec.task_accuracies(text) is None
    assert rec.task_accuracies(_tasks(only="x")) is None


def test_accuracy_drop_is_the_worst_common_task_in_points() -> None:
    base = _tasks(a=0.8, b=0.6, c=0.5)
    # Fractions -> points: a drops 10, b drops 20 (the worst), c is not in the baseline set.
    drop, task, why = rec.accuracy_drop_points(_tasks(a=0.7, b=0.4, d=0.1), base)
    assert (round(drop or 0, 9), task, why) == (20.0, "b", "")
    # Figures above 1 are points already: 80 - 75 = 5.
    assert rec.accuracy_drop_points(_tasks(a=75.0), _tasks(a=80.0)) == (5.0, "a", "")
    # A gain is a negative drop.
    assert rec.accuracy_drop_points(_tasks(a=0.9), _tasks(a=0.8))[0] == pytest.approx(-10.0)
    # 1.0 and 0.0 are still fractions.
    assert rec.accuracy_drop_points(_tasks(a=0.0), _tasks(a=1.0)) == (100.0, "a", "")
    assert rec.accuracy_drop_points(base, base) == (0.0, "a", "")
    bare = _tasks()
    assert rec.accuracy_drop_points(bare, bare) == (0.0, "", "")
    assert rec.accuracy_drop_points(bare, base) == (None, "", "no task accuracy measured")
    assert rec.accuracy_drop_points(base, None) == (
        None,
        "",
        "the baseline has no task accuracy",
    )
    assert rec.accuracy_drop_points(base, bare) == (None, "", "the baseline has no task accuracy")
    assert rec.accuracy_drop_points(_tasks(z=0.1), base) == (
        None,
        "",
        "no task in common with the baseline",
    )


def test_finite() -> None:
    assert rec._finite(0.0) and rec._finite(-3.5)
    assert not rec._finite(None)
    assert not rec._finite(float("inf")) and not rec._finite(float("nan"))


# --------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------


def test_limits_and_points_read_naturally() -> None:
    assert rec._limit(0.05) == "0.05" and rec._limit(2.0) == "2"
    assert rec._points(1.0) == "1 point" and rec._points(2.0) == "2 points"
    assert rec._points(0.5) == "0.5 points"


def test_describe_constraints_lists_what_is_set_in_order() -> None:
    assert rec.describe_constraints(Constraints()) == ""
    every = Constraints(
        max_kl=0.05, max_ppl_increase_pct=5.0, max_accuracy_drop=2.0, non_inferiority_margin=1.0
    )
    assert rec.describe_constraints(every) == (
        "max KL 0.05 nats/token, max perplexity increase 5%, max accuracy drop 2 points, "
        "no task shown more than 1 point worse by its paired 95% interval"
    )
    assert rec.describe_constraints(Constraints(max_accuracy_drop=1.5)) == (
        "max accuracy drop 1.5 points"
    )


def test_format_value_in_display_units() -> None:
    assert rec.format_value(None, rec.UNIT_BYTES) == ""
    assert rec.format_value(1536 * MIB, rec.UNIT_BYTES) == "1,536.0 MiB"
    assert rec.format_value(0.0123, rec.UNIT_SECONDS_PER_TOKEN) == "12.3 ms/token"
    assert rec.format_value(1234.56, rec.UNIT_TOKENS_PER_SECOND) == "1,234.6 tok/s"
    # Other units: three significant digits, at least two decimals (format_number).
    assert rec.format_value(12.5, "widgets") == "12.50 widgets"
    assert rec.format_value(12.5, "") == "12.50"


def test_names_and_fronts_as_text() -> None:
    assert rec._names(["a", "b", "c"]) == "a, b, c"
    assert rec._names([]) == ""
    assert rec.describe_front(["bf16", "a", "b"], {"a": ["b", "c"]}) == (
        "bf16, a (tie with b, c), b"
    )
    assert rec.describe_front([], {}) == ""


def test_as_float() -> None:
    assert rec._as_float(None) is None
    assert rec._as_float(3) == 3.0 and isinstance(rec._as_float(3), float)


# --------------------------------------------------------------------------------------
# quality figures and the task rule
# --------------------------------------------------------------------------------------


def _study(*variants: VariantResult) -> StudyResults:
    return StudyResults(
        quantbench_version="0",
        created_at="2026-01-01T00:00:00+00:00",
        model={},
        config={},
        variants=list(variants),
    )


def test_quality_figures_kl_and_perplexity_with_paired_intervals() -> None:
    base = VariantResult(
        name="bf16",
        scheme="bf16",
        status="ok",
        metrics=VariantMetrics(perplexity=perplexity_record(10.0, None)),
    )
    delta = Interval(estimate=0.5, low=0.25, high=1.0)
    paired = _variant("paired", perplexity=perplexity_record(10.5, delta))
    unpaired = _variant("unpaired", perplexity=perplexity_record(11.0, None))
    divergence = DivergenceRecord.model_construct(
        kl_mean=Interval(estimate=0.02, low=0.01, high=0.03)
    )
    with_kl = _variant("kl", divergence=divergence)
    study = _study(base, paired, unpaired, with_kl)

    def ppl(v: VariantResult) -> object:
        return rec.perplexity_figure(v, find_baseline(study, v))

    def kl(v: VariantResult) -> object:
        return rec.kl_figure(v, find_baseline(study, v))

    assert ppl(base) == (10.0, 10.0, 10.0)  # the baseline's own figure is its point
    # The paired difference's interval placed around the estimate: 10.5 - 0.25, 10.5 + 0.5.
    assert ppl(paired) == (10.5, 10.25, 11.0)
    assert ppl(unpaired) == (11.0, 10.7, 11.3)  # records.perplexity_record: +/- 0.3
    assert ppl(with_kl) is None
    assert kl(with_kl) == (0.02, 0.01, 0.03)
    assert kl(base) == (0.0, 0.0, 0.0)
    assert kl(paired) is None


def _task_results(*names: str) -> VariantMetrics:
    return VariantMetrics.model_construct(tasks=dict.fromkeys(names))


def _judged(task: str, variant: str, verdict: str) -> TaskVerdict:
    return TaskVerdict.model_construct(
        task=task,
        variant=variant,
        verdict=verdict,
        difference_points=Interval(estimate=-3.04, low=-5.2, high=-0.76),
    )


def test_task_rule_names_each_task_it_cannot_judge_and_each_it_breaks() -> None:
    base = VariantResult.model_construct(name="bf16", metrics=_task_results("a", "b", "d", "e"))
    variant = VariantResult.model_construct(name="v", metrics=_task_results("a", "c", "d", "e"))
    judged = [
        _judged("a", "v", INFERIOR),
        _judged("e", "v", "non-inferior"),
        _judged("d", "other", INFERIOR),  # another variant's verdict is not this one's
    ]
    broken: list[str] = []
    unknown: list[str] = []
    rec._check_tasks(variant, base, 2.0, judged, broken, unknown)
    assert broken == ["a shown more than 2 points worse (Δ -3.0 [-5.2, -0.8] points)"]
    assert unknown == [
        "b unknown (not run; margin 2 points)",
        "d unknown (no paired result; margin 2 points)",
        "c unknown (no baseline result; margin 2 points)",
    ]


def test_task_rule_without_any_task_figures() -> None:
    bare = VariantResult.model_construct(name="v", metrics=_task_results())
    broken: list[str] = []
    unknown: list[str] = []
    rec._check_tasks(bare, None, 1.0, [], broken, unknown)
    assert (broken, unknown) == (
        [],
        ["task results unknown (no task accuracy measured; margin 1 point)"],
    )
    only_variant = VariantResult.model_construct(name="v", metrics=_task_results("a"))
    unknown = []
    rec._check_tasks(only_variant, None, 1.0, [], broken, unknown)
    assert unknown == ["a unknown (no baseline result; margin 1 point)"]


# --------------------------------------------------------------------------------------
# whole recommendations, their texts pinned (built with test_recommend.py's records)
# --------------------------------------------------------------------------------------


def test_verdicts_choices_and_summary_texts() -> None:
    from test_recommend import _three

    got = rec.recommend(
        _three("native"), Constraints(max_kl=0.1, max_ppl_increase_pct=5.0, default_budget=False)
    )
    verdicts = {v.variant: (v.acceptable, v.broken, v.unknown) for v in got.verdicts}
    # w4: KL 0.192 > 0.1; perplexity 16.5 / 15.0 = +10 % > 5 %.
    assert verdicts == {
        "bf16": (True, [], []),
        "fp8": (True, [], []),
        "w4": (False, ["KL 0.192 nats/token > max 0.1", "perplexity increase 10.00% > max 5%"], []),
    }
    choices = {c.objective: (c.variant, c.unit, c.reason) for c in got.choices}
    assert choices == {
        rec.SMALLEST: ("fp8", "bytes", "fp8 is the smallest acceptable variant (155.7 MiB)"),
        rec.LOWEST_LATENCY: (
            "fp8",
            "s/token",
            "fp8 is the fastest (decode time per token at batch 1) acceptable variant "
            "(15.0 ms/token)",
        ),
        rec.HIGHEST_THROUGHPUT: (
            "fp8",
            "tok/s",
            "fp8 is the highest-throughput acceptable variant (300.0 tok/s), at batch 8",
        ),
    }
    assert got.summary == (
        "Under max KL 0.1 nats/token, max perplexity increase 5%: smallest on disk is fp8 "
        "(155.7 MiB); lowest latency is fp8 (15.0 ms/token); highest throughput is fp8 "
        "(300.0 tok/s). Not acceptable: w4 breaks KL 0.192 nats/token > max 0.1; perplexity "
        "increase 10.00% > max 5%."
    )


def test_a_limit_equal_to_the_figure_is_met() -> None:
    from test_recommend import _three

    got = rec.recommend(_three("native"), Constraints(max_kl=0.012, default_budget=False))
    assert [(v.variant, v.acceptable) for v in got.verdicts] == [
        ("bf16", True),
        ("fp8", True),  # KL 0.012 exactly: "at most", so acceptable
        ("w4", False),
    ]


def test_throughput_is_compared_at_the_largest_batch_all_share() -> None:
    from test_recommend import _study, _three

    three = _three("native")
    fp8 = three.variants[1]
    assert fp8.metrics.speed is not None
    points = [
        p.model_copy(update={"batch_size": 4}) if p.batch_size == 8 else p
        for p in fp8.metrics.speed.points
    ]
    speed = fp8.metrics.speed.model_copy(update={"points": points})
    fp8 = fp8.model_copy(update={"metrics": fp8.metrics.model_copy(update={"speed": speed})})
    got = rec.recommend(
        _study(three.variants[0], fp8, three.variants[2]), Constraints(default_budget=False)
    )
    choice = next(c for c in got.choices if c.objective == rec.HIGHEST_THROUGHPUT)
    # Batches {1, 8}, {1, 4}, {1, 8}: only batch 1 is shared; w4 decodes 1 / 0.012 tok/s.
    assert (choice.variant, choice.reason) == (
        "w4",
        "w4 is the highest-throughput acceptable variant (83.3 tok/s), at batch 1",
    )
    assert choice.value == pytest.approx(1 / 0.012)


def test_no_acceptable_variant_names_each_reason() -> None:
    from test_recommend import _study, _variant

    study = _study(
        _variant("bf16", "bf16", 256, ppl=15.0, status="failed"),
        _variant("w4", "w4a16-gptq", 80, kl=0.2, ppl=16.5),
    )
    got = rec.recommend(study, Constraints(max_kl=0.1, default_budget=False))
    assert got.summary == (
        "Under max KL 0.1 nats/token: no variant is acceptable (bf16 failed; w4 breaks KL "
        "0.200 nats/token > max 0.1); unknown counts as not acceptable."
    )
