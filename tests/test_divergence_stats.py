"""Golden values for the llama.cpp divergence statistics of quantbench.stats.divergence.

Every expected value is computed here by another route: hand arithmetic, scipy, explicit
Python loops over the bootstrap draws, written-out linear interpolation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats

from quantbench.stats import kl_divergence_per_token
from quantbench.stats.divergence import (
    DELTA_P_PERCENTILES,
    KLD_PERCENTILES,
    distribution_summary,
    ln_ppl_ratio_ci,
    pearson_correlation,
    ppl_ratio_ci,
    window_mean_ci,
    window_rms_ci,
)


def _loop_bootstrap(
    window_values: list[list[float]], reduce: str, seed: int, n_resamples: int = 2000
) -> tuple[float, float]:
    """The percentile interval of a window bootstrap, one draw at a time in plain Python.

    Draws come from numpy's generator with the seed quantbench documents (one row of
    `n_windows` indices per resample), reduced here by explicit loops.
    """
    rng = np.random.default_rng(seed)
    n = len(window_values)
    draws = rng.integers(0, n, size=(n_resamples, n), dtype=np.intp)
    replicates = []
    for row in draws:
        picked = [v for i in row for v in window_values[int(i)]]
        mean = sum(picked) / len(picked)
        replicates.append(math.sqrt(mean) if reduce == "sqrt" else mean)
    ordered = sorted(replicates)

    def quantile(q: float) -> float:
        rank = q * (len(ordered) - 1)
        low = math.floor(rank)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (rank - low) * (ordered[high] - ordered[low])

    return quantile(0.025), quantile(0.975)


WINDOWS = [[0.1, 0.5, 0.0], [1.0, 2.0], [0.25], [0.0, 0.0, 0.3, 0.9]]


def _flat(windows: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    values = np.array([v for w in windows for v in w])
    index = np.array([i for i, w in enumerate(windows) for _ in w], dtype=np.int32)
    return values, index


def test_window_mean_is_the_token_mean_with_a_window_bootstrap() -> None:
    values, index = _flat(WINDOWS)
    estimate, low, high = window_mean_ci(values, index, seed=3)
    assert estimate == pytest.approx(5.05 / 10, abs=1e-15)  # 10 tokens summing to 5.05
    expected_low, expected_high = _loop_bootstrap(WINDOWS, "mean", seed=3)
    assert (low, high) == pytest.approx((expected_low, expected_high), abs=1e-12)
    assert low <= estimate <= high


def test_window_mean_ignores_window_numbers_without_tokens() -> None:
    values = np.array([1.0, 3.0, 5.0])
    index = np.array([0, 0, 4])  # windows 1-3 hold no scored token
    estimate, low, high = window_mean_ci(values, index, seed=0)
    assert estimate == pytest.approx(3.0)
    expected = _loop_bootstrap([[1.0, 3.0], [5.0]], "mean", seed=0)
    assert (low, high) == pytest.approx(expected, abs=1e-12)


def test_window_mean_rejects_bad_window_indices() -> None:
    with pytest.raises(ValueError, match="window_index"):
        window_mean_ci([1.0, 2.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="window_index"):
        window_mean_ci([1.0, 2.0], [0])
    with pytest.raises(ValueError, match="negative"):
        window_mean_ci([1.0, 2.0], [0, -1])


def test_rms_of_delta_p_by_hand() -> None:
    windows = [[0.1, -0.2], [0.3], [-0.4, 0.0, 0.05]]
    values, index = _flat(windows)
    estimate, low, high = window_rms_ci(values, index, seed=1)
    by_hand = math.sqrt((0.01 + 0.04 + 0.09 + 0.16 + 0.0 + 0.0025) / 6)
    assert estimate == pytest.approx(by_hand, rel=1e-14)
    squared = [[v * v for v in w] for w in windows]
    assert (low, high) == pytest.approx(_loop_bootstrap(squared, "sqrt", seed=1), abs=1e-12)


def test_ln_ppl_ratio_and_ppl_ratio_by_hand() -> None:
    variant = [12.0, 30.0, 7.5]  # NLL sums, nats
    baseline = [10.0, 29.0, 7.0]
    counts = [4, 10, 3]
    estimate, low, high = ln_ppl_ratio_ci(variant, baseline, counts, seed=5)
    assert estimate == pytest.approx((49.5 - 46.0) / 17, rel=1e-14)
    # The same statistic as an explicit paired loop over window draws.
    rng = np.random.default_rng(5)
    draws = rng.integers(0, 3, size=(2000, 3), dtype=np.intp)
    replicates = sorted(
        sum(variant[i] - baseline[i] for i in row) / sum(counts[i] for i in row) for row in draws
    )
    expected_low = np.quantile(replicates, 0.025)
    expected_high = np.quantile(replicates, 0.975)
    assert (low, high) == pytest.approx((expected_low, expected_high), abs=1e-12)
    ratio, ratio_low, ratio_high = ppl_ratio_ci(variant, baseline, counts, seed=5)
    ppl_variant = math.exp(49.5 / 17)
    ppl_baseline = math.exp(46.0 / 17)
    assert ratio == pytest.approx(ppl_variant / ppl_baseline, rel=1e-12)
    assert (ratio_low, ratio_high) == pytest.approx(
        (math.exp(expected_low), math.exp(expected_high)), rel=1e-12
    )


def test_ln_ppl_ratio_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        ln_ppl_ratio_ci([1.0, 2.0], [1.0], [1, 1])


def test_pearson_correlation_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = 0.7 * x + rng.normal(scale=0.5, size=200)
    expected = scipy.stats.pearsonr(x, y).statistic
    assert pearson_correlation(x, y) == pytest.approx(expected, abs=1e-12)
    assert pearson_correlation([1.0, 2.0, 3.0], [3.0, 1.0, -1.0]) == pytest.approx(-1.0)


def test_pearson_correlation_edge_cases() -> None:
    assert math.isnan(pearson_correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="at least two"):
        pearson_correlation([1.0], [2.0])
    with pytest.raises(ValueError, match="length mismatch"):
        pearson_correlation([1.0, 2.0], [2.0, 3.0, 4.0])


def _linear_percentile(values: list[float], q: float) -> float:
    """Type-7 interpolation written out: rank q/100 * (n - 1) in the sorted sample."""
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


def test_kld_summary_has_llama_cpp_percentiles_min_and_max() -> None:
    rng = np.random.default_rng(2)
    kl = list(rng.exponential(0.05, size=1001))
    summary = distribution_summary(kl, KLD_PERCENTILES)
    assert list(summary) == [
        "p99.9",
        "p99",
        "p95",
        "p90",
        "p50",
        "p10",
        "p5",
        "p1",
        "p0.1",
        "min",
        "max",
    ]
    for q in KLD_PERCENTILES:
        assert summary[f"p{q:g}"] == pytest.approx(_linear_percentile(kl, q), rel=1e-13)
    assert summary["min"] == min(kl)
    assert summary["max"] == max(kl)


def test_delta_p_summary_by_hand() -> None:
    delta = [-0.5, -0.1, 0.0, 0.0, 0.2, 0.9]
    summary = distribution_summary(delta, DELTA_P_PERCENTILES)
    assert set(summary) == {f"p{q:g}" for q in DELTA_P_PERCENTILES} | {"min", "max"}
    # Median of six values: halfway between the third and fourth (0.0 and 0.0).
    assert summary["p50"] == 0.0
    # 75th: rank 3.75 -> 0.0 + 0.75 * (0.2 - 0.0)
    assert summary["p75"] == pytest.approx(0.15)
    # 25th: rank 1.25 -> -0.1 + 0.25 * (0.0 - -0.1)
    assert summary["p25"] == pytest.approx(-0.075)
    # 99.9th: rank 4.995 -> 0.2 + 0.995 * 0.7
    assert summary["p99.9"] == pytest.approx(0.2 + 0.995 * 0.7)
    assert (summary["min"], summary["max"]) == (-0.5, 0.9)


def test_renormalized_kl_removes_each_rows_constant_offset() -> None:
    """A float32 log-softmax is right only up to its row's log-sum-exp rounding; with
    `renormalize` the KL is that of the normalised rows, as scipy computes it."""
    rng = np.random.default_rng(7)
    base_logits = rng.normal(size=(6, 50)) * 3
    variant_logits = base_logits + rng.normal(scale=0.01, size=(6, 50))
    p = scipy.special.softmax(base_logits, axis=1)
    q = scipy.special.softmax(variant_logits, axis=1)
    expected = scipy.special.rel_entr(p, q).sum(axis=1)
    offsets = rng.normal(scale=1e-3, size=(6, 1))  # unnormalised rows, as after rounding
    base = np.log(p) + offsets
    variant = np.log(q) - 2 * offsets
    got = kl_divergence_per_token(base, variant, renormalize=True)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-15)
    plain = kl_divergence_per_token(base, variant)
    assert not np.allclose(plain, expected, rtol=1e-3)  # the offsets dominate a small KL
    same = kl_divergence_per_token(np.log(p), np.log(q), renormalize=True)
    assert same == pytest.approx(kl_divergence_per_token(np.log(p), np.log(q)), rel=1e-12)


def _log(values: list[list[float]], dtype: type = np.float64) -> np.ndarray:
    """Natural logs, log(0) = -inf without numpy's warning."""
    with np.errstate(divide="ignore"):
        return np.log(np.array(values, dtype=dtype))


def test_renormalized_kl_keeps_zero_probability_conventions() -> None:
    base = _log([[0.5, 0.5, 0.0]])
    variant = _log([[0.25, 0.25, 0.5]])
    # Only the first two entries count: 0.5 ln 2 + 0.5 ln 2 = ln 2.
    got = kl_divergence_per_token(base, variant, renormalize=True)
    assert got == pytest.approx([math.log(2)], rel=1e-14)


def test_renormalized_kl_of_float32_rows_keeps_a_tiny_kl_accurate() -> None:
    """float32 log-softmax rows of a near-identical pair (KL ~1e-5 nats): the float32 fast
    route agrees with scipy's float64 KL of the same rows, normalised, to 1e-4 relative
    (the bar the exact divergence is held to)."""
    rng = np.random.default_rng(11)
    base_logits = rng.normal(size=(64, 4000)) * 4
    variant_logits = base_logits + rng.normal(scale=0.004, size=base_logits.shape)
    base32 = scipy.special.log_softmax(base_logits, axis=1).astype(np.float32)
    variant32 = scipy.special.log_softmax(variant_logits, axis=1).astype(np.float32)
    p = scipy.special.softmax(base32.astype(np.float64), axis=1)
    q = scipy.special.softmax(variant32.astype(np.float64), axis=1)
    expected = scipy.special.rel_entr(p, q).sum(axis=1)
    got = kl_divergence_per_token(base32, variant32, renormalize=True)
    assert 1e-6 < expected.mean() < 1e-4
    assert got.mean() == pytest.approx(expected.mean(), rel=1e-4)
    assert got == pytest.approx(expected, rel=1e-3, abs=1e-9)


def test_renormalized_kl_handles_infinities_and_rejects_nan() -> None:
    base = _log([[0.5, 0.5, 0.0], [0.9, 0.1, 0.0]], np.float32)
    variant = _log([[0.25, 0.25, 0.5], [1.0, 0.0, 0.0]], np.float32)
    got = kl_divergence_per_token(base, variant, renormalize=True)
    assert got[0] == pytest.approx(math.log(2), rel=1e-6)
    assert got[1] == math.inf  # the variant gives 0 to a token the base gives 0.1
    with pytest.raises(ValueError, match="NaN"):
        kl_divergence_per_token(
            np.array([[0.0, np.nan]], dtype=np.float32),
            np.array([[0.0, -1.0]], dtype=np.float32),
            renormalize=True,
        )
