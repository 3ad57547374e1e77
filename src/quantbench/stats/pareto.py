"""A Pareto front that respects the uncertainty of the quality figure.

Each variant is a point: a cost measured without sampling error worth modelling (bytes on
disk, or a median decode time; lower is better) and a quality figure with its confidence
interval (mean KL or perplexity; lower is better). The classic front calls a variant dominated
as soon as another is no larger and has a better point estimate, which on a short evaluation
turns noise into verdicts. Here:

* variant b is **dominated** only when some variant a costs no more (``cost_a <= cost_b``) and
  a's whole quality interval lies below b's (``high_a < low_b``): the difference is outside
  the intervals;
* b is **tied** with a when a costs no more and their quality intervals overlap: b costs at
  least as much for a quality difference the study cannot tell from noise. A tied variant is
  not dominated (it stays on the front) and the reports say with which variants it is tied;
* otherwise b is on the front outright.

Separate intervals that do not overlap are a stricter criterion than a test of the difference
at the same level (two 95% intervals that just touch correspond to p ≈ 0.006 for equal
standard errors), so "dominated" errs towards keeping a variant in view. It needs only the
per-variant intervals a study saves. Pure functions; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["FrontStatus", "UncertainPoint", "uncertain_pareto_front"]


@dataclass(frozen=True)
class UncertainPoint:
    """Cost (lower is better, exact) and quality (lower is better) with its interval."""

    cost: float
    quality: float
    low: float
    high: float

    def __post_init__(self) -> None:
        values = (self.cost, self.quality, self.low, self.high)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"point figures must be finite, got {values}")
        if not self.low <= self.quality <= self.high:
            raise ValueError(
                f"quality {self.quality} must lie within its interval [{self.low}, {self.high}]"
            )


@dataclass(frozen=True)
class FrontStatus:
    """Where one point stands: `dominated_by` and `tied_with` hold indices of other points
    (`tied_with` lists only points that are themselves not dominated)."""

    status: Literal["front", "tie", "dominated"]
    dominated_by: tuple[int, ...] = ()
    tied_with: tuple[int, ...] = ()

    @property
    def on_front(self) -> bool:
        """Not dominated beyond the intervals (on the front outright or by a tie)."""
        return self.status != "dominated"


def _overlap(a: UncertainPoint, b: UncertainPoint) -> bool:
    return a.low <= b.high and b.low <= a.high


def uncertain_pareto_front(points: Sequence[UncertainPoint]) -> list[FrontStatus]:
    """The status of every point (input order) on the (cost, quality) front, both minimised.

    See the module docstring for the rules. Two points with identical figures are tied with
    each other; a point with a degenerate interval (low == high, e.g. the baseline's KL of 0
    against itself) is compared like any other.
    """
    n = len(points)
    dominated_by: list[tuple[int, ...]] = []
    for j, b in enumerate(points):
        dominated_by.append(
            tuple(i for i, a in enumerate(points) if i != j and a.cost <= b.cost and a.high < b.low)
        )
    statuses = []
    for j, b in enumerate(points):
        if dominated_by[j]:
            statuses.append(FrontStatus("dominated", dominated_by=dominated_by[j]))
            continue
        tied = tuple(
            i
            for i in range(n)
            if i != j
            and not dominated_by[i]
            and points[i].cost <= b.cost
            and _overlap(points[i], b)
        )
        statuses.append(FrontStatus("tie" if tied else "front", tied_with=tied))
    return statuses
