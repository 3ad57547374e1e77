"""Statistics used to compare a quantized variant against its baseline.

Everything here is a pure function of its arguments: no I/O, no global mutable state, no
torch. Inputs are converted to numpy ``float64`` before any arithmetic, because per-token
log-probabilities usually arrive as float32 (or narrower) and sums over hundreds of
thousands of tokens lose precision quickly in single precision.

Units used throughout:

* log-probabilities and negative log-likelihoods (NLL) are natural logs, i.e. **nats**;
* KL divergences are in **nats per token**;
* probability deltas are in **probability units** (a value in ``[-1, 1]``);
* timings are whatever the caller passes (quantbench passes **seconds**).

Confidence intervals are percentile bootstraps over independent *units* (for
perplexity: evaluation windows, not tokens, because tokens inside one window are
correlated). The percentile bootstrap is slightly anti-conservative for very small
numbers of units (roughly below 30); callers should report the number of units next to
any interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "Statistic",
    "Summary",
    "bootstrap_ci",
    "kl_divergence_per_token",
    "mcnemar_exact_p",
    "paired_bootstrap_diff_ci",
    "pareto_front",
    "percentiles",
    "perplexity",
    "perplexity_ci",
    "ratio_bootstrap_ci",
    "reference_prob_delta",
    "summarize",
    "top1_agreement",
    "wilson_interval",
]

FloatArray = npt.NDArray[np.float64]

#: A reduction such as ``np.mean`` or ``np.median``. It is first called as
#: ``statistic(x, axis=-1)`` on a 2-D ``(n_resamples, n_units)`` array so that all bootstrap
#: resamples are reduced in one vectorised call; if it does not accept ``axis`` (or does not
#: return one value per row) it is called once per resample on a 1-D array instead.
Statistic = Callable[..., Any]

# Upper bound on the number of float64 elements materialised at once by the bootstrap and
# KL helpers (2**22 elements = 32 MiB per temporary), so that bootstrapping 10^5 per-token
# values or computing KL over a 150k-token vocabulary does not allocate gigabytes.
_MAX_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------------------
# Input validation helpers
# --------------------------------------------------------------------------------------


def _as_1d_finite(values: npt.ArrayLike, name: str) -> FloatArray:
    """Return ``values`` as a non-empty, finite, 1-D float64 array or raise ``ValueError``.

    Non-finite values are rejected rather than propagated because a single NaN would
    otherwise silently turn every mean, percentile and interval into NaN.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_confidence(confidence: float) -> None:
    """Raise ``ValueError`` unless ``0 < confidence < 1``."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _check_n_resamples(n_resamples: int) -> None:
    """Raise ``ValueError`` unless ``n_resamples`` is a positive integer."""
    if isinstance(n_resamples, bool) or int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")


def _check_logprob_pair(base: npt.ArrayLike, variant: npt.ArrayLike) -> tuple[Any, Any]:
    """Validate two ``(n_tokens, vocab)`` log-probability arrays of identical shape."""
    b = np.asarray(base)
    v = np.asarray(variant)
    if b.ndim != 2:
        raise ValueError(f"base_logprobs must be 2-D (n_tokens, vocab), got shape {b.shape}")
    if b.shape != v.shape:
        raise ValueError(f"shape mismatch: base {b.shape} vs variant {v.shape}")
    return b, v


# --------------------------------------------------------------------------------------
# Per-token quality metrics
# --------------------------------------------------------------------------------------


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


def kl_divergence_per_token(
    base_logprobs: npt.ArrayLike, variant_logprobs: npt.ArrayLike
) -> FloatArray:
    """KL(base ‖ variant) for every token position, in nats, as float64 of shape (n_tokens,).

    Both inputs have shape ``(n_tokens, vocab)`` and hold natural-log probabilities, each
    row a complete log-softmax. The divergence is computed directly from log-probabilities
    as ``sum_v exp(p_v) * (p_v - q_v)``, which avoids ever dividing probabilities and stays
    accurate for tokens whose probabilities underflow in linear space.

    Edge cases:

    * a vocabulary entry with base log-probability ``-inf`` (probability 0) contributes 0,
      whatever the variant says (``0 * log 0 = 0`` convention);
    * an entry the base gives positive probability but the variant gives ``-inf`` makes
      that token's KL ``+inf`` (mathematically correct; callers may want to clip);
    * rows are not renormalised; tiny negative results caused by round-off (rows that sum
      to 1 only approximately, e.g. float32 log-softmax) are clipped to 0.

    Rows are processed in chunks so the float64 temporaries stay bounded for large vocabs.
    """
    base, variant = _check_logprob_pair(base_logprobs, variant_logprobs)
    n_tokens, vocab = base.shape
    out = np.empty(n_tokens, dtype=np.float64)
    rows_per_chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, vocab))
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, n_tokens, rows_per_chunk):
            stop = min(start + rows_per_chunk, n_tokens)
            p = base[start:stop].astype(np.float64, copy=False)
            q = variant[start:stop].astype(np.float64, copy=False)
            if np.any(np.isnan(p)) or np.any(np.isnan(q)):
                raise ValueError("log-probabilities contain NaN")
            terms = np.exp(p) * (p - q)
            # Zero-probability base entries contribute nothing (avoids 0 * inf = NaN).
            terms[np.isneginf(p)] = 0.0
            out[start:stop] = terms.sum(axis=1)
    np.maximum(out, 0.0, out=out)
    return out


def top1_agreement(
    base_logprobs: npt.ArrayLike, variant_logprobs: npt.ArrayLike
) -> npt.NDArray[np.bool_]:
    """Per-token boolean: does the variant's most likely token equal the base's?

    Inputs have shape ``(n_tokens, vocab)`` (log-probabilities or logits; only the argmax
    matters). Exact ties resolve to the lowest vocabulary index, as ``np.argmax`` does, so
    a row whose maximum is tied is compared by its first maximal index.
    """
    base, variant = _check_logprob_pair(base_logprobs, variant_logprobs)
    result: npt.NDArray[np.bool_] = np.argmax(base, axis=1) == np.argmax(variant, axis=1)
    return result


def reference_prob_delta(
    base_ref_logprob: npt.ArrayLike, variant_ref_logprob: npt.ArrayLike
) -> FloatArray:
    """Per-token change in the reference token's probability, ``p_variant - p_base``.

    Inputs are the natural-log probabilities that the base and the variant assigned to the
    actual next token at each position (any matching shape, typically ``(n_tokens,)``).
    The result is in probability units, within ``[-1, 1]``; negative means the quantized
    model became less confident in the correct token. This is the "Δp" statistic reported
    by llama.cpp's ``llama-perplexity --kl-divergence``.
    """
    b = np.asarray(base_ref_logprob, dtype=np.float64)
    v = np.asarray(variant_ref_logprob, dtype=np.float64)
    if b.shape != v.shape:
        raise ValueError(f"shape mismatch: base {b.shape} vs variant {v.shape}")
    if np.any(np.isnan(b)) or np.any(np.isnan(v)):
        raise ValueError("log-probabilities contain NaN")
    delta: FloatArray = np.exp(v) - np.exp(b)
    return delta


# --------------------------------------------------------------------------------------
# Descriptive statistics
# --------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Summary:
    """Descriptive statistics of one sample, in the sample's own unit.

    Used for timing repeats (seconds) and per-token KL (nats). ``std`` is the sample
    standard deviation (``ddof=1``) when ``n > 1`` and 0 for a single observation.
    ``cv`` is the coefficient of variation ``std / mean`` (dimensionless), a quick check of
    timing stability; it is NaN when ``mean == 0``.
    """

    n: int
    mean: float
    median: float
    p90: float
    p99: float
    min: float
    max: float
    std: float
    cv: float


def summarize(samples: npt.ArrayLike) -> Summary:
    """Summarise a 1-D sample (see :class:`Summary`).

    Raises:
        ValueError: on empty or non-finite samples.
    """
    arr = _as_1d_finite(samples, "samples")
    n = int(arr.size)
    mean = float(np.mean(arr))
    std = float(np.std(arr, ddof=1)) if n > 1 else 0.0
    cv = std / mean if mean != 0.0 else math.nan
    p90, p99 = np.percentile(arr, [90.0, 99.0], method="linear")
    return Summary(
        n=n,
        mean=mean,
        median=float(np.median(arr)),
        p90=float(p90),
        p99=float(p99),
        min=float(np.min(arr)),
        max=float(np.max(arr)),
        std=std,
        cv=cv,
    )


# --------------------------------------------------------------------------------------
# Bootstrap confidence intervals
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Tests on paired accuracy and binomial proportions
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Trade-off analysis
# --------------------------------------------------------------------------------------


def pareto_front(
    points: Sequence[tuple[float, float]], minimize: tuple[bool, bool] = (True, True)
) -> list[int]:
    """Indices (ascending) of the non-dominated points among 2-D ``points``.

    Used to pick the schemes worth recommending, e.g. (model size in GiB, KL in nats) with
    both minimised, or (throughput, accuracy) with both maximised via
    ``minimize=(False, False)``.

    Point ``a`` dominates ``b`` when ``a`` is at least as good on both coordinates and
    strictly better on at least one. Exact duplicates do not dominate each other, so if
    several points are equal on both coordinates and non-dominated, **all** of their
    indices are returned (the caller decides how to present ties).

    Raises:
        ValueError: if any coordinate is NaN or a point does not have two coordinates.
    """
    if len(points) == 0:
        return []
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"points must be a sequence of (x, y) pairs, got shape {arr.shape}")
    if np.any(np.isnan(arr)):
        raise ValueError("points contain NaN")
    signs = np.array([1.0 if m else -1.0 for m in minimize], dtype=np.float64)
    costs = arr * signs  # now lower is better on both axes
    # leq[i, j]: point j is at least as good as point i on both axes.
    leq = np.all(costs[None, :, :] <= costs[:, None, :], axis=2)
    lt = np.any(costs[None, :, :] < costs[:, None, :], axis=2)
    dominated = np.any(leq & lt, axis=1)
    return [int(i) for i in np.flatnonzero(~dominated)]
