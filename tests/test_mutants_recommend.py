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
    PairedTaskComparison,
    PerplexityRecord,
    StudyResults,
    TaskRecord,
    TaskVerdict,
    VariantMetrics,
    VariantResult,
    VariantVerdict,
    find_baseline,
)
from quantbench.stats.tasks import INCONCLUSIVE, INFERIOR
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


# --------------------------------------------------------------------------------------
# merged results (several studies or models): each variant is judged against its own
# study's baseline, never the first baseline of the file
# --------------------------------------------------------------------------------------


def _merged() -> StudyResults:
    """Two models side by side: `a/` and `b/`, each a baseline and a w8 variant. Model b's
    w8 has no perplexity ratio recorded, so its increase comes from the two estimates."""
    from test_recommend import _study, _variant

    variants = [
        _variant("a/bf16", "bf16", 256, ppl=10.0),
        _variant("a/w8", "w8a8-int8", 130, kl=0.01, ppl=10.1),
        _variant("b/bf16", "bf16", 128, ppl=20.0),
        _variant("b/w8", "w8a8-int8", 60, kl=0.01, ppl=20.5),
    ]
    return _study(*(v.model_copy(update={"study": v.name.split("/")[0]}) for v in variants))


def test_merged_results_judge_each_variant_against_its_own_baseline() -> None:
    got = rec.recommend(
        _merged(), Constraints(max_kl=0.05, max_ppl_increase_pct=5.0, default_budget=False)
    )
    # b/bf16 is its own baseline (KL 0, +0 %); b/w8 is 20.5 / 20 - 1 = +2.5 % of *its*
    # baseline (against a/bf16's 10.0 it would be +105 %).
    assert [(v.variant, v.acceptable, v.broken, v.unknown) for v in got.verdicts] == [
        ("a/bf16", True, [], []),
        ("a/w8", True, [], []),
        ("b/bf16", True, [], []),
        ("b/w8", True, [], []),
    ]
    assert got.quality_metric == "kl_mean"  # every baseline's own KL is 0
    smallest = next(c for c in got.choices if c.objective == rec.SMALLEST)
    assert (smallest.variant, smallest.reason) == (
        "b/w8",
        "b/w8 is the smallest acceptable variant (60.0 MiB)",
    )
    # KL: both w8 0.01 [0.009, 0.011], both baselines exactly 0: b/bf16 dominates a/w8
    # (smaller, interval below); a/bf16 costs more than b/bf16 for the same 0, a tie.
    assert got.pareto_size_quality == ["a/bf16", "b/bf16", "b/w8"]
    assert got.pareto_size_ties == {"a/bf16": ["b/bf16"]}


def test_merged_results_with_only_the_baselines_acceptable() -> None:
    got = rec.recommend(_merged(), Constraints(max_kl=0.0, default_budget=False))
    smallest = next(c for c in got.choices if c.objective == rec.SMALLEST)
    assert (smallest.variant, smallest.unit, smallest.reason) == (
        "b/bf16",
        "bytes",
        "only the models' baselines are acceptable; b/bf16 is the smallest (128.0 MiB)",
    )
    assert got.summary == (
        "Under max KL 0 nats/token, only the baselines (a/bf16, b/bf16) are acceptable: "
        "a/w8 breaks KL 0.0100 nats/token > max 0; b/w8 breaks KL 0.0100 nats/token > max 0."
    )


def test_quality_figure_of_a_second_model_baseline_is_its_own_point() -> None:
    study = _merged()
    ok = list(study.variants)
    name, figure = rec._quality(ok, study)
    assert name == "kl_mean"
    assert figure(ok[2]) == (0.0, 0.0, 0.0)
    # Without KL on one variant: perplexity, each baseline's interval its own point.
    bare = ok[1].model_copy(
        update={"metrics": ok[1].metrics.model_copy(update={"divergence": None})}
    )
    ok = [ok[0], bare, ok[2], ok[3]]
    study = study.model_copy(update={"variants": ok})
    name, figure = rec._quality(ok, study)
    assert name == "perplexity"
    assert figure(ok[0]) == (10.0, 10.0, 10.0)
    assert figure(ok[2]) == (20.0, 20.0, 20.0)
    assert figure(ok[3]) == (20.5, 20.2, 20.8)  # no paired delta: its own interval


def test_quality_falls_back_to_perplexity_when_a_kl_is_not_finite() -> None:
    study = _merged()
    nan_kl = DivergenceRecord.model_construct(
        kl_mean=Interval.model_construct(estimate=float("nan"), low=0.0, high=1.0)
    )
    w8 = study.variants[1]
    w8 = w8.model_copy(update={"metrics": w8.metrics.model_copy(update={"divergence": nan_kl})})
    ok = [study.variants[0], w8]
    name, _ = rec._quality(ok, study.model_copy(update={"variants": ok}))
    assert name == "perplexity"


def test_task_verdicts_in_merged_results_pair_each_variant_with_its_own_baseline() -> None:
    a_base = _task_variant("a/bf16", "bf16", {"t": _task_record(0.5)})
    a_w8 = _task_variant("a/w8", "w8a8-int8", {"t": _task_record(0.5, paired=(100, 0, 0))})
    b_base = _task_variant("b/bf16", "bf16", {"t": _task_record(0.8)})
    b_w8 = _task_variant("b/w8", "w8a8-int8", {"t": _task_record(0.8, paired=(100, 0, 0))})
    merged = [
        v.model_copy(update={"study": v.name.split("/")[0]}) for v in (a_base, a_w8, b_base, b_w8)
    ]
    got = rec.task_verdicts(_study(*merged), 1.0)
    assert [(v.variant, v.baseline_accuracy) for v in got] == [("a/w8", 0.5), ("b/w8", 0.8)]


# --------------------------------------------------------------------------------------
# task verdicts
# --------------------------------------------------------------------------------------


def _task_record(
    accuracy: float,
    paired: tuple[int, int, int] | None = None,
    mcnemar: bool = True,
    p_value: float = 1.0,
    difference: tuple[float, float, float] = (0.0, -2.0, 2.0),
) -> TaskRecord:
    """A task record; `paired` = (n items, right→wrong, wrong→right) against the baseline."""
    vs = None
    if paired is not None:
        n, rw, wr = paired
        vs = PairedTaskComparison(
            n_paired=n,
            difference_points=Interval(
                estimate=difference[0], low=difference[1], high=difference[2]
            ),
            right_to_wrong=rw,
            wrong_to_right=wr,
            mcnemar_p=p_value if mcnemar else None,
        )
    return TaskRecord(
        task="t",
        metric="acc",
        filter="none",
        n_items=100,
        accuracy=Interval(estimate=accuracy, low=accuracy, high=accuracy),
        vs_baseline=vs,
        wall_s=1.0,
    )


def _task_variant(
    name: str, scheme: str, tasks: dict[str, TaskRecord], status: str = "ok"
) -> VariantResult:
    return VariantResult(
        name=name,
        scheme=scheme,
        status=status,  # type: ignore[arg-type]
        error="boom" if status == "failed" else None,
        metrics=VariantMetrics(tasks=tasks),
    )


def test_graded_scores_take_recovery_from_the_paired_difference() -> None:
    """No McNemar p (scores not right/wrong): recovery = 100 (1 + d / base points)."""
    base = _task_variant("bf16", "bf16", {"t": _task_record(0.4)})
    variant = _task_variant(
        "v",
        "w8a8-int8",
        {"t": _task_record(0.38, paired=(100, 0, 0), mcnemar=False, difference=(-2, -5, 1))},
    )
    got = rec._task_verdict(variant, base, "t", 1.0)
    assert got is not None
    assert got.recovery_method == "from_difference"
    # base 40 points: 100 (1 - 2/40) = 95, 100 (1 - 5/40) = 87.5, 100 (1 + 1/40) = 102.5.
    assert got.recovery_pct is not None
    assert (got.recovery_pct.estimate, got.recovery_pct.low, got.recovery_pct.high) == (
        pytest.approx(95.0),
        pytest.approx(87.5),
        pytest.approx(102.5),
    )
    assert (got.difference_points.estimate, got.difference_points.low) == (-2.0, -5.0)
    assert got.p_value is None


def test_flips_that_do_not_fit_the_items_fall_back_to_the_paired_difference() -> None:
    base = _task_variant("bf16", "bf16", {"t": _task_record(0.1)})
    # 30 right -> wrong flips with only 10 of 100 right at the baseline: not a 2x2 table.
    variant = _task_variant(
        "v", "w8a8-int8", {"t": _task_record(0.2, paired=(100, 30, 40), difference=(10, 0, 20))}
    )
    got = rec._task_verdict(variant, base, "t", 1.0)
    assert got is not None and got.recovery_method == "from_difference"
    assert got.recovery_pct is not None and got.recovery_pct.estimate == pytest.approx(200.0)


def test_a_baseline_that_scored_zero_has_no_recovery() -> None:
    base = _task_variant("bf16", "bf16", {"t": _task_record(0.0)})
    variant = _task_variant(
        "v", "w8a8-int8", {"t": _task_record(0.1, paired=(100, 0, 10), mcnemar=False)}
    )
    got = rec._task_verdict(variant, base, "t", 1.0)
    assert got is not None
    assert (got.recovery_pct, got.recovery_method) == (None, None)


def test_a_task_the_baseline_did_not_run_gets_no_verdict() -> None:
    base = _task_variant("bf16", "bf16", {})
    variant = _task_variant("v", "w8a8-int8", {"t": _task_record(0.5, paired=(100, 0, 0))})
    assert rec._task_verdict(variant, base, "t", 1.0) is None


def test_task_verdicts_cover_every_task_in_first_seen_order() -> None:
    base = _task_variant("bf16", "bf16", {"a": _task_record(0.5), "b": _task_record(0.5)})
    only_a = _task_variant("v1", "w8a8-int8", {"a": _task_record(0.5, paired=(100, 0, 0))})
    only_b = _task_variant("v2", "w8a8-int8", {"b": _task_record(0.5, paired=(100, 0, 0))})
    failed = _task_variant(
        "v3", "w8a8-int8", {"a": _task_record(0.5, paired=(100, 0, 0))}, status="failed"
    )
    got = rec.task_verdicts(_study(base, only_a, failed, only_b), 1.0)
    assert [(v.task, v.variant) for v in got] == [("a", "v1"), ("b", "v2")]
    # With no baseline scheme in the study nothing can be paired.
    assert rec.task_verdicts(_study(only_a, only_b), 1.0) == []


def test_a_mcnemar_p_of_zero_stays_zero_after_holm() -> None:
    """Exact McNemar p underflows to 0.0 beyond about 1,075 discordant items."""
    base = _task_variant("bf16", "bf16", {"t": _task_record(0.9)})
    variant = _task_variant(
        "v", "w8a8-int8", {"t": _task_record(0.1, paired=(2000, 1600, 0), p_value=0.0)}
    )
    (got,) = rec.task_verdicts(_study(base, variant), 1.0)
    assert (got.p_value, got.p_holm) == (0.0, 0.0)


def test_task_margin_prefers_the_non_inferiority_margin() -> None:
    both = Constraints(non_inferiority_margin=2.0, max_accuracy_drop=3.0)
    assert rec.task_margin(both) == 2.0
    assert rec.task_margin(Constraints(max_accuracy_drop=3.0)) == 3.0
    assert rec.task_margin(Constraints()) == rec.DEFAULT_NON_INFERIORITY_MARGIN


def test_the_task_rule_reads_the_baseline_it_is_given() -> None:
    base = _task_variant("bf16", "bf16", {"t": _task_record(0.5)})
    variant = _task_variant("v", "w8a8-int8", {})
    got = rec.verdict(variant, base, Constraints(non_inferiority_margin=1.0), [])
    assert (got.acceptable, got.broken, got.unknown) == (
        False,
        [],
        ["t unknown (not run; margin 1 point)"],
    )


def test_default_budget_with_tasks_adds_the_margin() -> None:
    base = _task_variant("bf16", "bf16", {"t": _task_record(0.5)})
    applied, budget = rec.applied_constraints(_study(base), Constraints(default_budget=True))
    assert budget == "default"
    assert applied == Constraints(
        max_kl=rec.DEFAULT_MAX_KL,
        max_ppl_increase_pct=rec.DEFAULT_MAX_PPL_INCREASE_PCT,
        non_inferiority_margin=rec.DEFAULT_NON_INFERIORITY_MARGIN,
        default_budget=True,
    )
    bare = _task_variant("bf16", "bf16", {})
    applied, _ = rec.applied_constraints(_study(bare), Constraints(default_budget=True))
    assert applied.non_inferiority_margin is None and applied.default_budget is True


# --------------------------------------------------------------------------------------
# limits, figures and texts at their edges
# --------------------------------------------------------------------------------------


def test_limits_equal_to_the_figure_are_met_and_breaches_are_formatted() -> None:
    base = _variant("bf16", perplexity=_ppl(10.0))
    base = base.model_copy(update={"scheme": "bf16"})
    at_limit = _variant("v", perplexity=_ppl(12.5, ratio=1.25))
    got = rec.verdict(at_limit, base, Constraints(max_ppl_increase_pct=25.0))
    assert got.acceptable
    small = _variant("v", perplexity=_ppl(10.0123, ratio=1.00123))
    got = rec.verdict(small, base, Constraints(max_ppl_increase_pct=0.1))
    assert got.broken == ["perplexity increase 0.123% > max 0.1%"]
    nan = _variant("v", perplexity=_ppl(10.0, ratio=float("nan")))
    got = rec.verdict(nan, base, Constraints(max_ppl_increase_pct=5.0))
    assert got.unknown == ["perplexity increase unknown (perplexity increase is nan; max 5%)"]
    divergence = DivergenceRecord.model_construct(kl_mean=Interval(estimate=1.5, low=1.4, high=1.6))
    got = rec.verdict(_variant("v", divergence=divergence), base, Constraints(max_kl=0.1))
    assert got.broken == ["KL 1.500 nats/token > max 0.1"]  # at least three decimals


def test_accuracy_drop_equal_to_the_limit_is_met() -> None:
    base = _task_variant("bf16", "bf16", {"t": _task_record(0.75)})
    variant = _task_variant("v", "w8a8-int8", {"t": _task_record(0.5)})
    # 0.75 - 0.5 = 0.25 exactly: a drop of 25 points, "at most 25" is met.
    got = rec.verdict(variant, base, Constraints(max_accuracy_drop=25.0))
    assert (got.acceptable, got.broken) == (True, [])
    got = rec.verdict(variant, base, Constraints(max_accuracy_drop=24.0))
    assert got.broken == ["accuracy drop 25.0 points on t > max 24 points"]


def test_accuracies_above_one_are_points() -> None:
    # 2.0 and 1.5 are not fractions: a drop of 0.5 points, not 50.
    assert rec.accuracy_drop_points(_tasks(a=1.5), _tasks(a=2.0)) == (0.5, "a", "")


def test_a_baseline_perplexity_of_one_is_a_valid_reference() -> None:
    base = _variant("bf16", perplexity=_ppl(1.0))
    got, why = rec.ppl_increase_pct(_variant(perplexity=_ppl(1.5)), base)
    assert (got, why) == (pytest.approx(50.0), "")


def test_decode_time_per_token_in_milliseconds_rounds_from_the_exact_figure() -> None:
    assert rec.format_value(0.00995, rec.UNIT_SECONDS_PER_TOKEN) == "9.95 ms/token"


def test_task_accuracies_of_odd_shapes() -> None:
    assert rec.task_accuracies(SimpleNamespace(metrics=SimpleNamespace())) is None  # type: ignore[arg-type]
    assert rec.task_accuracies(_tasks_as(5)) is None
    unnamed = _tasks_as([SimpleNamespace(accuracy=0.5), SimpleNamespace(name="a", acc=0.25)])
    assert rec.task_accuracies(unnamed) == {"a": 0.25}


def _tasks_as(tasks: object) -> Any:
    return SimpleNamespace(metrics=SimpleNamespace(tasks=tasks))


def test_why_not_joins_every_reason() -> None:
    judged = VariantVerdict(
        variant="v", acceptable=False, broken=["x1", "x2"], unknown=["u1", "u2"]
    )
    assert rec._why_not(judged) == "v breaks x1; x2 and cannot be checked: u1; u2"


def test_none_acceptable_lists_each_rejection() -> None:
    assert rec._none_acceptable([]) == (
        "no variant is acceptable (the study has no variants); unknown counts as not acceptable"
    )
    verdicts = [
        VariantVerdict(variant="a", acceptable=False, broken=[rec.FAILED]),
        VariantVerdict(variant="b", acceptable=True),
        VariantVerdict(variant="c", acceptable=False, unknown=["u"]),
    ]
    assert rec._none_acceptable(verdicts) == (
        "no variant is acceptable (a failed; c cannot be checked: u); unknown counts as not "
        "acceptable"
    )


def test_inconclusive_note_names_only_acceptable_variants() -> None:
    context = rec._Context(
        acceptable=[_variant("v1"), _variant("v2")],
        verdicts=[],
        only_baseline=False,
    )
    tasks = [
        TaskVerdict.model_construct(task="gsm8k", variant="v1", verdict=INCONCLUSIVE),
        TaskVerdict.model_construct(task="gsm8k", variant="v2", verdict="non-inferior"),
        TaskVerdict.model_construct(task="ifeval", variant="v2", verdict=INCONCLUSIVE),
        TaskVerdict.model_construct(task="gsm8k", variant="other", verdict=INCONCLUSIVE),
    ]
    assert rec._inconclusive_note(context, tasks) == (
        " Too few task items to show these within the accuracy budget (raise --limit): "
        "v1 on gsm8k, v2 on ifeval."
    )


def test_front_skips_variants_without_figures_and_goes_on() -> None:
    variants = [_variant("none"), _variant("a"), _variant("b")]
    x = {"none": None, "a": 1.0, "b": 2.0}
    quality = {"none": None, "a": (0.2, 0.2, 0.2), "b": (0.1, 0.1, 0.1)}
    front, ties = rec._front(variants, lambda v: x[v.name], lambda v: quality[v.name])
    assert (front, ties) == (["a", "b"], {})


# --------------------------------------------------------------------------------------
# choosing: units, ties, missing figures
# --------------------------------------------------------------------------------------


def _context(*names: str, quality: dict[str, float] | None = None) -> Any:
    return rec._Context(
        acceptable=[_variant(n) for n in names],
        verdicts=[],
        only_baseline=False,
        quality=quality or {},
    )


def test_pick_on_equal_figures_prefers_a_known_quality() -> None:
    figures = {"a": 5.0, "b": 5.0}
    got = rec._pick(
        rec.SMALLEST,
        _context("a", "b", quality={"b": 0.1}),
        lambda v: figures[v.name],
        rec.UNIT_BYTES,
        lowest=True,
        phrase="smallest",
        missing="a size figure",
    )
    assert got.variant == "b"


def test_pick_orders_figures_near_the_float_maximum() -> None:
    """Figures are compared as they are, never scaled: 2 x 1e308 would overflow to inf and
    turn two different figures into a tie settled by quality."""
    figures = {"a": 1.0e308, "b": 1.5e308}
    # Quality favours the variant that must NOT be picked, so a false tie would show.
    for lowest, expected, quality in (
        (True, "a", {"a": 0.5, "b": 0.1}),
        (False, "b", {"a": 0.1, "b": 0.5}),
    ):
        got = rec._pick(
            rec.SMALLEST,
            _context("a", "b", quality=quality),
            lambda v: figures[v.name],
            rec.UNIT_BYTES,
            lowest=lowest,
            phrase="smallest",
            missing="a size figure",
        )
        assert got.variant == expected, lowest


def test_pick_names_the_variants_it_could_not_rank() -> None:
    figures = {"a": 5.0 * MIB, "b": None, "c": None}
    got = rec._pick(
        rec.SMALLEST,
        _context("a", "b", "c"),
        lambda v: figures[v.name],
        rec.UNIT_BYTES,
        lowest=True,
        phrase="smallest",
        missing="a size figure",
    )
    assert (got.variant, got.unit, got.reason) == (
        "a",
        "bytes",
        "a is the smallest acceptable variant (5.0 MiB); not ranked for want of a size "
        "figure: b, c",
    )


def test_no_acceptable_variant_keeps_the_unit() -> None:
    empty = rec._Context(
        acceptable=[],
        verdicts=[],
        only_baseline=False,
    )
    got = rec._pick(
        rec.LOWEST_LATENCY,
        empty,
        lambda v: 1.0,
        rec.UNIT_SECONDS_PER_TOKEN,
        lowest=True,
        phrase="fastest",
        missing="x",
    )
    assert (got.variant, got.unit) == (None, "s/token")


def test_missing_figures_are_named_per_objective() -> None:
    from test_recommend import _study
    from test_recommend import _variant as full_variant

    study = _study(
        full_variant("bf16", "bf16", None, ppl=10.0),
        full_variant("w8", "w8a8-int8", None, kl=0.01, ppl=10.1),
    )
    got = rec.recommend(study, Constraints(default_budget=False))
    assert {c.objective: (c.variant, c.unit, c.reason) for c in got.choices} == {
        rec.SMALLEST: (None, "bytes", "no acceptable variant has a size figure (bf16, w8)"),
        rec.LOWEST_LATENCY: (
            None,
            "s/token",
            "no acceptable variant has a decode time at batch 1 (bf16, w8)",
        ),
        rec.HIGHEST_THROUGHPUT: (
            None,
            "tok/s",
            "no acceptable variant has a throughput figure (bf16, w8)",
        ),
    }
    assert got.summary == (
        "No constraints set, so every ok variant is acceptable: smallest on disk: no acceptable "
        "variant has the figure; lowest latency: no acceptable variant has the figure; highest "
        "throughput: no acceptable variant has the figure."
    )


def test_throughput_without_a_shared_batch_size() -> None:
    from test_recommend import _speed, _study
    from test_recommend import _variant as full_variant

    fast = _speed("native", 0.01, 100.0)
    only_b8 = fast.model_copy(update={"points": [p for p in fast.points if p.batch_size == 8]})
    only_b1 = fast.model_copy(update={"points": [p for p in fast.points if p.batch_size == 1]})
    study = _study(
        full_variant("bf16", "bf16", 256, ppl=10.0, speed=only_b1),
        full_variant("w8", "w8a8-int8", 128, kl=0.01, ppl=10.1, speed=only_b8),
    )
    got = rec.recommend(study, Constraints(default_budget=False))
    choice = next(c for c in got.choices if c.objective == rec.HIGHEST_THROUGHPUT)
    assert (choice.objective, choice.variant, choice.unit, choice.judged, choice.reason) == (
        rec.HIGHEST_THROUGHPUT,
        None,
        "tok/s",
        True,
        "the acceptable variants share no batch size, so their throughput cannot be compared "
        "(bf16, w8)",
    )


def test_emulated_speed_choices_keep_their_units() -> None:
    from test_recommend import _three

    got = rec.recommend(_three("emulated"), Constraints(default_budget=False))
    speed = [(c.objective, c.unit, c.judged, c.variant) for c in got.choices[1:]]
    assert speed == [
        (rec.LOWEST_LATENCY, "s/token", False, None),
        (rec.HIGHEST_THROUGHPUT, "tok/s", False, None),
    ]
    assert got.summary == (
        "No constraints set, so every ok variant is acceptable: smallest on disk is w4 "
        "(80.0 MiB); speed cannot be judged here (emulated)."
    )


def test_quality_breaks_ties_on_the_estimate_not_the_interval() -> None:
    from test_recommend import _study
    from test_recommend import _variant as full_variant

    wide = full_variant("wide", "w8a8-int8", 100, kl=0.1, ppl=10.0)
    wide_div = DivergenceRecord.model_construct(kl_mean=Interval(estimate=0.1, low=0.0, high=0.2))
    wide = wide.model_copy(
        update={"metrics": wide.metrics.model_copy(update={"divergence": wide_div})}
    )
    narrow = full_variant("narrow", "w8a8-int8", 100, kl=0.05, ppl=10.0)
    got = rec.recommend(
        _study(full_variant("bf16", "bf16", 256, ppl=10.0), wide, narrow),
        Constraints(default_budget=False),
    )
    assert next(c for c in got.choices if c.objective == rec.SMALLEST).variant == "narrow"


# --------------------------------------------------------------------------------------
# the summary when only baselines are acceptable, or nothing is
# --------------------------------------------------------------------------------------


def test_summary_when_the_study_has_no_variant() -> None:
    from test_recommend import _study

    got = rec.recommend(_study(), Constraints(max_kl=0.1, default_budget=False))
    assert got.summary == (
        "Under max KL 0.1 nats/token: no variant is acceptable; unknown counts as not acceptable."
    )


def test_summary_when_only_the_baseline_is_acceptable() -> None:
    from test_recommend import _three

    got = rec.recommend(_three("emulated"), Constraints(max_kl=0.0, default_budget=False))
    assert got.summary == (
        "Under max KL 0 nats/token, only the baseline (bf16) is acceptable: fp8 breaks KL "
        "0.0120 nats/token > max 0; w4 breaks KL 0.192 nats/token > max 0. Speed cannot be "
        "judged here (emulated)."
    )


def test_summary_when_the_baseline_is_the_only_variant() -> None:
    from test_recommend import _study
    from test_recommend import _variant as full_variant

    got = rec.recommend(_study(full_variant("bf16", "bf16", 256, ppl=10.0)), Constraints())
    assert got.summary == (
        "No constraints set, so every ok variant is acceptable, only the baseline (bf16) is "
        "acceptable (it is the only variant)."
    )


def test_speed_front_reports_its_ties() -> None:
    from test_recommend import _speed, _study
    from test_recommend import _variant as full_variant

    study = _study(
        full_variant("bf16", "bf16", 256, ppl=10.0, speed=_speed("native", 0.020, 100.0)),
        full_variant("a", "w8a8-int8", 128, kl=0.02, ppl=10.1, speed=_speed("native", 0.010, 90)),
        full_variant("b", "w8a8-int8", 128, kl=0.021, ppl=10.1, speed=_speed("native", 0.012, 80)),
    )
    got = rec.recommend(study, Constraints(default_budget=False))
    # b is slower than a and its KL interval [0.0189, 0.0231] overlaps a's [0.018, 0.022].
    assert got.pareto_speed_quality == ["bf16", "a", "b"]
    assert got.pareto_speed_ties == {"b": ["a"]}
