"""Statistics behaviour that mutation testing found unguarded (`benchmarks/mutation.py stats`).

Chunked and unchunked computation must agree (the chunk size is an internal memory bound,
shrunk here to force several chunks), defaults must be the documented ones, and each
validation names the argument at fault. Expected values are either hand-computed or the same
computation done another way (all at once, or with the documented defaults spelled out).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantbench import stats


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@pytest.fixture
def rows() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return _log_softmax(rng.normal(size=(7, 5))), _log_softmax(rng.normal(size=(7, 5)))


@pytest.mark.parametrize("renormalize", [False, True])
def test_kl_in_small_chunks_equals_kl_at_once(
    rows: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch, renormalize: bool
) -> None:
    base, variant = rows
    whole = stats.kl_divergence_per_token(base, variant, renormalize=renormalize)
    # Hand formula, token by token: sum_v P (log P - log Q).
    direct = (np.exp(base) * (base - variant)).sum(axis=1)
    np.testing.assert_allclose(whole, direct, rtol=1e-9, atol=1e-12)
    monkeypatch.setattr(stats, "_MAX_CHUNK_ELEMENTS", 12)  # 2 rows of 5 per chunk
    chunked = stats.kl_divergence_per_token(base, variant, renormalize=renormalize)
    np.testing.assert_allclose(chunked, whole, rtol=1e-9, atol=1e-12)
    assert chunked.dtype == np.float64 and chunked.shape == (7,)


def test_kl_topk_tail_in_small_chunks_equals_at_once(
    rows: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, variant = rows
    top_base, top_variant = base[:, :3], variant[:, :3]
    whole = stats.kl_topk_tail(top_base, top_variant)
    monkeypatch.setattr(stats, "_MAX_CHUNK_ELEMENTS", 4)  # 1 row of 3 per chunk
    chunked = stats.kl_topk_tail(top_base, top_variant)
    np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-15)
    assert chunked.dtype == np.float64 and chunked.shape == (7,)
    assert np.all(chunked >= 0.0)


def test_kl_topk_tail_where_the_variant_has_no_tail_left() -> None:
    # Base keeps 0.5 of its mass outside the top 1; the variant puts all of it on the top 1:
    # the tail term is P_tail log(P_tail / 0) = +inf, exactly as for a full distribution.
    base = np.log(np.array([[0.5]]))
    variant = np.log(np.array([[1.0]]))
    assert stats.kl_topk_tail(base, variant, tail_atol=0.0)[0] == math.inf
    # With a tail mass exactly at the tolerance, the base tail counts as empty: finite.
    assert math.isfinite(stats.kl_topk_tail(base, variant, tail_atol=0.5)[0])


def test_reference_prob_delta_refuses_nan_on_either_side() -> None:
    with pytest.raises(ValueError, match=r"^log-probabilities contain NaN$"):
        stats.reference_prob_delta([math.nan, -1.0], [-1.0, -1.0])
    with pytest.raises(ValueError, match=r"^log-probabilities contain NaN$"):
        stats.reference_prob_delta([-1.0, -1.0], [-1.0, math.nan])
    # exp(-1) - exp(-2), as float64 from integer-like input.
    got = stats.reference_prob_delta([-2], [-1])
    assert got.dtype == np.float64
    assert got[0] == pytest.approx(math.exp(-1) - math.exp(-2), rel=1e-15)


def test_pareto_front_refuses_what_is_not_pairs() -> None:
    with pytest.raises(ValueError, match=r"^points must be a sequence of \(x, y\) pairs, got "):
        stats.pareto_front([(1.0, 2.0, 3.0)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"^points must be a sequence of \(x, y\) pairs, got "):
        stats.pareto_front([1.0, 2.0])  # type: ignore[list-item]
    assert stats.pareto_front([(1, 2), (2, 1), (2, 2)]) == [0, 1]  # integers are fine


def test_mcnemar_names_the_bad_count() -> None:
    with pytest.raises(ValueError, match=r"^wrong_to_right must be a non-negative integer"):
        stats.mcnemar_exact_p(1, -2)
    with pytest.raises(ValueError, match=r"^right_to_wrong must be a non-negative integer"):
        stats.mcnemar_exact_p(True, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^wrong_to_right must be a non-negative integer"):
        stats.mcnemar_exact_p(1, 1.5)  # type: ignore[arg-type]
    # b = 0, c = 2: two-sided exact p = 2 * (1/2)^2 = 0.5.
    assert stats.mcnemar_exact_p(0, 2) == pytest.approx(0.5)


def test_ratio_bootstrap_accepts_denominators_below_one() -> None:
    low, high = stats.ratio_bootstrap_ci([0.2, 0.4, 0.3], [0.5, 0.5, 0.5], n_resamples=200)[1:]
    assert low <= 0.6 <= high  # the ratio of sums: 0.9 / 1.5


@pytest.mark.parametrize(
    ("name", "call", "spelled_out"),
    [
        (
            "bootstrap_ci",
            lambda: stats.bootstrap_ci([1.0, 2.0, 4.0, 8.0]),
            lambda: stats.bootstrap_ci([1.0, 2.0, 4.0, 8.0], n_resamples=2000, seed=0),
        ),
        (
            "paired_bootstrap_diff_ci",
            lambda: stats.paired_bootstrap_diff_ci([1.0, 3.0, 4.0], [1.0, 2.0, 2.5]),
            lambda: stats.paired_bootstrap_diff_ci(
                [1.0, 3.0, 4.0], [1.0, 2.0, 2.5], n_resamples=2000, seed=0
            ),
        ),
        (
            "ratio_bootstrap_ci",
            lambda: stats.ratio_bootstrap_ci([1.0, 3.0, 4.0], [1.0, 2.0, 2.5]),
            lambda: stats.ratio_bootstrap_ci(
                [1.0, 3.0, 4.0], [1.0, 2.0, 2.5], n_resamples=2000, seed=0
            ),
        ),
        (
            "perplexity_ci",
            lambda: stats.perplexity_ci([10.0, 30.0, 41.0], [10, 20, 25]),
            lambda: stats.perplexity_ci([10.0, 30.0, 41.0], [10, 20, 25], n_resamples=2000, seed=0),
        ),
        (
            "paired_window_ppl_diff_ci",
            lambda: stats.paired_window_ppl_diff_ci(
                [10.0, 31.0, 40.0], [9.0, 30.0, 41.0], [5, 9, 9]
            ),
            lambda: stats.paired_window_ppl_diff_ci(
                [10.0, 31.0, 40.0], [9.0, 30.0, 41.0], [5, 9, 9], n_resamples=2000, seed=0
            ),
        ),
    ],
)
def test_bootstrap_defaults_are_2000_resamples_and_seed_0(
    name: str, call: object, spelled_out: object
) -> None:
    """The defaults are part of every recorded result's provenance ("seeds": bootstrap 0)."""
    assert callable(call) and callable(spelled_out)
    assert call() == spelled_out(), name
    assert call() == call(), name  # seeded: the same interval every time


def test_paired_bootstrap_names_the_empty_baseline() -> None:
    with pytest.raises(ValueError, match=r"^baseline must not be empty$"):
        stats.paired_bootstrap_diff_ci([1.0], [])
    with pytest.raises(ValueError, match=r"^baseline contains NaN or infinite values$"):
        stats.paired_bootstrap_diff_ci([1.0], [math.nan])
    with pytest.raises(ValueError, match=r"^denominators contains NaN or infinite values$"):
        stats.ratio_bootstrap_ci([1.0], [math.inf])
