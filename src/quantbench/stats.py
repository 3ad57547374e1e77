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
    "exact_match_rate",
    "first_difference",
    "kl_divergence_per_token",
    "kl_topk_tail",
    "kl_topk_tail_from_full",
    "mcnemar_exact_p",
    "paired_bootstrap_diff_ci",
    "paired_window_ppl_diff_ci",
    "pareto_front",
    "percentiles",
    "perplexity",
    "perplexity_ci",
    "ratio_bootstrap_ci",
    "reference_prob_delta",
    "rouge_l_f1",
    "spread",
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
    base_logprobs: npt.ArrayLike, variant_logprobs: npt.ArrayLike, *, renormalize: bool = False
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
    * rows are not renormalised unless ``renormalize``; tiny negative results caused by
      round-off (rows that sum to 1 only approximately, e.g. float32 log-softmax) are
      clipped to 0.

    ``renormalize=True`` treats each row as known only up to a constant (a float32
    log-softmax carries its log-sum-exp's rounding, ~1e-7 nats, in every entry, which is
    not small next to the KL of a near-lossless variant) and returns the KL of the
    normalised rows ``P = e^p / sum e^p`` and ``Q = e^q / sum e^q``, written with
    ``d = p - q`` as ``sum P d + log1p(sum P expm1(-d))`` (the second term is
    ``log(S_q / S_p)``). Every term is then small where the two models agree, so the
    element-wise work runs in the inputs' precision (float32 for float32 inputs, several
    times faster than float64 over a 50k-entry vocabulary) with sums in float64; the
    result's error is a few 1e-10 nats per token (measured: 3e-5 relative at a KL of
    7e-6 nats from float32 rows). Rows with ``-inf`` entries take the direct float64 route.

    Rows are processed in chunks so the float64 temporaries stay bounded for large vocabs.
    """
    base, variant = _check_logprob_pair(base_logprobs, variant_logprobs)
    n_tokens, vocab = base.shape
    out = np.empty(n_tokens, dtype=np.float64)
    rows_per_chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, vocab))
    work = np.result_type(base.dtype, variant.dtype, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, n_tokens, rows_per_chunk):
            stop = min(start + rows_per_chunk, n_tokens)
            if renormalize:
                out[start:stop] = _kl_normalised_rows(
                    base[start:stop].astype(work, copy=False),
                    variant[start:stop].astype(work, copy=False),
                )
                continue
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


def _kl_normalised_rows(p: Any, q: Any) -> FloatArray:
    """KL of the normalised rows of two log-probability chunks (see
    :func:`kl_divergence_per_token`, ``renormalize=True``), float64 of shape (rows,)."""
    weights = np.exp(p)
    diff = p - q
    total = weights.sum(axis=1, dtype=np.float64)
    head = (weights * diff).sum(axis=1, dtype=np.float64) / total
    ratio = (weights * np.expm1(-diff)).sum(axis=1, dtype=np.float64) / total
    kl: FloatArray = head + np.log1p(ratio)
    odd = ~np.isfinite(kl)
    if np.any(odd):
        # -inf entries (0 * inf), NaN, or an overflow: the direct route on these rows.
        pb = p[odd].astype(np.float64)
        qb = q[odd].astype(np.float64)
        if np.any(np.isnan(pb)) or np.any(np.isnan(qb)):
            raise ValueError("log-probabilities contain NaN")
        base_weights = np.exp(pb)
        terms = base_weights * (pb - qb)
        terms[np.isneginf(pb)] = 0.0
        base_sum = base_weights.sum(axis=1)
        kl[odd] = terms.sum(axis=1) / base_sum - np.log(base_sum) + np.log(np.exp(qb).sum(axis=1))
    return kl


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


# --------------------------------------------------------------------------------------
# KL divergence from stored top-k log-probabilities
# --------------------------------------------------------------------------------------

# Multiple of the input dtype's machine epsilon below which a computed tail mass counts as
# round-off (see ``kl_topk_tail``). The error of ``1 - sum_k exp(logp_i)`` is about
# ``eps * (entropy + log2(k))``; entropy is at most ln(vocab) ~ 12 nats for real vocabularies
# and pairwise summation adds log2(k) <= ~18, so 64 leaves a factor of two of margin.
_TAIL_ROUND_OFF_EPS = 64.0


def _default_tail_atol(*dtypes: np.dtype[Any]) -> float:
    """Round-off level of a tail mass computed from log-probabilities of ``dtypes``.

    The least precise floating dtype wins (float32 log-probs give ~7.6e-6, float64 ~1.4e-14);
    non-floating dtypes are converted to float64 and use its epsilon.
    """
    floats = [dt if np.issubdtype(dt, np.floating) else np.dtype(np.float64) for dt in dtypes]
    eps = max(float(np.finfo(dt).eps) for dt in floats)
    return _TAIL_ROUND_OFF_EPS * eps


def _tail_mass(logp: FloatArray) -> FloatArray:
    """``1 - sum_k exp(logp)`` per row, clipped to ``>= 0`` (probability units).

    Computed as ``-expm1(logsumexp(logp))`` with the log-sum-exp written as
    ``m + log1p(sum_{i != argmax} exp(logp_i - m))``: when the top-k tokens hold almost all
    the mass (a confident prediction) the tail is a tiny difference from 1, and forming
    ``sum exp(logp)`` first would round it away. Rows that are all ``-inf`` have tail 1.
    """
    n = logp.shape[0]
    m = np.max(logp, axis=1)
    lse = np.full(n, -np.inf, dtype=np.float64)
    live = np.isfinite(m)
    if np.any(live):
        x = logp[live]
        mx = m[live]
        e = np.exp(x - mx[:, None])
        e[np.arange(x.shape[0]), np.argmax(x, axis=1)] = 0.0  # the max contributes exactly 1
        lse[live] = mx + np.log1p(e.sum(axis=1))
    tail: FloatArray = np.maximum(-np.expm1(lse), 0.0)
    return tail


def kl_topk_tail(
    base_topk_logprobs: npt.ArrayLike,
    variant_logprobs_at_base_topk: npt.ArrayLike,
    *,
    tail_atol: float | None = None,
) -> FloatArray:
    """Per-token KL(base ‖ variant) in nats when the base is stored only as its top-k.

    Storing full ``(n_tokens, vocab)`` baseline log-probabilities is prohibitive for large
    vocabularies (150k entries per token), so the baseline is often kept as its ``k`` most
    likely tokens. Both distributions are then coarsened to ``k + 1`` outcomes: the k
    stored tokens and one "tail" outcome holding the remaining mass,

    ``P_T = 1 - sum_k P_i``, ``Q_T = 1 - sum_k Q_i``

    (computed as ``-expm1(logsumexp(.))`` for accuracy and clipped to ``>= 0``), and

    ``KL_approx = sum_k P_i (log P_i - log Q_i) + P_T (log P_T - log Q_T)``.

    By the log-sum inequality, merging the tail tokens can only lose divergence, so
    ``KL_approx`` is a **lower bound** of the exact KL; it **equals** the exact KL when the
    baseline's tail mass is zero (e.g. ``k == vocab``, or the base puts no mass outside its
    top-k). The gap is the divergence *within* the tail, so it is small when ``P_T`` is.

    Args:
        base_topk_logprobs: ``(n_tokens, k)`` natural-log probabilities of the baseline's
            top-k tokens (any order; ``k >= 1``), taken from a complete log-softmax.
        variant_logprobs_at_base_topk: ``(n_tokens, k)`` the variant's natural-log
            probabilities at the *same* token ids, from its complete log-softmax.
        tail_atol: tail masses are differences from 1 and carry round-off of the inputs'
            precision. Only used for the ``Q_T == 0`` case below: a baseline tail mass
            ``<= tail_atol`` there is treated as zero instead of producing ``+inf``. The
            default (``None``) is 64 machine epsilons of the less precise input dtype
            (~7.6e-6 for float32, ~1.4e-14 for float64). Pass 0.0 for the strict rule.

    Conventions (``0 * log(0 / x) = 0``):

    * a base entry of ``-inf`` (probability 0), or ``P_T == 0``, contributes 0;
    * an entry the base gives positive probability but the variant ``-inf`` makes the
      token's KL ``+inf``; likewise ``P_T > tail_atol`` with ``Q_T == 0``;
    * tiny negative totals caused by round-off are clipped to 0.

    Returns:
        float64 array of shape ``(n_tokens,)``, nats per token.

    Raises:
        ValueError: on shapes other than two equal ``(n_tokens, k >= 1)`` arrays, NaN or
            ``+inf`` log-probabilities, or a negative/non-finite ``tail_atol``.
    """
    base = np.asarray(base_topk_logprobs)
    variant = np.asarray(variant_logprobs_at_base_topk)
    if base.ndim != 2:
        raise ValueError(f"base_topk_logprobs must be 2-D (n_tokens, k), got shape {base.shape}")
    if base.shape != variant.shape:
        raise ValueError(f"shape mismatch: base {base.shape} vs variant {variant.shape}")
    n_tokens, k = base.shape
    if k == 0:
        raise ValueError("k must be at least 1")
    if tail_atol is None:
        atol = _default_tail_atol(base.dtype, variant.dtype)
    else:
        atol = float(tail_atol)
        if not (math.isfinite(atol) and atol >= 0.0):
            raise ValueError(f"tail_atol must be finite and >= 0, got {tail_atol!r}")
    out = np.empty(n_tokens, dtype=np.float64)
    rows_per_chunk = max(1, _MAX_CHUNK_ELEMENTS // k)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for start in range(0, n_tokens, rows_per_chunk):
            stop = min(start + rows_per_chunk, n_tokens)
            p = base[start:stop].astype(np.float64, copy=False)
            q = variant[start:stop].astype(np.float64, copy=False)
            if np.any(np.isnan(p) | np.isposinf(p)) or np.any(np.isnan(q) | np.isposinf(q)):
                raise ValueError("log-probabilities contain NaN or +inf")
            terms = np.exp(p) * (p - q)
            terms[np.isneginf(p)] = 0.0  # 0 * log(0 / x) = 0, avoids 0 * inf = NaN
            head = terms.sum(axis=1)
            p_tail = _tail_mass(p)
            q_tail = _tail_mass(q)
            tail_term = np.zeros_like(head)
            both = (p_tail > 0.0) & (q_tail > 0.0)
            tail_term[both] = p_tail[both] * (np.log(p_tail[both]) - np.log(q_tail[both]))
            tail_term[(q_tail == 0.0) & (p_tail > atol)] = np.inf
            out[start:stop] = head + tail_term
    np.maximum(out, 0.0, out=out)
    return out


def kl_topk_tail_from_full(
    base_topk_ids: npt.ArrayLike,
    base_topk_logprobs: npt.ArrayLike,
    variant_full_logprobs: npt.ArrayLike,
    *,
    tail_atol: float | None = None,
) -> FloatArray:
    """:func:`kl_topk_tail` when the variant's full log-softmax is at hand.

    Gathers ``variant_full_logprobs[i, base_topk_ids[i, j]]`` (``np.take_along_axis``, in
    the input dtype so no full float64 copy of the ``(n_tokens, vocab)`` array is made) and
    returns the top-k + tail KL(base ‖ variant) per token, in nats, shape ``(n_tokens,)``.

    Args:
        base_topk_ids: ``(n_tokens, k)`` integer vocabulary ids of the baseline's top-k
            tokens; distinct within each row (a repeated id would count its mass twice).
        base_topk_logprobs: ``(n_tokens, k)`` the baseline's natural-log probabilities at
            those ids.
        variant_full_logprobs: ``(n_tokens, vocab)`` the variant's complete log-softmax.
        tail_atol: see :func:`kl_topk_tail`.

    Raises:
        ValueError: on non-integer, out-of-range or repeated ids, mismatched shapes, or any
            error :func:`kl_topk_tail` raises.
    """
    ids = np.asarray(base_topk_ids)
    base = np.asarray(base_topk_logprobs)
    full = np.asarray(variant_full_logprobs)
    if ids.ndim != 2:
        raise ValueError(f"base_topk_ids must be 2-D (n_tokens, k), got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"base_topk_ids must be integers, got dtype {ids.dtype}")
    if base.shape != ids.shape:
        raise ValueError(f"shape mismatch: ids {ids.shape} vs base logprobs {base.shape}")
    if full.ndim != 2 or full.shape[0] != ids.shape[0]:
        raise ValueError(
            f"variant_full_logprobs must be 2-D with {ids.shape[0]} rows, got shape {full.shape}"
        )
    vocab = full.shape[1]
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"base_topk_ids must lie in [0, {vocab})")
    if ids.shape[1] > 1:
        s = np.sort(ids, axis=1)
        if np.any(s[:, 1:] == s[:, :-1]):
            raise ValueError("base_topk_ids contains a repeated id within a row")
    gathered = np.take_along_axis(full, ids.astype(np.intp, copy=False), axis=1)
    return kl_topk_tail(base, gathered, tail_atol=tail_atol)


# --------------------------------------------------------------------------------------
# Generated-text comparisons (token ids)
# --------------------------------------------------------------------------------------


def _lcs_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common subsequence of two 1-D token sequences.

    Standard O(len(a) * len(b)) dynamic programme, one numpy row update per token of the
    shorter sequence. The row recurrence ``cur[j] = max(cur[j-1], prev[j],
    prev[j-1] + 1 if match)`` is a running maximum, hence ``np.maximum.accumulate``.
    """
    x = np.asarray(a)
    y = np.asarray(b)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"token sequences must be 1-D, got shapes {x.shape} and {y.shape}")
    if x.size > y.size:
        x, y = y, x
    prev = np.zeros(y.size + 1, dtype=np.int64)
    for tok in x:
        cand = np.where(y == tok, prev[:-1] + 1, prev[1:])
        cur = np.empty_like(prev)
        cur[0] = 0
        np.maximum.accumulate(cand, out=cur[1:])
        prev = cur
    return int(prev[-1])


def rouge_l_f1(candidate: Sequence[int], reference: Sequence[int]) -> float:
    """ROUGE-L F1 (beta = 1) between two token-id sequences, in ``[0, 1]``.

    With ``L`` the longest-common-subsequence length, precision ``L / len(candidate)``,
    recall ``L / len(reference)`` and F1 their harmonic mean, ``2 L / (len(c) + len(r))``.
    Used to compare a quantized model's greedy generation with the baseline's: it rewards
    the same tokens in the same order even after an early divergence shifts positions.

    Operating on token ids keeps it language-neutral. (The popular ``rouge_score`` package's
    default tokenizer keeps only ``[a-z0-9]`` runs, so CJK or other non-Latin text
    tokenizes to nothing and scores as empty.) Both sequences should come from the same
    tokenizer. Both empty gives 1.0 (identical); exactly one empty gives 0.0.

    Cost is O(len(c) * len(r)) time, fine for generations up to a few thousand tokens.

    Raises:
        ValueError: if an input is not a 1-D sequence.
    """
    n_c, n_r = len(candidate), len(reference)
    if n_c == 0 and n_r == 0:
        return 1.0
    lcs = _lcs_length(candidate, reference)  # checks both are 1-D, even next to an empty one
    return 2.0 * lcs / (n_c + n_r)


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first position where two token sequences differ, or ``None``.

    If one sequence is a strict prefix of the other, the answer is the length of the
    shorter one (the first position the shorter lacks). ``None`` means identical. Reported
    for greedy generations: how many tokens the variant reproduces before diverging.
    """
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    if len(a) != len(b):
        return min(len(a), len(b))
    return None


def exact_match_rate(pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> float:
    """Fraction (0..1) of ``(variant, baseline)`` token sequences that are identical.

    Raises:
        ValueError: if ``pairs`` is empty (the rate would be undefined).
    """
    if len(pairs) == 0:
        raise ValueError("pairs must not be empty")
    matches = sum(first_difference(a, b) is None for a, b in pairs)
    return matches / len(pairs)


# --------------------------------------------------------------------------------------
# Timing records and paired perplexity comparison
# --------------------------------------------------------------------------------------


def spread(samples: npt.ArrayLike) -> dict[str, float]:
    """Compact dictionary summary of repeated timings (same unit as ``samples``, seconds).

    Keys: ``n`` (an int), ``median``, ``p90``, ``mean``, ``min``, ``max`` and ``cv``
    (``std(ddof=1) / mean``, dimensionless; 0 for a single sample, NaN when the mean is 0).
    The median is the figure to report for timings (robust to a slow first repeat); ``cv``
    flags unstable measurements. Values come from :func:`summarize`.

    Raises:
        ValueError: on empty or non-finite samples.
    """
    s = summarize(samples)
    return {
        "n": s.n,
        "median": s.median,
        "p90": s.p90,
        "mean": s.mean,
        "min": s.min,
        "max": s.max,
        "cv": s.cv,
    }


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
