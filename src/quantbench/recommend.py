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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from quantbench.report.headline import MIB, find_baseline, format_number, weights_bytes
from quantbench.results import (
    Constraints,
    ObjectiveChoice,
    Recommendation,
    SpeedPoint,
    StudyResults,
    VariantResult,
    VariantVerdict,
)
from quantbench.stats import pareto_front

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


def describe_constraints(constraints: Constraints) -> str:
    """The constraints that are set, as one phrase; "" when none is set."""
    parts = []
    if constraints.max_kl is not None:
        parts.append(f"max KL {_limit(constraints.max_kl)} nats/token")
    if constraints.max_ppl_increase_pct is not None:
        parts.append(f"max perplexity increase {_limit(constraints.max_ppl_increase_pct)}%")
    if constraints.max_accuracy_drop is not None:
        parts.append(f"max accuracy drop {_limit(constraints.max_accuracy_drop)} points")
    return ", ".join(parts)


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
    variant: VariantResult, baseline: VariantResult | None, constraints: Constraints
) -> VariantVerdict:
    """Whether `variant` meets every constraint that is set; unknown counts as not met."""
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
    return VariantVerdict(
        variant=variant.name, acceptable=not broken and not unknown, broken=broken, unknown=unknown
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
# Objectives
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    acceptable: list[VariantResult]
    verdicts: list[VariantVerdict]
    only_baseline: bool
    baseline: VariantResult | None


def _pick(
    objective: Objective,
    context: _Context,
    figure: Callable[[VariantResult], float | None],
    unit: str,
    lowest: bool,
    phrase: str,
    missing: str,
) -> ObjectiveChoice:
    """The best acceptable variant by `figure` (ties go to the first in study order)."""
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
    best = (min if lowest else max)(with_figure, key=lambda pair: pair[1])
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


def _front(
    variants: Sequence[VariantResult],
    x: Callable[[VariantResult], float | None],
    quality: Callable[[VariantResult], float | None],
) -> list[str]:
    """Names (study order) of the variants on the (x, quality) front, both minimised."""
    named: list[str] = []
    points: list[tuple[float, float]] = []
    for variant in variants:
        a, b = x(variant), quality(variant)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            named.append(variant.name)
            points.append((float(a), float(b)))
    return [named[i] for i in pareto_front(points, minimize=(True, True))]


def _quality(
    ok: Sequence[VariantResult], results: StudyResults
) -> tuple[str, Callable[[VariantResult], float | None]]:
    """Mean KL (against each variant's own baseline) when every ok variant has one (a
    baseline's is 0), else perplexity."""

    def kl(v: VariantResult) -> float | None:
        return kl_mean(v, find_baseline(results, v))

    if ok and all(_finite(kl(v)) for v in ok):
        return "kl_mean", kl
    return "perplexity", _ppl_estimate


# --------------------------------------------------------------------------------------
# The recommendation
# --------------------------------------------------------------------------------------


def _summary(
    constraints: Constraints,
    context: _Context,
    choices: Sequence[ObjectiveChoice],
    speed_judged: bool,
) -> str:
    described = describe_constraints(constraints)
    if not described:
        lead = "No constraints set, so every ok variant is acceptable"
    else:
        lead = f"Under {described}"
    if not context.acceptable:
        rejected = "; ".join(_why_not(v) for v in context.verdicts if not v.acceptable)
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
        rejected = "; ".join(_why_not(v) for v in context.verdicts if not v.acceptable)
        names = ", ".join(v.name for v in context.acceptable)
        kind = "the baseline" if len(context.acceptable) == 1 else "the baselines"
        verb = "is" if len(context.acceptable) == 1 else "are"
        text = f"{lead}, only {kind} ({names}) {verb} acceptable"
        text += f": {rejected}." if rejected else " (it is the only variant)."
        if not speed_judged:
            text += " Speed cannot be judged here (emulated)."
        return text
    return f"{lead}: " + "; ".join(picks) + "."


def recommend(results: StudyResults, constraints: Constraints) -> Recommendation:
    """Judge every variant against `constraints` and pick the best acceptable one per objective.

    Pure: reads only the saved records. Unknown (a constraint whose metric is missing) counts
    as not acceptable. Speed objectives are not judged when any ok variant's speed is emulated.
    """
    baseline = find_baseline(results)
    verdicts = [verdict(v, find_baseline(results, v), constraints) for v in results.variants]
    acceptable = [
        v for v, judged in zip(results.variants, verdicts, strict=True) if judged.acceptable
    ]
    only_baseline = bool(acceptable) and all(
        v is find_baseline(results, v) for v in acceptable
    )  # several in merged results: each model's own
    context = _Context(acceptable, verdicts, only_baseline, baseline)

    ok = [v for v in results.variants if v.status == "ok"]
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

    quality_metric, quality = _quality(ok, results)
    size_front = _front(ok, lambda v: _as_float(weights_bytes(v)), quality)
    speed_front = _front(ok, decode_s_per_token, quality) if speed_judged else []

    return Recommendation(
        constraints=constraints,
        quality_metric=quality_metric,
        verdicts=verdicts,
        choices=choices,
        pareto_size_quality=size_front,
        pareto_speed_quality=speed_front,
        speed_judged=speed_judged,
        summary=_summary(constraints, context, choices, speed_judged),
    )


def _as_float(value: int | None) -> float | None:
    return float(value) if value is not None else None
