"""The budgeted allocation against brute force over every allocation of small tables."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from quantbench.stats.knapsack import (
    BudgetUnreachable,
    allocation_of,
    least_kl_within_size,
    predicted_front,
    smallest_within_kl,
)


def _every_allocation(sizes, kls, fixed):
    groups, candidates = np.shape(sizes)
    for choices in itertools.product(range(candidates), repeat=groups):
        yield allocation_of(choices, sizes, kls, fixed)


def _table(rng, groups, candidates):
    sizes = rng.integers(1, 40, size=(groups, candidates))
    kls = rng.random((groups, candidates)).round(4)
    return sizes, kls


@pytest.mark.parametrize("seed", range(12))
def test_least_kl_within_a_size_budget_is_brute_forces_optimum(seed):
    rng = np.random.default_rng(seed)
    sizes, kls = _table(rng, groups=int(rng.integers(1, 7)), candidates=int(rng.integers(1, 4)))
    fixed = int(rng.integers(0, 100))
    every = list(_every_allocation(sizes, kls, fixed))
    lo, hi = min(a.size_bytes for a in every), max(a.size_bytes for a in every)
    for budget in np.linspace(lo, hi + 5, 7).astype(int):
        found = least_kl_within_size(sizes, kls, fixed, int(budget))
        feasible = [a for a in every if a.size_bytes <= budget]
        assert found.size_bytes <= budget
        assert found.predicted_kl == pytest.approx(min(a.predicted_kl for a in feasible), abs=1e-12)
        assert found == allocation_of(found.choices, sizes, kls, fixed)


@pytest.mark.parametrize("seed", range(12))
def test_smallest_within_a_kl_budget_is_brute_forces_optimum(seed):
    rng = np.random.default_rng(100 + seed)
    sizes, kls = _table(rng, groups=int(rng.integers(1, 7)), candidates=int(rng.integers(2, 4)))
    every = list(_every_allocation(sizes, kls, 7))
    for max_kl in sorted({a.predicted_kl for a in every})[:: max(1, len(every) // 6)]:
        found = smallest_within_kl(sizes, kls, 7, max_kl)
        feasible = [a for a in every if a.predicted_kl <= max_kl + 1e-12]
        assert found.predicted_kl <= max_kl + 1e-12
        assert found.size_bytes == min(a.size_bytes for a in feasible)


def test_the_front_is_the_brute_force_pareto_front():
    rng = np.random.default_rng(7)
    sizes, kls = _table(rng, groups=5, candidates=3)
    every = list(_every_allocation(sizes, kls, 0))
    front = predicted_front(sizes, kls, 0, points=10_000)
    expected = sorted(
        {
            (a.size_bytes, round(a.predicted_kl, 12))
            for a in every
            if not any(
                (b.size_bytes <= a.size_bytes and b.predicted_kl < a.predicted_kl - 1e-12)
                or (b.size_bytes < a.size_bytes and b.predicted_kl <= a.predicted_kl + 1e-12)
                for b in every
            )
        }
    )
    assert [(a.size_bytes, round(a.predicted_kl, 12)) for a in front] == expected
    assert len(predicted_front(sizes, kls, 0, points=3)) == 3


def test_coarse_units_never_exceed_the_size_budget():
    rng = np.random.default_rng(3)
    sizes = rng.integers(1_000_000, 9_000_000, size=(200, 2))
    kls = rng.random((200, 2))
    budget = int(sizes.min(axis=1).sum() + 0.4 * (sizes.max(axis=1) - sizes.min(axis=1)).sum())
    found = least_kl_within_size(sizes, kls, 0, budget)
    assert found.size_bytes <= budget
    # the greedy exchange bound: the programme is at least as good as taking the cheapest
    assert found.predicted_kl <= allocation_of(sizes.argmin(axis=1), sizes, kls).predicted_kl


def test_budgets_that_cannot_be_met_say_what_can():
    sizes = [[10, 20], [10, 20]]
    kls = [[0.5, 0.1], [0.4, 0.2]]
    with pytest.raises(BudgetUnreachable, match=r"below the smallest allocation \(25 bytes"):
        least_kl_within_size(sizes, kls, 5, 24)
    with pytest.raises(BudgetUnreachable, match=r"below the least predicted KL \(0\.3,"):
        smallest_within_kl(sizes, kls, 5, 0.29)
    with pytest.raises(ValueError, match="same"):
        least_kl_within_size([[1, 2]], [[0.1]], 0, 10)
