"""Perplexity, the summary of repeated measurements, and confidence intervals.

Percentile bootstraps over independent units (evaluation windows for perplexity, not tokens:
tokens inside one window are correlated), Wilson's interval for a proportion and the exact
McNemar test for paired right/wrong scores. The percentile bootstrap is slightly
anti-conservative below about 30 units; callers report the number of units beside any
interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from quantbench.results import Spread
from quantbench.stats._checks import (
    _MAX_CHUNK_ELEMENTS,
    FloatArray,
    _as_1d_finite,
    _check_confidence,
    _check_n_resamples,
)

#: A reduction such as ``np.mean`` or ``np.median``. It is first called as
#: ``statistic(x, axis=-1)`` on a 2-D ``(n_resamples, n_units)`` array so that all bootstrap
#: resamples are reduced in one vectorised call; if it does not accept ``axis`` (or does not
#: return one value per row) it is called once per resample on a 1-D array instead.
Statistic = Callable[..., Any]


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """Perplexity ``exp(nll_sum / n_tokens)`` (dimensionless, >= 1 for a proper model).

    ``nll_sum`` is the total negative log-likelihood in nats over ``n_tokens`` predicted
    tokens. Perplexity is the exponential of the *mean* NLL, so it must be computed from a
    token-weighted sum, never by averaging per-window perplexities.

    Raises:
        ValueError: if ``n_tokens <= 0`` or ``nll_sum`` is not finite.
    """
    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    if not math.isfinite(nll_sum):
        raise ValueError(f"nll_sum must be finite, got {nll_sum}")
    return math.exp(float(np.float64(nll_sum) / np.float64(n_tokens)))


def _percentile_key(q: float) -> str:
    """Dictionary key for percentile ``q``: ``1 -> "p1"``, ``99.9 -> "p99.9"``."""
    return f"p{float(q):g}"


def percentiles(
    values: npt.ArrayLike, qs: Iterable[float] = (1, 5, 50, 95, 99)
) -> dict[str, float]:
    """Percentiles of ``values`` keyed ``"p1"``, ``"p5"``, ... (same unit as ``values``).

    Uses linear interpolation between order statistics (numpy's default, "type 7"):
    for sorted ``x`` of length ``n`` the q-th percentile sits at rank ``q/100 * (n-1)``.
    Percentiles are what make quantization damage visible: mean KL hides the rare tokens
    whose distribution changes badly, the p99 does not.

    Raises:
        ValueError: on empty or non-finite ``values``, or any ``q`` outside ``[0, 100]``.
    """
    arr = _as_1d_finite(values, "values")
    q_list = [float(q) for q in qs]
    for q in q_list:
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {q}")
    if not q_list:
        return {}
    res = np.percentile(arr, q_list, method="linear")
    return {_percentile_key(q): float(r) for q, r in zip(q_list, res, strict=True)}


def _apply_statistic(statistic: Statistic, resamples: FloatArray) -> FloatArray:
    """Reduce each row of a ``(k, n)`` array with ``statistic``; returns shape ``(k,)``.

    Tries one vectorised call with ``axis=-1`` and falls back to a per-row loop for
    statistics that do not accept ``axis`` or do not reduce along it.
    """
    k = resamples.shape[0]
    try:
        out = np.asarray(statistic(resamples, axis=-1), dtype=np.float64)
    except TypeError:
        out = None
    if out is None or out.shape != (k,):
        out = np.array([float(statistic(row)) for row in resamples], dtype=np.float64)
    return out


def _resample_indices(
    rng: np.random.Generator, n_units: int, n_resamples: int
) -> Iterable[npt.NDArray[np.intp]]:
    """Yield ``(chunk, n_units)`` blocks of bootstrap indices, ``n_resamples`` rows in all.

    Chunking bounds memory at about ``_MAX_CHUNK_ELEMENTS`` indices; the random stream
    depends only on ``(seed, n_units, n_resamples)``, so results stay deterministic.
    """
    rows = max(1, min(n_resamples, _MAX_CHUNK_ELEMENTS // n_units))
    done = 0
    while done < n_resamples:
        k = min(rows, n_resamples - done)
        yield rng.integers(0, n_units, size=(k, n_units), dtype=np.intp)
        done += k


def _percentile_interval(replicates: FloatArray, confidence: float) -> tuple[float, float]:
    """Equal-tailed percentile interval of the bootstrap replicates."""
    alpha = 1.0 - confidence
    lo, hi = np.quantile(replicates, [alpha / 2.0, 1.0 - alpha / 2.0], method="linear")
    return float(lo), float(hi)


def bootstrap_ci(
    values: npt.ArrayLike,
    statistic: Statistic = np.mean,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval ``(low, high)`` for ``statistic(values)``.

    ``values`` holds one number per independent unit (e.g. the mean NLL of each evaluation
    window, in nats); units are resampled with replacement ``n_resamples`` times. The
    result is in the unit of the statistic. Deterministic for a given ``seed``
    (``np.random.default_rng``). See :data:`Statistic` for what ``statistic`` must accept.

    Raises:
        ValueError: on empty/non-finite ``values`` or invalid ``confidence``/``n_resamples``.
    """
    arr = _as_1d_finite(values, "values")
    _check_confidence(confidence)
    _check_n_resamples(n_resamples)
    rng = np.random.default_rng(seed)
    reps = np.concatenate(
        [
            _apply_statistic(statistic, arr[idx])
            for idx in _resample_indices(rng, arr.size, n_resamples)
        ]
    )
    return _percentile_interval(reps, confidence)


def paired_bootstrap_diff_ci(
    variant: npt.ArrayLike,
    baseline: npt.ArrayLike,
    statistic: Statistic = np.mean,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Paired bootstrap for ``statistic(variant) - statistic(baseline)``.

    ``variant[i]`` and ``baseline[i]`` must be measurements of the *same* unit (same
    evaluation window, same prompt). Each resample draws one set of unit indices and uses
    it for both arrays, so between-unit variation that both models share cancels, which
    gives a much tighter interval than comparing two independent intervals.

    Returns:
        ``(estimate, low, high)`` where ``estimate`` is the difference on the full data and
        ``(low, high)`` the percentile interval, in the unit of the statistic.

    Raises:
        ValueError: on length mismatch, empty or non-finite input, or invalid parameters.
    """
    v = _as_1d_finite(variant, "variant")
    b = _as_1d_finite(baseline, "baseline")
    if v.size != b.size:
        raise ValueError(f"length mismatch: variant has {v.size} units, baseline {b.size}")
    _check_confidence(confidence)
    _check_n_resamples(n_resamples)
    estimate = float(statistic(v)) - float(statistic(b))
    rng = np.random.default_rng(seed)
    reps = np.concatenate(
        [
            _apply_statistic(statistic, v[idx]) - _apply_statistic(statistic, b[idx])
            for idx in _resample_indices(rng, v.size, n_resamples)
        ]
    )
    lo, hi = _percentile_interval(reps, confidence)
    return estimate, lo, hi


def ratio_bootstrap_ci(
    numerators: npt.ArrayLike,
    denominators: npt.ArrayLike,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Bootstrap CI for the ratio of sums ``sum(numerators) / sum(denominators)``.

    Each unit ``i`` contributes a pair ``(numerators[i], denominators[i])``, e.g. an
    evaluation window's NLL sum (nats) and its token count. Pairs are resampled together
    by unit, which is correct when units have different sizes (a plain mean of per-unit
    ratios would over-weight short windows).

    Returns:
        ``(ratio, low, high)``: the ratio on the full data and its percentile interval, in
        numerator units per denominator unit (e.g. nats per token).

    Raises:
        ValueError: on length mismatch, empty/non-finite input, any denominator ``<= 0``,
            or invalid parameters.
    """
    num = _as_1d_finite(numerators, "numerators")
    den = _as_1d_finite(denominators, "denominators")
    if num.size != den.size:
        raise ValueError(f"length mismatch: {num.size} numerators vs {den.size} denominators")
    if np.any(den <= 0):
        raise ValueError("denominators must all be positive")
    _check_confidence(confidence)
    _check_n_resamples(n_resamples)
    ratio = float(num.sum() / den.sum())
    rng = np.random.default_rng(seed)
    reps = np.concatenate(
        [
            num[idx].sum(axis=1) / den[idx].sum(axis=1)
            for idx in _resample_indices(rng, num.size, n_resamples)
        ]
    )
    lo, hi = _percentile_interval(reps, confidence)
    return ratio, lo, hi


def perplexity_ci(
    window_nll_sums: npt.ArrayLike,
    window_token_counts: npt.ArrayLike,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Corpus perplexity and its bootstrap CI, resampling evaluation windows.

    ``window_nll_sums[i]`` is the summed NLL (nats) of the predicted tokens of window ``i``
    and ``window_token_counts[i]`` the number of those tokens. Perplexity is
    ``exp(sum(nll) / sum(tokens))``. Windows, not tokens, are the resampling unit because
    tokens within a window share context and are not independent. Since ``exp`` is
    monotonic, the percentile interval of the mean NLL maps exactly onto perplexity.

    Returns:
        ``(ppl, low, high)``, dimensionless.
    """
    mean_nll, lo, hi = ratio_bootstrap_ci(
        window_nll_sums,
        window_token_counts,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
    )
    return math.exp(mean_nll), math.exp(lo), math.exp(hi)


def mcnemar_exact_p(right_to_wrong: int, wrong_to_right: int) -> float:
    """Two-sided exact McNemar p-value for paired correct/incorrect outcomes.

    ``right_to_wrong`` (b) counts items the baseline got right and the variant got wrong;
    ``wrong_to_right`` (c) the reverse. Items both got right or both got wrong carry no
    information about a difference. Under H0 the discordant items split as
    ``X ~ Binomial(b + c, 1/2)`` and the p-value is ``min(1, 2 * P[X <= min(b, c)])``.

    The tail is summed with exact integer arithmetic (``math.comb``-style recurrences) and
    divided once, so even thousands of discordant pairs give a correctly rounded float.
    Returns 1.0 when ``b + c == 0``.

    Raises:
        ValueError: if either count is negative or not an integer.
    """
    for name, val in (("right_to_wrong", right_to_wrong), ("wrong_to_right", wrong_to_right)):
        if isinstance(val, bool) or int(val) != val or val < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {val!r}")
    b, c = int(right_to_wrong), int(wrong_to_right)
    n = b + c
    k = min(b, c)
    if n == 0 or b == c:
        # b == c means k >= n/2, so 2 * P[X <= k] >= 1.
        return 1.0
    term = 1  # comb(n, 0)
    tail = 1
    for i in range(k):
        term = term * (n - i) // (i + 1)  # comb(n, i + 1), exact
        tail += term
    # int / int true division is correctly rounded in Python, even for huge integers.
    return min(1.0, (2 * tail) / (1 << n))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for a binomial proportion ``successes / n``.

    Preferred over the normal ("Wald") interval because it stays inside ``[0, 1]`` and
    keeps reasonable coverage for small ``n`` and proportions near 0 or 1, which is the
    usual situation for accuracy on small task suites. Proportion units (0..1).

    Raises:
        ValueError: if ``n <= 0``, ``successes`` is outside ``[0, n]``, or ``confidence``
            is not in ``(0, 1)``.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    _check_confidence(confidence)
    z = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)
    p_hat = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p_hat + z2 / (2.0 * n)) / denom
    half = (z / denom) * math.sqrt(p_hat * (1.0 - p_hat) / n + z2 / (4.0 * n * n))
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def _ppl_diff(mean_nll_variant: Any, mean_nll_baseline: Any) -> Any:
    """``exp(v) - exp(b)`` written as ``exp(b) * expm1(v - b)``, accurate for ``v ≈ b``."""
    return np.exp(mean_nll_baseline) * np.expm1(mean_nll_variant - mean_nll_baseline)


def paired_window_ppl_diff_ci(
    variant_nll_sums: npt.ArrayLike,
    baseline_nll_sums: npt.ArrayLike,
    token_counts: npt.ArrayLike,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Perplexity difference ``ppl(variant) - ppl(baseline)`` with a paired window bootstrap.

    Window ``i`` is the same text for both models: ``variant_nll_sums[i]`` and
    ``baseline_nll_sums[i]`` are their summed NLLs (nats) over its ``token_counts[i]``
    predicted tokens. Each perplexity is ``exp(sum(nll) / sum(tokens))``. Every bootstrap
    resample draws one set of window indices and uses it for both models, so the large
    window-to-window variation in difficulty, which both share, cancels; the interval is
    far tighter than one built from two separate perplexity intervals. Windows, not tokens,
    are resampled because tokens within a window are correlated.

    Returns:
        ``(estimate, low, high)``: the difference on all windows and its percentile
        interval, in perplexity units (positive = variant worse).

    Raises:
        ValueError: on length mismatch, empty or non-finite input, any token count
            ``<= 0``, or invalid ``confidence``/``n_resamples``.
    """
    v = _as_1d_finite(variant_nll_sums, "variant_nll_sums")
    b = _as_1d_finite(baseline_nll_sums, "baseline_nll_sums")
    t = _as_1d_finite(token_counts, "token_counts")
    if not v.size == b.size == t.size:
        raise ValueError(
            f"length mismatch: {v.size} variant, {b.size} baseline, {t.size} token counts"
        )
    if np.any(t <= 0):
        raise ValueError("token_counts must all be positive")
    _check_confidence(confidence)
    _check_n_resamples(n_resamples)
    total = t.sum()
    estimate = float(_ppl_diff(v.sum() / total, b.sum() / total))
    rng = np.random.default_rng(seed)
    reps_list = []
    for idx in _resample_indices(rng, v.size, n_resamples):
        tot = t[idx].sum(axis=1)
        reps_list.append(_ppl_diff(v[idx].sum(axis=1) / tot, b[idx].sum(axis=1) / tot))
    reps = np.concatenate(reps_list).astype(np.float64, copy=False)
    lo, hi = _percentile_interval(reps, confidence)
    return estimate, lo, hi


def spread(samples: npt.ArrayLike) -> Spread:
    """The summary of repeated measurements (timings in seconds, throughput in tokens per
    second): the median (the figure to report, robust to a slow first repeat), p90, mean,
    min, max and the coefficient of variation ``std(ddof=1) / mean`` (dimensionless; 0 for a
    single sample, NaN when the mean is 0), which flags an unstable measurement.

    Raises:
        ValueError: on empty or non-finite samples.
    """
    arr = _as_1d_finite(samples, "samples")
    n = int(arr.size)
    mean = float(np.mean(arr))
    std = float(np.std(arr, ddof=1)) if n > 1 else 0.0
    return Spread(
        n=n,
        median=float(np.median(arr)),
        p90=float(np.percentile(arr, 90.0, method="linear")),
        mean=mean,
        min=float(np.min(arr)),
        max=float(np.max(arr)),
        cv=std / mean if mean != 0.0 else math.nan,
    )
