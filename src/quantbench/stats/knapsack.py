"""Budgeted mixed precision as a multiple-choice knapsack over measured per-group costs.

Each group of layers takes exactly one candidate format; candidate ``c`` of group ``g`` costs
``sizes[g, c]`` bytes and adds ``kls[g, c]`` nats per token of KL to the baseline (the
sensitivity screen's measurement, assumed additive over groups). Pure numpy, no I/O.

The dynamic programme is exact over sizes counted in ``unit`` bytes: each group's extra
bytes above its cheapest candidate are rounded *up* to whole units, so an allocation found
under a size budget never exceeds it; with ``unit=1`` (integer sizes) it is exact, and in
general it is at most ``groups × unit`` bytes from the exact optimum. The unit is chosen so
that the table has at most ``MAX_UNITS`` columns (a few seconds for hundreds of groups).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MAX_UNITS = 1 << 18


class BudgetUnreachable(ValueError):
    """No allocation meets the budget; the message gives the nearest reachable figure."""


@dataclass(frozen=True)
class Allocation:
    """One candidate index per group, the allocation's bytes (fixed bytes included) and
    its predicted KL (the sum of the chosen per-group KL increases, nats per token)."""

    choices: tuple[int, ...]
    size_bytes: int
    predicted_kl: float


def _checked(
    sizes: npt.ArrayLike, kls: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    size_table = np.asarray(sizes, dtype=np.int64)
    kl_table = np.asarray(kls, dtype=np.float64)
    if size_table.ndim != 2 or size_table.shape != kl_table.shape or 0 in size_table.shape:
        raise ValueError(
            f"sizes and kls must be non-empty tables of the same (groups, candidates) shape, "
            f"not {size_table.shape} and {kl_table.shape}"
        )
    if np.any(size_table < 0) or not np.all(np.isfinite(kl_table)):
        raise ValueError("sizes must be non-negative and KL increases finite")
    return size_table, kl_table


def allocation_of(
    choices: npt.ArrayLike, sizes: npt.ArrayLike, kls: npt.ArrayLike, fixed_bytes: int = 0
) -> Allocation:
    """The size and predicted KL of a given choice per group."""
    size_table, kl_table = _checked(sizes, kls)
    picked = np.asarray(choices, dtype=np.int64)
    rows = np.arange(size_table.shape[0])
    return Allocation(
        tuple(int(c) for c in picked),
        int(fixed_bytes + size_table[rows, picked].sum()),
        float(kl_table[rows, picked].sum()),
    )


@dataclass(frozen=True)
class _Table:
    """The dynamic programme's result: ``best[k]``, the least KL with at most ``k`` units
    of extra bytes, and each group's choice at every ``k`` for backtracking."""

    unit: int
    cheapest: npt.NDArray[np.int64]
    best: npt.NDArray[np.float64]
    choice: npt.NDArray[np.int8]
    extra_units: npt.NDArray[np.int64]


def _solve(
    size_table: npt.NDArray[np.int64], kl_table: npt.NDArray[np.float64], capacity: int
) -> _Table:
    """Least total KL for every extra-byte capacity up to ``capacity`` bytes."""
    groups, candidates = size_table.shape
    if candidates > 127:
        raise ValueError("at most 127 candidates per group")
    cheapest = size_table.min(axis=1)
    extra = size_table - cheapest[:, None]
    capacity = max(0, min(capacity, int(extra.max(axis=1).sum())))
    unit = max(1, math.ceil(capacity / MAX_UNITS))
    extra_units = -(-extra // unit)  # rounded up: a found allocation never exceeds the budget
    columns = capacity // unit + 1
    best = np.zeros(columns, dtype=np.float64)
    choice = np.zeros((groups, columns), dtype=np.int8)
    for g in range(groups):
        options = np.full((candidates, columns), np.inf)
        for c in range(candidates):
            shift = int(extra_units[g, c])
            if shift < columns:
                options[c, shift:] = best[: columns - shift] + kl_table[g, c]
        choice[g] = options.argmin(axis=0)
        best = options.min(axis=0)
    return _Table(unit, cheapest, best, choice, extra_units)


def _backtrack(table: _Table, column: int) -> list[int]:
    picks = []
    for g in range(table.choice.shape[0] - 1, -1, -1):
        c = int(table.choice[g, column])
        picks.append(c)
        column -= int(table.extra_units[g, c])
    return picks[::-1]


def least_kl_within_size(
    sizes: npt.ArrayLike, kls: npt.ArrayLike, fixed_bytes: int, budget_bytes: int
) -> Allocation:
    """The allocation of least predicted KL whose size (fixed bytes included) is at most
    ``budget_bytes``; BudgetUnreachable when even the cheapest candidate everywhere is over."""
    size_table, kl_table = _checked(sizes, kls)
    smallest = int(fixed_bytes + size_table.min(axis=1).sum())
    if budget_bytes < smallest:
        raise BudgetUnreachable(
            f"a size budget of {budget_bytes:,} bytes is below the smallest allocation "
            f"({smallest:,} bytes, the smallest candidate for every group)"
        )
    table = _solve(size_table, kl_table, budget_bytes - smallest)
    column = int(np.argmin(table.best))  # the first column reaching the least KL
    return allocation_of(_backtrack(table, column), size_table, kl_table, fixed_bytes)


def smallest_within_kl(
    sizes: npt.ArrayLike, kls: npt.ArrayLike, fixed_bytes: int, max_kl: float
) -> Allocation:
    """The smallest allocation whose predicted KL is at most ``max_kl`` nats per token;
    BudgetUnreachable when even the best candidate everywhere predicts more."""
    size_table, kl_table = _checked(sizes, kls)
    least = float(kl_table.min(axis=1).sum())
    if least > max_kl:
        raise BudgetUnreachable(
            f"a KL budget of {max_kl:.4g} nats/token is below the least predicted KL "
            f"({least:.4g}, the most accurate candidate for every group)"
        )
    table = _solve(size_table, kl_table, int(size_table.max(axis=1).sum()))
    tolerance = 1e-12 * max(1.0, abs(max_kl))
    column = int(np.flatnonzero(table.best <= max_kl + tolerance)[0])
    return allocation_of(_backtrack(table, column), size_table, kl_table, fixed_bytes)


def predicted_front(
    sizes: npt.ArrayLike, kls: npt.ArrayLike, fixed_bytes: int, points: int = 48
) -> list[Allocation]:
    """Up to ``points`` allocations along the predicted size-vs-KL Pareto front, from the
    smallest allocation to the most accurate, spread evenly over sizes (each the least-KL
    allocation within its size)."""
    size_table, kl_table = _checked(sizes, kls)
    table = _solve(size_table, kl_table, int(size_table.max(axis=1).sum()))
    improving = np.flatnonzero(np.diff(table.best, prepend=np.inf) < 0)
    if len(improving) > points:
        improving = improving[np.round(np.linspace(0, len(improving) - 1, points)).astype(int)]
    return [
        allocation_of(_backtrack(table, int(column)), size_table, kl_table, fixed_bytes)
        for column in improving
    ]
