"""Statistics behaviour that mutation testing found unguarded (`benchmarks/mutation.py stats`).

Chunked and unchunked computation must agree (the chunk size is an internal memory bound,
shrunk here to force several chunks), defaults must be the documented ones, and each
validation names the argument at fault. Expected values are either hand-computed or the same
computation done another way (all at once, or with the documented defaults spelled out).
"""

from __future__ import annotations

import itertools
import math
from statistics import NormalDist

import numpy as np
import pytest

from quantbench import stats
from quantbench.stats import divergence as stats_divergence
from quantbench.stats import intervals as stats_intervals


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


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
    monkeypatch.setattr(stats_divergence, "_MAX_CHUNK_ELEMENTS", 12)  # 2 rows of 5 per chunk
    chunked = stats.kl_divergence_per_token(base, variant, renormalize=renormalize)
    np.testing.assert_allclose(chunked, whole, rtol=1e-9, atol=1e-12)
    assert chunked.dtype == np.float64 and chunked.shape == (7,)


def test_kl_topk_tail_in_small_chunks_equals_at_once(
    rows: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, variant = rows
    top_base, top_variant = base[:, :3], variant[:, :3]
    whole = stats.kl_topk_tail(top_base, top_variant)
    monkeypatch.setattr(stats_divergence, "_MAX_CHUNK_ELEMENTS", 4)  # 1 row of 3 per chunk
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


def test_mcnemar_names_the_bad_count() -> None:
    with pytest.raises(ValueError, match=r"^wrong_to_right must be a non-negative integer"):
        stats.mcnemar_exact_p(1, -2)
    with pytest.raises(ValueError, match=r"^right_to_wrong must be a non-negative integer"):
        stats.mcnemar_exact_p(True, 1)
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


# --------------------------------------------------------------------------------------
# Second round of survivors, grouped by the function they pin.
# --------------------------------------------------------------------------------------


def _reference_interval(
    values: np.ndarray, confidence: float, n_resamples: int, seed: int
) -> tuple[float, float]:
    """The bootstrap of the mean spelled out: one (n_resamples, n) draw, equal-tailed quantiles."""
    idx = np.random.default_rng(seed).integers(0, values.size, size=(n_resamples, values.size))
    reps = values[idx].mean(axis=1)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(reps, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


# _as_1d_finite ------------------------------------------------------------------------


def test_inputs_are_converted_to_float64_before_any_arithmetic() -> None:
    """float32 samples are summed in float64: 1e8 + 1 - 1e8 keeps its 1 (float32 loses it)."""
    s = stats.spread(np.array([1e8, 1.0, -1e8], dtype=np.float32))
    assert s.mean == 1.0 / 3.0
    assert stats.percentiles(np.array([1, 2], dtype=np.int8), [50]) == {"p50": 1.5}


def test_two_dimensional_values_are_refused_with_their_shape() -> None:
    """A 2-D sample is refused by name, with its shape."""
    with pytest.raises(ValueError, match=r"^values must be 1-D, got shape \(2, 2\)$"):
        stats.percentiles([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match=r"^samples must be 1-D, got shape \(1, 3\)$"):
        stats.spread([[1.0, 2.0, 3.0]])


# _check_n_resamples -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [True, False, 0, -3, 1.5])
def test_n_resamples_must_be_a_positive_integer(bad: object) -> None:
    """Booleans, zero, negatives and fractions are refused, each named in the message."""
    with pytest.raises(ValueError, match=rf"^n_resamples must be a positive integer, got {bad!r}$"):
        stats.bootstrap_ci([1.0, 2.0, 3.0], n_resamples=bad)  # type: ignore[arg-type]


def test_a_single_resample_is_allowed() -> None:
    """n_resamples=1 is valid: the interval collapses onto that one replicate."""
    values = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    low, high = stats.bootstrap_ci(values, n_resamples=1, seed=3)
    idx = np.random.default_rng(3).integers(0, 5, size=5)
    assert low == high == pytest.approx(values[idx].mean(), rel=1e-15)


# _apply_statistic ---------------------------------------------------------------------


def test_statistic_is_called_once_vectorised_with_axis_minus_one() -> None:
    """The documented contract: one call statistic(x, axis=-1) on the (n_resamples, n) array."""
    calls: list[tuple[tuple[int, ...], object]] = []

    def mean(x: np.ndarray, axis: object = None) -> object:
        calls.append((np.shape(x), axis))
        return np.mean(x, axis=axis)  # type: ignore[call-overload]

    values = np.array([0.5, 1.5, 2.0, 7.0, 3.25])
    got = stats.bootstrap_ci(values, mean, confidence=0.8, n_resamples=7, seed=2)
    assert calls == [((7, 5), -1)]
    assert got == pytest.approx(_reference_interval(values, 0.8, 7, 2), rel=1e-14)


def test_statistic_without_axis_or_ignoring_it_is_called_per_resample() -> None:
    """Without ``axis`` (TypeError) or with one value for all rows, each row is reduced alone."""
    values = np.array([0.5, 1.5, 2.0, 7.0, 3.25])
    expected = _reference_interval(values, 0.9, 6, 1)
    rows: list[tuple[int, ...]] = []

    def plain(x: np.ndarray) -> float:
        rows.append(np.shape(x))
        return float(np.mean(x))

    def ignores_axis(x: np.ndarray, axis: int = 0) -> float:
        return float(np.mean(x))  # one number whatever axis says

    assert stats.bootstrap_ci(values, plain, confidence=0.9, n_resamples=6, seed=1) == (
        pytest.approx(expected, rel=1e-14)
    )
    assert rows == [(5,)] * 6
    assert stats.bootstrap_ci(values, ignores_axis, confidence=0.9, n_resamples=6, seed=1) == (
        pytest.approx(expected, rel=1e-14)
    )


def test_vectorised_float32_statistic_results_are_used_as_float64() -> None:
    """A statistic returning float32 gives the interval of those values taken as float64:
    paired differences and quantile interpolation are not done in float32."""

    def sum32(x: np.ndarray, axis: int | None = None) -> np.ndarray:
        return np.asarray(np.sum(x, axis=axis), dtype=np.float32)

    def sum32_as64(x: np.ndarray, axis: int | None = None) -> np.ndarray:
        return sum32(x, axis=axis).astype(np.float64)

    rng = np.random.default_rng(5)
    variant = 1e8 + rng.normal(size=12) * 1e3
    baseline = 1.0 + rng.normal(size=12)
    kw = {"n_resamples": 300, "seed": 4}
    assert stats.paired_bootstrap_diff_ci(variant, baseline, sum32, **kw) == (
        stats.paired_bootstrap_diff_ci(variant, baseline, sum32_as64, **kw)
    )
    assert stats.bootstrap_ci(baseline, sum32, **kw) == stats.bootstrap_ci(
        baseline, sum32_as64, **kw
    )


# _resample_indices --------------------------------------------------------------------


def test_resample_indices_come_in_bounded_chunks_that_add_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chunks hold at most _MAX_CHUNK_ELEMENTS // n_units rows (at least 1) and exactly
    n_resamples rows in all; the stream is the same as one draw of all rows."""
    monkeypatch.setattr(stats_intervals, "_MAX_CHUNK_ELEMENTS", 10)
    rng = np.random.default_rng(0)
    chunks = list(itertools.islice(stats_intervals._resample_indices(rng, 3, 5), 50))
    assert [c.shape for c in chunks] == [(3, 3), (2, 3)]  # 10 // 3 = 3 rows per chunk
    assert all(c.dtype == np.intp for c in chunks)
    whole = np.random.default_rng(0).integers(0, 3, size=(5, 3))
    np.testing.assert_array_equal(np.concatenate(chunks), whole)
    # 10 // 6 = 1 row per chunk.
    chunks = list(
        itertools.islice(stats_intervals._resample_indices(np.random.default_rng(0), 6, 3), 50)
    )
    assert [c.shape for c in chunks] == [(1, 6)] * 3
    # More units than the bound: still one row at a time.
    chunks = list(
        itertools.islice(stats_intervals._resample_indices(np.random.default_rng(0), 11, 2), 50)
    )
    assert [c.shape for c in chunks] == [(1, 11)] * 2


def test_chunked_bootstrap_equals_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrinking the chunk bound leaves every bootstrap result unchanged."""
    values = np.array([0.5, 1.5, 2.0, 7.0, 3.25, 4.0])
    whole = stats.bootstrap_ci(values, n_resamples=50, seed=9)
    monkeypatch.setattr(stats_intervals, "_MAX_CHUNK_ELEMENTS", 20)  # 3 rows of 6 per chunk
    assert stats.bootstrap_ci(values, n_resamples=50, seed=9) == whole
    assert whole == pytest.approx(_reference_interval(values, 0.95, 50, 9), rel=1e-14)


# _percentile_interval -----------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.95])
def test_interval_is_the_equal_tailed_quantile_pair(confidence: float) -> None:
    """(low, high) are the alpha/2 and 1 - alpha/2 quantiles of the replicates."""
    values = np.random.default_rng(11).normal(size=15)
    got = stats.bootstrap_ci(values, confidence=confidence, n_resamples=400, seed=6)
    assert got == pytest.approx(_reference_interval(values, confidence, 400, 6), rel=1e-14)


# bootstrap defaults -------------------------------------------------------------------


_UNITS = np.random.default_rng(21).normal(loc=3.0, size=25)
_OTHER = _UNITS + np.random.default_rng(22).normal(scale=0.5, size=25)
_TOKENS = np.random.default_rng(23).integers(5, 40, size=25).astype(np.float64)


@pytest.mark.parametrize(
    "fn",
    [
        lambda **kw: stats.bootstrap_ci(_UNITS, **kw),
        lambda **kw: stats.paired_bootstrap_diff_ci(_OTHER, _UNITS, **kw),
        lambda **kw: stats.ratio_bootstrap_ci(_UNITS * _TOKENS, _TOKENS, **kw),
        lambda **kw: stats.perplexity_ci(_UNITS * _TOKENS, _TOKENS, **kw),
        lambda **kw: stats.paired_window_ppl_diff_ci(
            _OTHER * _TOKENS, _UNITS * _TOKENS, _TOKENS, **kw
        ),
    ],
    ids=["bootstrap", "paired", "ratio", "perplexity", "paired_window"],
)
def test_bootstrap_defaults_on_continuous_data(fn: object) -> None:
    """Defaults are 0.95, 2000 resamples and seed 0, on data where 2001 resamples or seed 1
    would move the interval (the replicates are all distinct)."""
    assert callable(fn)
    default = fn()
    assert default == fn(confidence=0.95, n_resamples=2000, seed=0)
    assert default == fn()  # a fixed seed, not fresh entropy
    assert default != fn(n_resamples=2001, seed=0)
    assert default != fn(n_resamples=2000, seed=1)


def test_bootstrap_of_the_mean_matches_the_spelled_out_resampling() -> None:
    """bootstrap_ci(values) is the percentile interval of 2000 seed-0 resample means."""
    assert stats.bootstrap_ci(_UNITS) == pytest.approx(
        _reference_interval(_UNITS, 0.95, 2000, 0), rel=1e-14
    )


def test_perplexity_ci_passes_its_options_on() -> None:
    """confidence, n_resamples and seed reach the ratio bootstrap; ppl = exp(mean NLL)."""
    nll, tok = _UNITS * _TOKENS, _TOKENS
    got = stats.perplexity_ci(nll, tok, confidence=0.6, n_resamples=150, seed=8)
    mean_nll, lo, hi = stats.ratio_bootstrap_ci(nll, tok, confidence=0.6, n_resamples=150, seed=8)
    assert got == (math.exp(mean_nll), math.exp(lo), math.exp(hi))
    idx = np.random.default_rng(8).integers(0, 25, size=(150, 25))
    reps = nll[idx].sum(axis=1) / tok[idx].sum(axis=1)
    ref = np.exp(np.quantile(reps, [0.2, 0.8]))
    assert got[1:] == pytest.approx(tuple(ref), rel=1e-13)
    assert got[0] == pytest.approx(math.exp(nll.sum() / tok.sum()), rel=1e-15)


# paired_bootstrap_diff_ci / paired_window_ppl_diff_ci ---------------------------------


def test_paired_window_ppl_diff_names_each_bad_array() -> None:
    """Each of the three inputs is named in its own validation message."""
    with pytest.raises(ValueError, match=r"^baseline_nll_sums must not be empty$"):
        stats.paired_window_ppl_diff_ci([1.0], [], [1])
    with pytest.raises(ValueError, match=r"^baseline_nll_sums contains NaN or infinite values$"):
        stats.paired_window_ppl_diff_ci([1.0], [math.nan], [1])
    with pytest.raises(ValueError, match=r"^token_counts must not be empty$"):
        stats.paired_window_ppl_diff_ci([1.0], [1.0], [])
    with pytest.raises(ValueError, match=r"^token_counts contains NaN or infinite values$"):
        stats.paired_window_ppl_diff_ci([1.0], [1.0], [math.inf])


def test_paired_window_ppl_diff_matches_the_spelled_out_bootstrap() -> None:
    """Estimate and interval equal the paired resampling written out with numpy."""
    v, b, t = _OTHER * _TOKENS, _UNITS * _TOKENS, _TOKENS
    est, lo, hi = stats.paired_window_ppl_diff_ci(v, b, t, confidence=0.9, n_resamples=300, seed=2)
    assert est == pytest.approx(math.exp(v.sum() / t.sum()) - math.exp(b.sum() / t.sum()))
    idx = np.random.default_rng(2).integers(0, 25, size=(300, 25))
    tot = t[idx].sum(axis=1)
    reps = np.exp(v[idx].sum(axis=1) / tot) - np.exp(b[idx].sum(axis=1) / tot)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(reps, [0.05, 0.95])), rel=1e-12)


# perplexity / spread / wilson_interval ---------------------------------------------


def test_perplexity_of_a_single_token_and_the_nonfinite_message() -> None:
    """One token is enough (exp of its NLL); a non-finite sum is refused with its value."""
    assert stats.perplexity(2.0, 1) == math.exp(2.0)
    with pytest.raises(ValueError, match=r"^nll_sum must be finite, got nan$"):
        stats.perplexity(math.nan, 3)


def test_spread_of_two_samples_uses_the_sample_std() -> None:
    """n = 2 already uses ddof=1: std of (1, 3) is sqrt(2), cv = sqrt(2) / 2."""
    s = stats.spread([1.0, 3.0])
    assert s.cv == pytest.approx(math.sqrt(2.0) / 2.0, rel=1e-15)


def test_wilson_interval_for_a_single_trial() -> None:
    """n = 1 is valid: 1/1 gives (1 / (1 + z^2), 1), 0/1 gives (0, z^2 / (1 + z^2))."""
    z2 = NormalDist().inv_cdf(0.975) ** 2
    low, high = stats.wilson_interval(1, 1)
    assert high == 1.0 and low == pytest.approx(1.0 / (1.0 + z2), rel=1e-12)
    low, high = stats.wilson_interval(0, 1)
    assert low == 0.0 and high == pytest.approx(z2 / (1.0 + z2), rel=1e-12)


def test_wilson_upper_limit_is_exactly_one_at_all_successes_and_never_above() -> None:
    """All successes give high == 1.0 exactly, although center + half rounds to
    0.9999999999999999 for 13/13 at 95%; and round-off above 1 (center + half =
    1.0000000000000002 for (5e15 - 1) / 5e15) is clipped to 1."""
    assert stats.wilson_interval(13, 13)[1] == 1.0
    assert stats.wilson_interval(3, 3, confidence=0.5)[1] == 1.0
    n = 5 * 10**15
    assert stats.wilson_interval(n - 1, n)[1] == 1.0


# reference_prob_delta -----------------------------------------------------------------


def test_reference_prob_delta_computes_in_float64_from_float32_input() -> None:
    """float32 log-probabilities are widened first: exp is taken in float64 on either side."""
    b32 = np.array([-0.1, -2.3], dtype=np.float32)
    v32 = np.array([-0.2, -0.7], dtype=np.float32)
    exact = np.array(
        [math.exp(float(v)) - math.exp(float(b)) for b, v in zip(b32, v32, strict=True)]
    )
    pairs: list[tuple[np.ndarray, np.ndarray]] = [
        (b32, v32),
        (b32, v32.astype(np.float64)),
        (b32.astype(np.float64), v32),
    ]
    for b, v in pairs:
        got = stats.reference_prob_delta(b, v)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, exact, rtol=1e-15, atol=0.0)


# kl_divergence_per_token (direct route) -----------------------------------------------


@pytest.mark.parametrize("renormalize", [False, True])
def test_kl_refuses_nan_on_either_side(renormalize: bool) -> None:
    """NaN in the base alone, or in the variant alone, is refused with the same message."""
    good = np.log(np.array([[0.25, 0.75], [0.5, 0.5]]))
    bad = good.copy()
    bad[1, 0] = math.nan
    for base, variant in [(bad, good), (good, bad)]:
        with pytest.raises(ValueError, match=r"^log-probabilities contain NaN$"):
            stats.kl_divergence_per_token(base, variant, renormalize=renormalize)


# kl_divergence_per_token (renormalize=True) -------------------------------------------


def _float32_rows() -> tuple[np.ndarray, np.ndarray]:
    """Four 1000-entry float32 log-softmax rows and a near-lossless variant (KL ~ 5e-7)."""
    rng = np.random.default_rng(7)
    p = _log_softmax(rng.normal(scale=2.0, size=(4, 1000)))
    q = _log_softmax(p + rng.normal(scale=1e-3, size=p.shape))
    return p.astype(np.float32), q.astype(np.float32)


def test_renormalised_kl_of_float32_rows_works_in_float32_and_sums_in_float64() -> None:
    """The documented arithmetic: element-wise terms in the inputs' float32, every sum in
    float64, ``sum P d + log1p(sum P expm1(-d))`` with ``d = p - q``; and the result is
    within the documented few 1e-10 nats of the exact KL of the normalised rows."""
    p, q = _float32_rows()
    w = np.exp(p)
    d = p - q
    assert w.dtype == d.dtype == np.float32
    total = w.sum(axis=1, dtype=np.float64)
    head = (w * d).sum(axis=1, dtype=np.float64) / total
    ratio = (w * np.expm1(-d)).sum(axis=1, dtype=np.float64) / total
    expected = head + np.log1p(ratio)
    got = stats.kl_divergence_per_token(p, q, renormalize=True)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=0.0)
    # Exact KL of the normalised float32 rows, all in float64.
    p64, q64 = _log_softmax(p.astype(np.float64)), _log_softmax(q.astype(np.float64))
    exact = (np.exp(p64) * (p64 - q64)).sum(axis=1)
    np.testing.assert_allclose(got, exact, rtol=0.0, atol=1e-10)


def test_renormalised_kl_widens_half_precision_rows_to_float32() -> None:
    """float16 rows are worked on in (at least) float32: the result is exactly that of the
    same values handed over as float32."""
    p, q = _float32_rows()
    p16, q16 = p.astype(np.float16), q.astype(np.float16)
    got = stats.kl_divergence_per_token(p16, q16, renormalize=True)
    expected = stats.kl_divergence_per_token(
        p16.astype(np.float32), q16.astype(np.float32), renormalize=True
    )
    np.testing.assert_array_equal(got, expected)
    assert np.all(got > 0.0)


def test_renormalised_kl_survives_float32_sums_that_would_overflow() -> None:
    """Rows known up to a constant may sit near float32's exp limit: each exp(88.5) fits in
    float32 but their sum does not, so the sums must be float64. P is uniform over 4 and
    Q is proportional to (1, 1, 1, e^-1): KL = log((3 + e^-1) / 4) + 1/4."""
    p = np.full((1, 4), 88.5, dtype=np.float32)
    q = np.array([[88.5, 88.5, 88.5, 87.5]], dtype=np.float32)
    got = stats.kl_divergence_per_token(p, q, renormalize=True)
    assert got[0] == pytest.approx(math.log((3.0 + math.exp(-1.0)) / 4.0) + 0.25, rel=1e-6)


def test_renormalised_kl_uses_the_more_precise_of_mixed_dtypes() -> None:
    """A float64 side is not rounded to the float32 side's precision: a shift of +-1e-9
    (below float32's resolution at 0.69) still gives KL = Delta^2 / 8 with Delta = 2e-9."""
    q32 = np.log(np.array([[0.5, 0.5]])).astype(np.float32)
    p64 = q32.astype(np.float64) + np.array([[1e-9, -1e-9]])
    delta = float(p64[0, 0] - p64[0, 1])
    expected = delta**2 / 8.0  # two-point KL(softmax(p) || uniform), to O(Delta^4)
    assert stats.kl_divergence_per_token(p64, q32, renormalize=True)[0] == pytest.approx(
        expected, rel=1e-4, abs=0.0
    )
    assert stats.kl_divergence_per_token(q32, p64, renormalize=True)[0] == pytest.approx(
        expected, rel=1e-4, abs=0.0
    )


def test_renormalised_kl_rows_with_zero_base_entries_take_the_direct_route() -> None:
    """A -inf base entry sends the row to the float64 route, still renormalising both rows:
    unnormalised p ~ (1, 2, 0) and q ~ (2, 1, 1) give P = (1/3, 2/3, 0), Q = (1/2, 1/4, 1/4)."""
    with np.errstate(divide="ignore"):
        p = np.log(np.array([[1.0, 2.0, 0.0]]))
    q = np.log(np.array([[2.0, 1.0, 1.0]]))
    expected = (1 / 3) * math.log((1 / 3) / (1 / 2)) + (2 / 3) * math.log((2 / 3) / (1 / 4))
    got = stats.kl_divergence_per_token(p, q, renormalize=True)
    assert got[0] == pytest.approx(expected, rel=1e-14)
    # The same rows in float32 land on the same float64 route.
    got32 = stats.kl_divergence_per_token(
        p.astype(np.float32), q.astype(np.float32), renormalize=True
    )
    assert got32[0] == pytest.approx(expected, rel=1e-6)


def test_renormalised_kl_in_chunks_fills_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk is computed (rows after the first chunk included), hand formula per row."""
    rng = np.random.default_rng(17)
    base = _log_softmax(rng.normal(size=(9, 4)))
    variant = _log_softmax(rng.normal(size=(9, 4)))
    expected = (np.exp(base) * (base - variant)).sum(axis=1)
    monkeypatch.setattr(stats_divergence, "_MAX_CHUNK_ELEMENTS", 8)  # 2 rows of 4 per chunk
    for _ in range(3):
        got = stats.kl_divergence_per_token(base, variant, renormalize=True)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


# kl_topk_tail / _default_tail_atol ----------------------------------------------------


def test_kl_topk_tail_clips_round_off_below_zero() -> None:
    """log 0.2 against the next float up gives -4.4e-17 before clipping; the result is 0."""
    base = np.log(np.array([[0.2]]))
    variant = np.nextafter(base, 0.0)
    got = stats.kl_topk_tail(base, variant)
    assert got[0] == 0.0 and not np.signbit(got[0])


def test_default_tail_atol_follows_the_less_precise_input() -> None:
    """A base tail of 3e-6 against an empty variant tail is round-off (0) when either side
    is float32 (atol 64 * 1.19e-7 = 7.6e-6), and +inf when both are float64 (1.4e-14)."""
    tail_logp = math.log1p(-3e-6)
    for base_dtype, variant_dtype in [(np.float32, np.float64), (np.float64, np.float32)]:
        base = np.array([[tail_logp]], dtype=base_dtype)
        variant = np.array([[0.0]], dtype=variant_dtype)
        assert stats.kl_topk_tail(base, variant)[0] == 0.0, (base_dtype, variant_dtype)
    assert stats.kl_topk_tail(np.array([[tail_logp]]), np.array([[0.0]]))[0] == math.inf


def test_default_tail_atol_treats_integer_inputs_as_float64() -> None:
    """Integer log-probabilities (0 = probability 1) use float64's epsilon, no finfo error."""
    got = stats.kl_topk_tail(np.array([[0]]), np.array([[0]]))
    assert got.tolist() == [0.0]
    assert (
        stats_divergence._default_tail_atol(np.dtype(np.int64), np.dtype(np.int32))
        == 64.0 * 2.0**-52
    )


# kl_topk_tail_from_full ---------------------------------------------------------------


def test_kl_topk_tail_from_full_refuses_a_repeated_pair_of_ids() -> None:
    """k = 2 with the same id twice is refused (the smallest k where repeats can occur)."""
    with pytest.raises(ValueError, match=r"^base_topk_ids contains a repeated id within a row$"):
        stats.kl_topk_tail_from_full([[2, 2]], [[-1.0, -1.0]], np.zeros((1, 4)))


def test_kl_topk_tail_from_full_passes_tail_atol_on() -> None:
    """Base keeps 0.5 outside its top 1, the variant none: +inf by default, 0 (finite, then
    clipped) once tail_atol=0.5 declares that tail round-off."""
    full = np.array([[0.0, -np.inf]])
    ids, base = [[0]], np.log(np.array([[0.5]]))
    assert stats.kl_topk_tail_from_full(ids, base, full)[0] == math.inf
    assert stats.kl_topk_tail_from_full(ids, base, full, tail_atol=0.5)[0] == 0.0


def test_kl_topk_tail_from_full_names_a_one_dimensional_ids_array() -> None:
    """1-D ids are refused with their shape."""
    with pytest.raises(
        ValueError, match=r"^base_topk_ids must be 2-D \(n_tokens, k\), got shape \(3,\)$"
    ):
        stats.kl_topk_tail_from_full([0, 1, 2], [[-1.0, -1.0, -1.0]], np.zeros((1, 4)))


# rouge_l_f1 / _lcs_length -------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "reference", "shapes"),
    [
        ([[1, 2]], [1], r"\(1, 2\) and \(1,\)"),
        ([1], [[1, 2]], r"\(1,\) and \(1, 2\)"),
        ([[1, 2]], [[1, 2]], r"\(1, 2\) and \(1, 2\)"),
    ],
)
def test_rouge_l_f1_refuses_non_1d_sequences(
    candidate: object, reference: object, shapes: str
) -> None:
    """Either input (or both) not 1-D is refused, both shapes named."""
    with pytest.raises(ValueError, match=rf"^token sequences must be 1-D, got shapes {shapes}$"):
        stats.rouge_l_f1(candidate, reference)  # type: ignore[arg-type]


def test_rouge_l_checks_a_malformed_sequence_next_to_an_empty_one() -> None:
    """Exactly one empty sequence scores 0.0, but a partner that is not 1-D is still an
    error (the docstring's promise held only when both were non-empty before)."""
    assert stats.rouge_l_f1([], [1, 2]) == 0.0
    assert stats.rouge_l_f1([3], []) == 0.0
    with pytest.raises(ValueError, match=r"token sequences must be 1-D"):
        stats.rouge_l_f1([], [[1, 2]])
