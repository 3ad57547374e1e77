"""Which variant to pick: acceptability under constraints, the best per objective, Pareto fronts.

`recommend` is pure: it reads the saved records of a study (never models or files) and returns
a `Recommendation` that reports render. A variant is acceptable when its status is "ok" and it
meets every constraint that is set; a constraint whose metric is missing cannot be checked, is
listed under `unknown`, and makes the variant NOT acceptable (it is never assumed to pass).

The baseline is checked like every other variant: its KL to itself is 0, its perplexity increase
over itself is 0 and its accuracy drop is 0, so it passes any non-negative limit.

Speed figures measured in emulation (weights decompressed, activation quantization simulated)
measure emulation overhead, not the scheme, so when any ok variant's speed record is emulated
the speed objectives are not judged and no speed Pareto front is drawn.

With no limit set, a study applies the default quality budget (`DEFAULT_MAX_KL`,
`DEFAULT_MAX_PPL_INCREASE_PCT`, `DEFAULT_NON_INFERIORITY_MARGIN`; the reasoning is in
docs/recommendation.md) and the summary says so in its first sentence; `Constraints` with
`default_budget=False` (`--no-default-constraints`) makes every ok variant acceptable. Task
results are judged per task and variant (recovery, Holm-adjusted McNemar p, non-inferiority),
and the Pareto fronts call a variant dominated only beyond the quality intervals
(`quantbench.stats.pareto`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from quantbench.results import (
    Constraints,
    Interval,
    ObjectiveChoice,
    Recommendation,
    SpeedPoint,
    StudyResults,
    TaskRecord,
    TaskVerdict,
    VariantResult,
    VariantVerdict,
    find_baseline,
    weights_bytes,
)
from quantbench.stats.pareto import UncertainPoint, uncertain_pareto_front
from quantbench.stats.tasks import (
    INCONCLUSIVE,
    INFERIOR,
    PairedCounts,
    holm_adjust,
    non_inferiority,
    paired_difference_ci,
    recovery_ci,
    recovery_from_difference,
)
from quantbench.units import MIB, format_number

Objective = Literal["smallest on disk", "lowest latency", "highest throughput"]
SMALLEST: Final = "smallest on disk"
LOWEST_LATENCY: Final = "lowest latency"
HIGHEST_THROUGHPUT: Final = "highest throughput"

UNIT_BYTES = "bytes"
UNIT_SECONDS_PER_TOKEN = "s/token"
UNIT_TOKENS_PER_SECOND = "tok/s"

FAILED = "failed"
EMULATED_REASON = (
    "speed cannot be judged here: the figures are emulated (weights decompressed and "
    "activation quantization simulated), so ranking by them would rank by emulation overhead, "
    "not by the scheme; measure with a runtime that has native kernels (vLLM)"
)

_ACCURACY_KEYS = ("accuracy", "acc", "score", "value", "estimate")

DEFAULT_MAX_KL = 0.05
"""nats/token: llama.cpp's Q4_K_M of Llama-3-8B reads 0.031, Q4_0 0.072 (docs/recommendation.md)."""
DEFAULT_MAX_PPL_INCREASE_PCT = 5.0
"""percent: Q4_K_M of Llama-3-8B reads +2.8%, Q4_0 +7.5% on WikiText-2."""
DEFAULT_NON_INFERIORITY_MARGIN = 1.0
"""percentage points: ≈ 99% recovery at the 60–80% accuracies published model cards show."""
NO_DEFAULT_FLAG = "--no-default-constraints"

Budget = Literal["set", "default", "none"]


# --------------------------------------------------------------------------------------
# Figures read from the records
# --------------------------------------------------------------------------------------


def kl_mean(variant: VariantResult, baseline: VariantResult | None) -> float | None:
    """Mean KL(baseline ‖ variant), nats/token; 0 for the baseline itself (KL to itself)."""
    div = variant.metrics.divergence
    if div is not None:
        return div.kl_mean.estimate
    return 0.0 if variant is baseline else None


def _ppl_estimate(variant: VariantResult | None) -> float | None:
    ppl = variant.metrics.perplexity if variant is not None else None
    return ppl.perplexity.estimate if ppl is not None else None


def ppl_increase_pct(
    variant: VariantResult, baseline: VariantResult | None
) -> tuple[float | None, str]:
    """Perplexity increase over the baseline in percent, 100 · (ppl / baseline ppl − 1).

    Uses the record's `ratio_vs_baseline` when set, else the two estimates (for the baseline
    itself that is its own estimate twice, so 0). Returns the figure and, when it is None, why.
    """
    record = variant.metrics.perplexity
    if record is not None and record.ratio_vs_baseline is not None:
        return 100.0 * (record.ratio_vs_baseline - 1.0), ""
    base = _ppl_estimate(baseline)
    if record is not None and base is not None and base > 0 and math.isfinite(base):
        return 100.0 * (record.perplexity.estimate / base - 1.0), ""
    if variant is baseline:
        return 0.0, ""  # the baseline against itself, even without a perplexity record
    if record is None:
        return None, "no perplexity measured"
    if baseline is None:
        return None, "no baseline to compare with"
    if base is None:
        return None, "the baseline has no perplexity"
    return None, f"the baseline perplexity is {base}"


def _number(value: object) -> float | None:
    """A float out of a number, an interval-like record, or a record/mapping of an accuracy."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    for key in _ACCURACY_KEYS:
        inner = value.get(key) if isinstance(value, Mapping) else getattr(value, key, None)
        if inner is not None and inner is not value:
            return _number(inner)
    return None


def task_accuracies(variant: VariantResult) -> dict[str, float] | None:
    """Task name → accuracy, read defensively: task metrics are not part of the schema yet.

    Accepts `metrics.tasks` as a mapping (name → number, interval or record with an accuracy),
    a record wrapping such a mapping in `.tasks`, or a sequence of records with a `name` or
    `task` field. None when the variant has no task metrics.
    """
    tasks: object = getattr(variant.metrics, "tasks", None)
    if tasks is None:
        return None
    inner = getattr(tasks, "tasks", None)
    if isinstance(inner, Mapping | list | tuple):
        tasks = inner
    scores: dict[str, float] = {}
    if isinstance(tasks, Mapping):
        for name, value in tasks.items():
            number = _number(value)
            if number is not None:
                scores[str(name)] = number
    elif isinstance(tasks, Sequence) and not isinstance(tasks, str):
        for item in tasks:
            name = getattr(item, "name", None) or getattr(item, "task", None)
            if name is None and isinstance(item, Mapping):
                name = item.get("name") or item.get("task")
            number = _number(item)
            if name is not None and number is not None:
                scores[str(name)] = number
    return scores or None


def accuracy_drop_points(
    variant: VariantResult, baseline: VariantResult | None
) -> tuple[float | None, str, str]:
    """The worst per-task accuracy drop vs the baseline, in percentage points.

    Returns (drop, task, why-unknown). Accuracies that are all within [0, 1] are read as
    fractions and scaled to points; otherwise they are taken as points already.
    """
    own = task_accuracies(variant)
    base = task_accuracies(baseline) if baseline is not None else None
    common = [task for task in own if task in base] if own and base else []
    if not common:
        if variant is baseline:
            return 0.0, "", ""  # the baseline against itself, even without task figures
        if own is None:
            return None, "", "no task accuracy measured"
        if base is None:
            return None, "", "the baseline has no task accuracy"
        return None, "", "no task in common with the baseline"
    assert own is not None and base is not None
    fractions = all(0.0 <= x <= 1.0 for x in [*own.values(), *base.values()])
    scale = 100.0 if fractions else 1.0
    drops = {task: (base[task] - own[task]) * scale for task in common}
    worst = max(common, key=lambda task: drops[task])
    return drops[worst], worst, ""


def decode_s_per_token(variant: VariantResult) -> float | None:
    """Median decode time per output token at batch 1, seconds."""
    point = _point(variant, 1)
    return point.tpot_s.median if point is not None else None


def _point(variant: VariantResult, batch: int) -> SpeedPoint | None:
    speed = variant.metrics.speed
    if speed is None:
        return None
    return next((p for p in speed.points if p.batch_size == batch), None)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------


def _limit(value: float) -> str:
    return f"{value:g}"


def _points(value: float) -> str:
    return f"{_limit(value)} point" + ("" if value == 1 else "s")


def describe_constraints(constraints: Constraints) -> str:
    """The constraints that are set, as one phrase; "" when none is set."""
    parts = []
    if constraints.max_kl is not None:
        parts.append(f"max KL {_limit(constraints.max_kl)} nats/token")
    if constraints.max_ppl_increase_pct is not None:
        parts.append(f"max perplexity increase {_limit(constraints.max_ppl_increase_pct)}%")
    if constraints.max_accuracy_drop is not None:
        parts.append(f"max accuracy drop {_limit(constraints.max_accuracy_drop)} points")
    if constraints.non_inferiority_margin is not None:
        parts.append(
            f"no task shown more than {_points(constraints.non_inferiority_margin)} worse "
            "by its paired 95% interval"
        )
    return ", ".join(parts)


def describe_budget(rec: Recommendation) -> str:
    """The limits a recommendation applied and where they came from, as one phrase."""
    described = describe_constraints(rec.constraints)
    if rec.budget == "default":
        return (
            f"quantbench's default quality budget: {described} "
            f"({NO_DEFAULT_FLAG} turns it off; docs/recommendation.md says why)"
        )
    return described or "none set"


def format_value(value: float | None, unit: str) -> str:
    """A choice's value in display units: MiB, ms/token, tok/s."""
    if value is None:
        return ""
    if unit == UNIT_BYTES:
        return f"{value / MIB:,.1f} MiB"
    if unit == UNIT_SECONDS_PER_TOKEN:
        return f"{format_number(value * 1000, significant=3, minimum=1)} ms/token"
    if unit == UNIT_TOKENS_PER_SECOND:
        return f"{value:,.1f} tok/s"
    return f"{format_number(value)} {unit}".strip()


def _names(names: Sequence[str]) -> str:
    return ", ".join(names)


# --------------------------------------------------------------------------------------
# Acceptability
# --------------------------------------------------------------------------------------


def verdict(
    variant: VariantResult,
    baseline: VariantResult | None,
    constraints: Constraints,
    tasks: Sequence[TaskVerdict] = (),
) -> VariantVerdict:
    """Whether `variant` meets every constraint that is set; unknown counts as not met.

    `tasks` are the study's task verdicts (see `task_verdicts`), read for the
    non-inferiority margin: a task shown inferior breaks it.
    """
    if variant.status != "ok":
        return VariantVerdict(variant=variant.name, acceptable=False, broken=[FAILED])
    broken: list[str] = []
    unknown: list[str] = []
    if constraints.max_kl is not None:
        limit = constraints.max_kl
        kl = kl_mean(variant, baseline)
        if not _finite(kl):
            unknown.append(f"KL unknown (no divergence measured; max {_limit(limit)})")
        elif kl is not None and kl > limit:
            broken.append(f"KL {format_number(kl, 3, 3)} nats/token > max {_limit(limit)}")
    if constraints.max_ppl_increase_pct is not None:
        limit = constraints.max_ppl_increase_pct
        increase, why = ppl_increase_pct(variant, baseline)
        if increase is None or not math.isfinite(increase):
            why = why or f"perplexity increase is {increase}"
            unknown.append(f"perplexity increase unknown ({why}; max {_limit(limit)}%)")
        elif increase > limit:
            broken.append(
                f"perplexity increase {format_number(increase, 3, 2)}% > max {_limit(limit)}%"
            )
    if constraints.max_accuracy_drop is not None:
        limit = constraints.max_accuracy_drop
        drop, task, why = accuracy_drop_points(variant, baseline)
        if drop is None or not math.isfinite(drop):
            unknown.append(f"accuracy drop unknown ({why}; max {_limit(limit)} points)")
        elif drop > limit:
            broken.append(
                f"accuracy drop {format_number(drop, 2, 1)} points on {task} "
                f"> max {_limit(limit)} points"
            )
    if constraints.non_inferiority_margin is not None and variant is not baseline:
        _check_tasks(variant, baseline, constraints.non_inferiority_margin, tasks, broken, unknown)
    return VariantVerdict(
        variant=variant.name, acceptable=not broken and not unknown, broken=broken, unknown=unknown
    )


def _check_tasks(
    variant: VariantResult,
    baseline: VariantResult | None,
    margin: float,
    tasks: Sequence[TaskVerdict],
    broken: list[str],
    unknown: list[str],
) -> None:
    """The non-inferiority rule: each task the baseline ran must not be shown inferior."""
    base_tasks = list(baseline.metrics.tasks) if baseline is not None else []
    if not base_tasks and not variant.metrics.tasks:
        unknown.append(
            f"task results unknown (no task accuracy measured; margin {_points(margin)})"
        )
        return
    own = {t.task: t for t in tasks if t.variant == variant.name}
    for task in dict.fromkeys([*base_tasks, *variant.metrics.tasks]):
        judged = own.get(task)
        if judged is None:
            why = (
                "no baseline result"
                if task not in base_tasks
                else "no paired result"
                if task in variant.metrics.tasks
                else "not run"
            )
            unknown.append(f"{task} unknown ({why}; margin {_points(margin)})")
        elif judged.verdict == INFERIOR:
            d = judged.difference_points
            broken.append(
                f"{task} shown more than {_points(margin)} worse "
                f"(Δ {d.estimate:+.1f} [{d.low:+.1f}, {d.high:+.1f}] points)"
            )


def _why_not(verdict: VariantVerdict) -> str:
    """Why a variant is not acceptable, in a few words."""
    if verdict.broken == [FAILED]:
        return f"{verdict.variant} failed"
    parts = []
    if verdict.broken:
        parts.append("breaks " + "; ".join(verdict.broken))
    if verdict.unknown:
        parts.append("cannot be checked: " + "; ".join(verdict.unknown))
    return f"{verdict.variant} " + " and ".join(parts)


def _none_acceptable(verdicts: Sequence[VariantVerdict]) -> str:
    rejected = [_why_not(v) for v in verdicts if not v.acceptable]
    listed = "; ".join(rejected) if rejected else "the study has no variants"
    return f"no variant is acceptable ({listed}); unknown counts as not acceptable"


# --------------------------------------------------------------------------------------
# Tasks: recovery, multiplicity, non-inferiority
# --------------------------------------------------------------------------------------


def task_margin(constraints: Constraints) -> float:
    """The accuracy-drop budget the per-task verdicts are judged against, points."""
    if constraints.non_inferiority_margin is not None:
        return constraints.non_inferiority_margin
    if constraints.max_accuracy_drop is not None:
        return constraints.max_accuracy_drop
    return DEFAULT_NON_INFERIORITY_MARGIN


def _task_verdict(
    variant: VariantResult, baseline: VariantResult, task: str, margin: float
) -> TaskVerdict | None:
    record = variant.metrics.tasks[task]
    base_record = baseline.metrics.tasks.get(task)
    if not isinstance(record, TaskRecord) or not isinstance(base_record, TaskRecord):
        return None  # not a task record of the schema (hand-made or older results)
    paired = record.vs_baseline
    if paired is None:
        return None
    base_accuracy = base_record.accuracy.estimate
    counts = None
    if paired.mcnemar_p is not None:  # right/wrong scores: the 2×2 table is in the record
        try:
            counts = PairedCounts.from_summary(
                paired.n_paired, base_accuracy, paired.right_to_wrong, paired.wrong_to_right
            )
        except ValueError:
            counts = None
    if counts is not None:
        difference = paired_difference_ci(counts)
        recovery = recovery_ci(counts)
        method: Literal["delta", "from_difference"] = "delta"
    else:
        d = paired.difference_points
        difference = (d.estimate, d.low, d.high)
        recovery = recovery_from_difference(100.0 * base_accuracy, difference)
        method = "from_difference"
    estimate, low, high = difference
    return TaskVerdict(
        task=task,
        variant=variant.name,
        n_items=paired.n_paired,
        baseline_accuracy=base_accuracy,
        variant_accuracy=record.accuracy.estimate,
        difference_points=Interval(estimate=estimate, low=low, high=high),
        recovery_pct=Interval(estimate=recovery[0], low=recovery[1], high=recovery[2])
        if recovery is not None
        else None,
        recovery_method=method if recovery is not None else None,
        p_value=paired.mcnemar_p,
        margin_points=margin,
        verdict=non_inferiority(low, high, margin),
    )


def task_verdicts(results: StudyResults, margin: float) -> list[TaskVerdict]:
    """Every ok variant against its baseline on every task both ran (tasks in the order they
    first appear, variants in study order), with Holm-adjusted p-values.

    The Holm family is every (task, variant) pair with a McNemar p-value in `results`, so the
    chance that any "significant" difference in the table is a fluke stays at 5%.
    """
    order: list[str] = []
    for variant in results.variants:
        order += [t for t in variant.metrics.tasks if t not in order]
    verdicts: list[TaskVerdict] = []
    for task in order:
        for variant in results.variants:
            baseline = find_baseline(results, variant)
            if (
                variant.status != "ok"
                or baseline is None
                or variant is baseline
                or task not in variant.metrics.tasks
            ):
                continue
            judged = _task_verdict(variant, baseline, task, margin)
            if judged is not None:
                verdicts.append(judged)
    tested = [i for i, v in enumerate(verdicts) if v.p_value is not None]
    adjusted = holm_adjust([verdicts[i].p_value or 0.0 for i in tested])
    for i, p in zip(tested, adjusted, strict=True):
        verdicts[i] = verdicts[i].model_copy(update={"p_holm": p})
    return verdicts


# --------------------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    acceptable: list[VariantResult]
    verdicts: list[VariantVerdict]
    only_baseline: bool
    quality: dict[str, float] = field(default_factory=dict)
    """Variant name → quality estimate (lower is better), to break ties on an objective."""


def _pick(
    objective: Objective,
    context: _Context,
    figure: Callable[[VariantResult], float | None],
    unit: str,
    lowest: bool,
    phrase: str,
    missing: str,
) -> ObjectiveChoice:
    """The best acceptable variant by `figure`; on equal figures the better quality wins
    (two schemes with the same bytes on disk), then the first in study order."""
    if not context.acceptable:
        return ObjectiveChoice(
            objective=objective,
            variant=None,
            unit=unit,
            reason=_none_acceptable(context.verdicts),
        )
    scored = [(v, figure(v)) for v in context.acceptable]
    with_figure = [(v, x) for v, x in scored if x is not None and math.isfinite(x)]
    without = [v.name for v, x in scored if x is None or not math.isfinite(x)]
    if not with_figure:
        return ObjectiveChoice(
            objective=objective,
            variant=None,
            unit=unit,
            reason=f"no acceptable variant has {missing} ({_names(without)})",
        )
    sign = 1.0 if lowest else -1.0
    best = min(
        with_figure,
        key=lambda pair: (sign * pair[1], context.quality.get(pair[0].name, math.inf)),
    )
    variant, value = best
    text = format_value(value, unit)
    if context.only_baseline:
        if len(context.acceptable) == 1:
            reason = f"only the baseline ({variant.name}) is acceptable, so it is the choice"
        else:
            reason = f"only the models' baselines are acceptable; {variant.name} is the {phrase}"
        reason += f" ({text})"
    else:
        reason = f"{variant.name} is the {phrase} acceptable variant ({text})"
    if without:
        reason += f"; not ranked for want of {missing}: {_names(without)}"
    return ObjectiveChoice(
        objective=objective,
        variant=variant.name,
        value=float(value),
        unit=unit,
        reason=reason,
    )


def _emulated_choice(objective: Objective, unit: str, emulated: Sequence[str]) -> ObjectiveChoice:
    return ObjectiveChoice(
        objective=objective,
        variant=None,
        unit=unit,
        judged=False,
        reason=f"{EMULATED_REASON} (emulated: {_names(emulated)})",
    )


def _throughput_choice(context: _Context) -> ObjectiveChoice:
    """Highest median throughput at the largest batch size every acceptable variant measured."""
    measured = [v for v in context.acceptable if v.metrics.speed and v.metrics.speed.points]
    batches: set[int] | None = None
    for variant in measured:
        assert variant.metrics.speed is not None
        own = {p.batch_size for p in variant.metrics.speed.points}
        batches = own if batches is None else batches & own
    if measured and not batches:
        return ObjectiveChoice(
            objective=HIGHEST_THROUGHPUT,
            variant=None,
            unit=UNIT_TOKENS_PER_SECOND,
            reason="the acceptable variants share no batch size, so their throughput "
            f"cannot be compared ({_names([v.name for v in measured])})",
        )
    batch = max(batches) if batches else 0

    def throughput(variant: VariantResult) -> float | None:
        point = _point(variant, batch)
        return point.throughput_tok_s.median if point is not None else None

    choice = _pick(
        HIGHEST_THROUGHPUT,
        context,
        throughput,
        UNIT_TOKENS_PER_SECOND,
        lowest=False,
        phrase="highest-throughput",
        missing="a throughput figure",
    )
    if choice.variant is not None:
        choice = choice.model_copy(update={"reason": f"{choice.reason}, at batch {batch}"})
    return choice


# --------------------------------------------------------------------------------------
# Pareto fronts
# --------------------------------------------------------------------------------------


QualityFigure = tuple[float, float, float]
"""A quality figure (lower is better) with its interval: estimate, low, high."""


def _front(
    variants: Sequence[VariantResult],
    x: Callable[[VariantResult], float | None],
    quality: Callable[[VariantResult], QualityFigure | None],
) -> tuple[list[str], dict[str, list[str]]]:
    """Names (study order) of the variants not dominated beyond the quality intervals on the
    (x, quality) plane, both minimised, and for each tied one the variants it ties with."""
    named: list[str] = []
    points: list[UncertainPoint] = []
    for variant in variants:
        a, q = x(variant), quality(variant)
        if a is None or q is None or not all(math.isfinite(v) for v in (a, *q)):
            continue
        estimate, low, high = q
        named.append(variant.name)
        points.append(UncertainPoint(float(a), estimate, min(low, estimate), max(high, estimate)))
    statuses = uncertain_pareto_front(points)
    front = [named[i] for i, st in enumerate(statuses) if st.on_front]
    ties = {
        named[i]: [named[j] for j in st.tied_with]
        for i, st in enumerate(statuses)
        if st.status == "tie"
    }
    return front, ties


def kl_figure(variant: VariantResult, baseline: VariantResult | None) -> QualityFigure | None:
    """Mean KL with its interval, nats/token; exactly 0 for the baseline against itself."""
    div = variant.metrics.divergence
    if div is not None:
        return div.kl_mean.estimate, div.kl_mean.low, div.kl_mean.high
    return (0.0, 0.0, 0.0) if variant is baseline else None


def perplexity_figure(
    variant: VariantResult, baseline: VariantResult | None
) -> QualityFigure | None:
    """Perplexity with the interval of its paired difference from the baseline placed around
    it (the windows' shared difficulty cancels, so variants can be told apart); the
    baseline's own interval is its point, and a variant without a paired difference keeps
    its unpaired interval."""
    ppl = variant.metrics.perplexity
    if ppl is None:
        return None
    estimate = ppl.perplexity.estimate
    if variant is baseline:
        return estimate, estimate, estimate
    delta = ppl.delta_vs_baseline
    if delta is not None:
        return (
            estimate,
            estimate + delta.low - delta.estimate,
            estimate + delta.high - delta.estimate,
        )
    return estimate, ppl.perplexity.low, ppl.perplexity.high


def _quality(
    ok: Sequence[VariantResult], results: StudyResults
) -> tuple[str, Callable[[VariantResult], QualityFigure | None]]:
    """Mean KL (against each variant's own baseline) when every ok variant has one (a
    baseline's is 0), else perplexity."""

    def kl(v: VariantResult) -> QualityFigure | None:
        return kl_figure(v, find_baseline(results, v))

    def ppl(v: VariantResult) -> QualityFigure | None:
        return perplexity_figure(v, find_baseline(results, v))

    if ok and all(kl(v) is not None and _finite(kl_mean(v, find_baseline(results, v))) for v in ok):
        return "kl_mean", kl
    return "perplexity", ppl


# --------------------------------------------------------------------------------------
# The recommendation
# --------------------------------------------------------------------------------------


def _summary(
    constraints: Constraints,
    budget: Budget,
    context: _Context,
    choices: Sequence[ObjectiveChoice],
    speed_judged: bool,
    tasks: Sequence[TaskVerdict],
) -> str:
    described = describe_constraints(constraints)
    if budget == "default":
        lead = (
            f"Under quantbench's default quality budget ({described}; "
            f"{NO_DEFAULT_FLAG} turns it off)"
        )
    elif not described:
        lead = "No constraints set, so every ok variant is acceptable"
    else:
        lead = f"Under {described}"
    rejected = "; ".join(_why_not(v) for v in context.verdicts if not v.acceptable)
    if not context.acceptable:
        return (
            f"{lead}: no variant is acceptable"
            + (f" ({rejected})" if rejected else "")
            + "; unknown counts as not acceptable."
        )
    picks = []
    for choice in choices:
        if not choice.judged:
            continue
        if choice.variant is not None:
            value = format_value(choice.value, choice.unit)
            picks.append(f"{choice.objective} is {choice.variant} ({value})")
        else:
            picks.append(f"{choice.objective}: no acceptable variant has the figure")
    if not speed_judged:
        picks.append("speed cannot be judged here (emulated)")
    if context.only_baseline:
        names = ", ".join(v.name for v in context.acceptable)
        kind = "the baseline" if len(context.acceptable) == 1 else "the baselines"
        verb = "is" if len(context.acceptable) == 1 else "are"
        text = f"{lead}, only {kind} ({names}) {verb} acceptable"
        text += f": {rejected}." if rejected else " (it is the only variant)."
        if not speed_judged:
            text += " Speed cannot be judged here (emulated)."
        return text + _inconclusive_note(context, tasks)
    text = f"{lead}: " + "; ".join(picks) + "."
    if rejected:
        text += f" Not acceptable: {rejected}."
    return text + _inconclusive_note(context, tasks)


def _inconclusive_note(context: _Context, tasks: Sequence[TaskVerdict]) -> str:
    """A sentence naming acceptable variants whose task verdicts are still inconclusive."""
    names = {v.name for v in context.acceptable}
    open_ = [
        f"{t.variant} on {t.task}"
        for t in tasks
        if t.variant in names and t.verdict == INCONCLUSIVE
    ]
    if not open_:
        return ""
    return (
        " Too few task items to show these within the accuracy budget (raise --limit): "
        + ", ".join(open_)
        + "."
    )


def applied_constraints(
    results: StudyResults, constraints: Constraints
) -> tuple[Constraints, Budget]:
    """The limits a recommendation applies, and where they came from.

    Limits the user set apply as given. With none set and `default_budget`, the default
    quality budget applies, limited to what the study measured: max KL when any ok variant
    has a divergence record, max perplexity increase when any has perplexity (both when it
    has neither, so that "cannot be checked" says what is missing), and the task margin
    when tasks ran. Otherwise nothing applies.
    """
    limits = (
        constraints.max_kl,
        constraints.max_ppl_increase_pct,
        constraints.max_accuracy_drop,
        constraints.non_inferiority_margin,
    )
    if any(limit is not None for limit in limits):
        return constraints, "set"
    if not constraints.default_budget:
        return constraints, "none"
    ok = [v for v in results.variants if v.status == "ok"]
    has_kl = any(v.metrics.divergence is not None for v in ok)
    has_ppl = any(v.metrics.perplexity is not None for v in ok)
    has_tasks = any(v.metrics.tasks for v in ok)
    return (
        Constraints(
            max_kl=DEFAULT_MAX_KL if has_kl or not has_ppl else None,
            max_ppl_increase_pct=DEFAULT_MAX_PPL_INCREASE_PCT if has_ppl or not has_kl else None,
            non_inferiority_margin=DEFAULT_NON_INFERIORITY_MARGIN if has_tasks else None,
            default_budget=True,
        ),
        "default",
    )


def recommend(results: StudyResults, constraints: Constraints) -> Recommendation:
    """Judge every variant against `constraints` and pick the best acceptable one per objective.

    Pure: reads only the saved records. Unknown (a constraint whose metric is missing) counts
    as not acceptable. Speed objectives are not judged when any ok variant's speed is emulated.
    With no limit set and `constraints.default_budget`, the default quality budget applies
    (see `applied_constraints`).
    """
    constraints, budget = applied_constraints(results, constraints)
    tasks = task_verdicts(results, task_margin(constraints))
    verdicts = [verdict(v, find_baseline(results, v), constraints, tasks) for v in results.variants]
    acceptable = [
        v for v, judged in zip(results.variants, verdicts, strict=True) if judged.acceptable
    ]
    only_baseline = bool(acceptable) and all(
        v is find_baseline(results, v) for v in acceptable
    )  # several in merged results: each model's own
    ok = [v for v in results.variants if v.status == "ok"]
    quality_metric, quality = _quality(ok, results)
    estimates = {v.name: q[0] for v in ok if (q := quality(v)) is not None}
    context = _Context(acceptable, verdicts, only_baseline, estimates)

    emulated = [
        v.name
        for v in ok
        if v.metrics.speed is not None and v.metrics.speed.execution_mode == "emulated"
    ]
    speed_judged = not emulated

    choices = [
        _pick(
            SMALLEST,
            context,
            lambda v: _as_float(weights_bytes(v)),
            UNIT_BYTES,
            lowest=True,
            phrase="smallest",
            missing="a size figure",
        )
    ]
    if speed_judged:
        choices.append(
            _pick(
                LOWEST_LATENCY,
                context,
                decode_s_per_token,
                UNIT_SECONDS_PER_TOKEN,
                lowest=True,
                phrase="fastest (decode time per token at batch 1)",
                missing="a decode time at batch 1",
            )
        )
        choices.append(_throughput_choice(context))
    else:
        choices.append(_emulated_choice(LOWEST_LATENCY, UNIT_SECONDS_PER_TOKEN, emulated))
        choices.append(_emulated_choice(HIGHEST_THROUGHPUT, UNIT_TOKENS_PER_SECOND, emulated))

    size_front, size_ties = _front(ok, lambda v: _as_float(weights_bytes(v)), quality)
    speed_front, speed_ties = _front(ok, decode_s_per_token, quality) if speed_judged else ([], {})

    return Recommendation(
        constraints=constraints,
        budget=budget,
        quality_metric=quality_metric,
        verdicts=verdicts,
        choices=choices,
        pareto_size_quality=size_front,
        pareto_speed_quality=speed_front,
        pareto_size_ties=size_ties,
        pareto_speed_ties=speed_ties,
        tasks=tasks,
        speed_judged=speed_judged,
        summary=_summary(constraints, budget, context, choices, speed_judged, tasks),
    )


def describe_front(names: Sequence[str], ties: Mapping[str, Sequence[str]]) -> str:
    """A front as text, each tied variant marked with the variants it ties with."""
    parts = []
    for name in names:
        tied = ties.get(name)
        parts.append(f"{name} (tie with {', '.join(tied)})" if tied else name)
    return ", ".join(parts)


def _as_float(value: int | None) -> float | None:
    return float(value) if value is not None else None
