"""Statistics that compare a quantized variant with its baseline on the same task items.

Pure functions of counts and numbers (no I/O, no records), each tested against golden values
computed independently. Units: accuracies and differences in **percentage points** (0–100),
recovery in **percent** of the baseline's accuracy, p-values as probabilities.

Right/wrong scores on the same items form a 2×2 table:

* ``both_right`` (a): items both models answered right;
* ``right_to_wrong`` (b): the baseline right, the variant wrong;
* ``wrong_to_right`` (c): the baseline wrong, the variant right;
* ``both_wrong`` (d).

Only b and c carry information about a difference; their sum is small on short task runs, and
a zero count is common (a variant that flips no item among 50). Intervals here stay honest in
that case: both the difference and the recovery use Bonett and Price's adjustment (one pseudo
item added to each discordant cell), so "no flips among 50 items" gives an interval about
±5 points wide, not the zero-width interval a plain (or bootstrap) estimate gives, which would
claim a certainty 50 items cannot give.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final, Literal

__all__ = [
    "INCONCLUSIVE",
    "INFERIOR",
    "NON_INFERIOR",
    "PairedCounts",
    "Verdict",
    "holm_adjust",
    "non_inferiority",
    "paired_difference_ci",
    "recovery_ci",
    "recovery_from_difference",
]

NON_INFERIOR: Final = "non-inferior"
INFERIOR: Final = "inferior"
INCONCLUSIVE: Final = "inconclusive: raise --limit"
Verdict = Literal["non-inferior", "inferior", "inconclusive: raise --limit"]


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


@dataclass(frozen=True)
class PairedCounts:
    """The 2×2 table of right/wrong outcomes of a variant and its baseline on the same items."""

    both_right: int
    right_to_wrong: int
    wrong_to_right: int
    both_wrong: int

    def __post_init__(self) -> None:
        for name in ("both_right", "right_to_wrong", "wrong_to_right", "both_wrong"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.n == 0:
            raise ValueError("the table holds no items")

    @property
    def n(self) -> int:
        return self.both_right + self.right_to_wrong + self.wrong_to_right + self.both_wrong

    @property
    def baseline_right(self) -> int:
        return self.both_right + self.right_to_wrong

    @property
    def variant_right(self) -> int:
        return self.both_right + self.wrong_to_right

    @classmethod
    def from_summary(
        cls, n: int, baseline_accuracy: float, right_to_wrong: int, wrong_to_right: int
    ) -> PairedCounts:
        """The table from what a task record keeps: items, the baseline's accuracy (fraction
        0–1) and the flips each way. The baseline's right count is rounded from its accuracy,
        which is exact for right/wrong scores (accuracy = right / n)."""
        base_right = round(baseline_accuracy * n)
        both_right = base_right - right_to_wrong
        both_wrong = n - base_right - wrong_to_right
        if both_right < 0 or both_wrong < 0:
            raise ValueError(
                f"{right_to_wrong} right→wrong and {wrong_to_right} wrong→right flips do not fit "
                f"{n} items with baseline accuracy {baseline_accuracy}"
            )
        return cls(both_right, right_to_wrong, wrong_to_right, both_wrong)


def paired_difference_ci(
    counts: PairedCounts, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Variant minus baseline accuracy on paired right/wrong items, percentage points.

    Returns ``(estimate, low, high)``: the observed difference ``(c - b) / n`` and Bonett and
    Price's adjusted Wald interval (J. Educ. Behav. Stat. 37(4), 2012): with
    ``p12 = (b + 1) / (n + 2)`` and ``p21 = (c + 1) / (n + 2)``,

    ``p21 - p12 ± z · sqrt((p12 + p21 - (p21 - p12)²) / (n + 2))``, clipped to [-1, 1].

    Unlike the plain Wald interval it keeps its coverage near 95% for small n and zero flips.
    """
    z = _z(confidence)
    n = counts.n
    b, c = counts.right_to_wrong, counts.wrong_to_right
    estimate = (c - b) / n
    p12 = (b + 1) / (n + 2)
    p21 = (c + 1) / (n + 2)
    centre = p21 - p12
    half = z * math.sqrt((p12 + p21 - centre * centre) / (n + 2))
    low, high = max(-1.0, centre - half), min(1.0, centre + half)
    return 100.0 * estimate, 100.0 * low, 100.0 * high


def recovery_ci(
    counts: PairedCounts, confidence: float = 0.95
) -> tuple[float, float, float] | None:
    """Recovery: the variant's accuracy as a percentage of the baseline's, with its interval.

    ``R = (a + c) / (a + b)`` on the same items. The interval is the delta method on log R for
    paired proportions, ``Var(log R) = (b + c) / ((a + b) (a + c))`` (the multinomial
    covariance of the two accuracies taken into account), evaluated on the Bonett–Price
    adjusted flip counts ``b + 1`` and ``c + 1`` so that it keeps its width when nothing
    flipped, and mapped back with exp. The estimate itself is the observed ratio.

    Returns ``(estimate, low, high)`` in percent, or None when the baseline answered no item
    right (recovery undefined). When the variant answered none right the estimate is 0 and the
    interval is computed from the adjusted counts.
    """
    z = _z(confidence)
    a, b, c = counts.both_right, counts.right_to_wrong, counts.wrong_to_right
    if a + b == 0:
        return None
    estimate = (a + c) / (a + b)
    b1, c1 = b + 1, c + 1
    log_ratio = math.log((a + c1) / (a + b1))
    se = math.sqrt((b1 + c1) / ((a + b1) * (a + c1)))
    low, high = math.exp(log_ratio - z * se), math.exp(log_ratio + z * se)
    return 100.0 * estimate, 100.0 * low, 100.0 * high


def recovery_from_difference(
    baseline_points: float, difference: tuple[float, float, float]
) -> tuple[float, float, float] | None:
    """Recovery in percent for graded (not right/wrong) scores, from the paired difference.

    ``R = 1 + d / base``: the paired difference ``d`` (points, with its interval, e.g. a
    paired bootstrap over items) divided by the baseline's mean score (points). The baseline's
    own sampling error is not propagated (it is held fixed), which the paired difference's
    interval mostly absorbs; reports mark these figures as approximate. None when the
    baseline's score is 0.
    """
    if baseline_points <= 0 or not math.isfinite(baseline_points):
        return None
    estimate, low, high = difference

    def percent(points: float) -> float:
        return 100.0 * (1.0 + points / baseline_points)

    return percent(estimate), percent(low), percent(high)


def non_inferiority(low: float, high: float, margin: float) -> Verdict:
    """Is the variant no more than ``margin`` points worse than the baseline on a task?

    ``(low, high)`` is the two-sided 95% interval of variant minus baseline, in points, so
    each verdict is a one-sided test at 2.5%:

    * "non-inferior" when ``low > -margin`` (the interval rules out a larger drop);
    * "inferior" when ``high < -margin`` (the interval rules out a drop within the margin);
    * otherwise "inconclusive: raise --limit" (more items narrow the interval).

    Declaring a variant non-inferior on *every* task needs no multiplicity adjustment (an
    intersection–union test: each task must pass at its own level).
    """
    if not margin >= 0 or not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    if not low <= high:
        raise ValueError(f"interval must have low <= high, got ({low}, {high})")
    if low > -margin:
        return NON_INFERIOR
    if high < -margin:
        return INFERIOR
    return INCONCLUSIVE


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order.

    Sort the m p-values ascending, multiply the i-th smallest (1-based) by ``m - i + 1``, carry
    the running maximum forward and cap at 1. Rejecting every hypothesis whose adjusted p is
    below α controls the family-wise error rate at α under any dependence between the tests,
    which matters here: a study's tasks × variants share the baseline's answers.
    Ties keep their input order. An empty input gives an empty list.

    Raises:
        ValueError: on a p-value outside [0, 1] or NaN.
    """
    values = [float(p) for p in p_values]
    for p in values:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-values must be in [0, 1], got {p!r}")
    m = len(values)
    order = sorted(range(m), key=lambda i: values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * values[index]))
        adjusted[index] = running
    return adjusted
