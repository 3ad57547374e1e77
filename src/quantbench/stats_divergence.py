"""Statistics of llama.cpp's `--kl-divergence` report, computed per token and over windows.

Pure functions of numpy arrays (no I/O, no torch), like :mod:`quantbench.stats`, whose
helpers they build on. Units: KL in nats per token, Δp in probability units (``[-1, 1]``),
ln PPL ratios in nats per token, correlations and agreement rates dimensionless.

Intervals are percentile bootstraps over evaluation *windows* (tokens within a window
share context and are not independent), where llama.cpp prints a standard error that
treats every token as independent; the windows' interval is the honest, wider one.

llama.cpp's definitions (tools/perplexity/perplexity.cpp) followed here:

* KLD: ``sum_v p_base(v) (ln p_base(v) - ln p_Q(v))`` per token, over the full vocabulary;
* Δp: ``p_Q(t) - p_base(t)`` for the *actual next token* ``t`` of the text;
* "Same top p": the share of tokens whose argmax is the same for both models;
* RMS Δp: ``sqrt(mean(Δp²))``;
* ``Cor(ln(PPL(Q)), ln(PPL(base)))``: Pearson correlation of the per-token NLLs (also given
  here over windows, each window's mean NLL being its ln PPL);
* ``Mean ln(PPL(Q)/PPL(base))``: mean NLL of Q minus mean NLL of base; the PPL ratio is its
  exponential.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from quantbench import stats

__all__ = [
    "DELTA_P_PERCENTILES",
    "KLD_PERCENTILES",
    "distribution_summary",
    "ln_ppl_ratio_ci",
    "pearson_correlation",
    "ppl_ratio_ci",
    "same_top_token",
    "window_mean_ci",
    "window_rms_ci",
]

FloatArray = npt.NDArray[np.float64]

KLD_PERCENTILES: tuple[float, ...] = (99.9, 99, 95, 90, 50, 10, 5, 1, 0.1)
"""The KLD percentiles llama.cpp prints, highest first (50 is its "Median")."""
DELTA_P_PERCENTILES: tuple[float, ...] = (99.9, 99, 95, 90, 75, 50, 25, 10, 5, 1, 0.1)
"""The Δp percentiles llama.cpp prints, highest first."""


def same_top_token(
    base_top_ids: npt.ArrayLike, variant_logprobs: npt.ArrayLike
) -> npt.NDArray[np.bool_]:
    """Per token: is the variant's most likely token the baseline's stored top-1 id?

    For the top-k fallback, where the baseline is kept only as its top-k ids (most likely
    first) and the variant's ``(n_tokens, vocab)`` log-probs (or logits) are at hand. Ties
    in the variant resolve to the lowest id, as ``np.argmax`` does.

    Raises:
        ValueError: unless ``base_top_ids`` is 1-D integers with one id per variant row.
    """
    ids = np.asarray(base_top_ids)
    variant = np.asarray(variant_logprobs)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"base_top_ids must be 1-D integers, got {ids.dtype} {ids.shape}")
    if variant.ndim != 2 or variant.shape[0] != ids.shape[0]:
        raise ValueError(
            f"variant_logprobs must be 2-D with {ids.shape[0]} rows, got shape {variant.shape}"
        )
    result: npt.NDArray[np.bool_] = np.argmax(variant, axis=1) == ids
    return result


def _window_sums(
    values: npt.ArrayLike, window_index: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Per-window sums of ``values`` and token counts, for windows that hold any token."""
    v = stats._as_1d_finite(values, "values")
    index = np.asarray(window_index)
    if index.shape != v.shape or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(
            f"window_index must be integers of shape {v.shape}, got {index.dtype} {index.shape}"
        )
    if np.any(index < 0):
        raise ValueError("window_index must not be negative")
    sums = np.bincount(index, weights=v).astype(np.float64)
    counts = np.bincount(index).astype(np.float64)
    present = counts > 0
    return sums[present], counts[present]


def window_mean_ci(
    values: npt.ArrayLike,
    window_index: npt.ArrayLike,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Token mean of ``values`` with a bootstrap interval that resamples windows.

    ``window_index[i]`` names the window of token ``i``. The estimate is the plain mean over
    all tokens; each resample draws whole windows (sum and count together, see
    :func:`quantbench.stats.ratio_bootstrap_ci`). Returns ``(mean, low, high)`` in the unit
    of ``values``.
    """
    sums, counts = _window_sums(values, window_index)
    return stats.ratio_bootstrap_ci(
        sums, counts, confidence=confidence, n_resamples=n_resamples, seed=seed
    )


def window_rms_ci(
    values: npt.ArrayLike,
    window_index: npt.ArrayLike,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Root mean square ``sqrt(mean(values²))`` with a window-bootstrap interval.

    The square root is monotonic, so the percentile interval of the mean square maps
    exactly onto the RMS. Used for llama.cpp's "RMS Δp" (probability units).
    """
    v = stats._as_1d_finite(values, "values")
    mean_square, low, high = window_mean_ci(
        v * v, window_index, confidence=confidence, n_resamples=n_resamples, seed=seed
    )
    return math.sqrt(mean_square), math.sqrt(low), math.sqrt(high)


def ln_ppl_ratio_ci(
    variant_nll_sums: npt.ArrayLike,
    baseline_nll_sums: npt.ArrayLike,
    token_counts: npt.ArrayLike,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``ln(PPL(variant) / PPL(baseline))`` = mean NLL difference, nats per token.

    Per-window NLL sums (nats) of both models over the same windows, and the windows' token
    counts. Windows are resampled in pairs (one draw for both models), so the difficulty
    both share cancels. Returns ``(estimate, low, high)``; positive means the variant is
    worse.

    Raises:
        ValueError: on length mismatch, empty or non-finite input, any count ``<= 0``.
    """
    v = stats._as_1d_finite(variant_nll_sums, "variant_nll_sums")
    b = stats._as_1d_finite(baseline_nll_sums, "baseline_nll_sums")
    t = stats._as_1d_finite(token_counts, "token_counts")
    if not v.size == b.size == t.size:
        raise ValueError(
            f"length mismatch: {v.size} variant, {b.size} baseline, {t.size} token counts"
        )
    return stats.ratio_bootstrap_ci(
        v - b, t, confidence=confidence, n_resamples=n_resamples, seed=seed
    )


def ppl_ratio_ci(
    variant_nll_sums: npt.ArrayLike,
    baseline_nll_sums: npt.ArrayLike,
    token_counts: npt.ArrayLike,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``PPL(variant) / PPL(baseline)`` with the paired window interval (dimensionless):
    the exponential of :func:`ln_ppl_ratio_ci`, exact for the percentile interval since
    ``exp`` is monotonic."""
    estimate, low, high = ln_ppl_ratio_ci(
        variant_nll_sums,
        baseline_nll_sums,
        token_counts,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
    )
    return math.exp(estimate), math.exp(low), math.exp(high)


def pearson_correlation(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Pearson correlation coefficient of two equally long samples, in ``[-1, 1]``.

    Computed on centred float64 values. NaN when either sample is constant (the coefficient
    is undefined then, e.g. a variant identical to its baseline on a one-window corpus).

    Raises:
        ValueError: on length mismatch, fewer than two values, or non-finite input.
    """
    a = stats._as_1d_finite(x, "x")
    b = stats._as_1d_finite(y, "y")
    if a.size != b.size:
        raise ValueError(f"length mismatch: {a.size} vs {b.size}")
    if a.size < 2:
        raise ValueError("a correlation needs at least two values")
    da = a - a.mean()
    db = b - b.mean()
    denominator = math.sqrt(float(np.dot(da, da)) * float(np.dot(db, db)))
    if denominator == 0.0:
        return math.nan
    return max(-1.0, min(1.0, float(np.dot(da, db)) / denominator))


def distribution_summary(values: npt.ArrayLike, qs: tuple[float, ...]) -> dict[str, float]:
    """Percentiles ``qs`` (keys ``"p99.9"``, ``"p50"``... as :func:`quantbench.stats.percentiles`
    names them, linear interpolation) plus ``"min"`` and ``"max"``, in the unit of ``values``.

    Raises:
        ValueError: on empty or non-finite ``values``.
    """
    arr = stats._as_1d_finite(values, "values")
    return {
        **stats.percentiles(arr, qs),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }
