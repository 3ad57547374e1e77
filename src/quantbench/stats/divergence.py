"""Statistics of llama.cpp's `--kl-divergence` report, computed per token and over windows.

Pure functions of numpy arrays (no I/O, no torch), like the rest of :mod:`quantbench.stats`, whose
bootstrap they build on. Units: KL in nats per token, Δp in probability units (``[-1, 1]``),
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

The per-token KL itself comes from the full distributions (`kl_divergence_per_token`, the
exact method) or from the baseline's stored top-k log-probabilities plus the tail mass
(`kl_topk_tail`, a lower bound of the exact KL).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from quantbench.stats._checks import (
    _MAX_CHUNK_ELEMENTS,
    FloatArray,
    _as_1d_finite,
    _check_logprob_pair,
)
from quantbench.stats.intervals import percentiles, ratio_bootstrap_ci


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


KLD_PERCENTILES: tuple[float, ...] = (99.9, 99, 95, 90, 50, 10, 5, 1, 0.1)
"""The KLD percentiles llama.cpp prints, highest first (50 is its "Median")."""
DELTA_P_PERCENTILES: tuple[float, ...] = (99.9, 99, 95, 90, 75, 50, 25, 10, 5, 1, 0.1)
"""The Δp percentiles llama.cpp prints, highest first."""


def _window_sums(
    values: npt.ArrayLike, window_index: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Per-window sums of ``values`` and token counts, for windows that hold any token."""
    v = _as_1d_finite(values, "values")
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
    :func:`quantbench.ratio_bootstrap_ci`). Returns ``(mean, low, high)`` in the unit
    of ``values``.
    """
    sums, counts = _window_sums(values, window_index)
    return ratio_bootstrap_ci(
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
    v = _as_1d_finite(values, "values")
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
    v = _as_1d_finite(variant_nll_sums, "variant_nll_sums")
    b = _as_1d_finite(baseline_nll_sums, "baseline_nll_sums")
    t = _as_1d_finite(token_counts, "token_counts")
    if not v.size == b.size == t.size:
        raise ValueError(
            f"length mismatch: {v.size} variant, {b.size} baseline, {t.size} token counts"
        )
    return ratio_bootstrap_ci(v - b, t, confidence=confidence, n_resamples=n_resamples, seed=seed)


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
    a = _as_1d_finite(x, "x")
    b = _as_1d_finite(y, "y")
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
    """Percentiles ``qs`` (keys ``"p99.9"``, ``"p50"``... as :func:`quantbench.percentiles`
    names them, linear interpolation) plus ``"min"`` and ``"max"``, in the unit of ``values``.

    Raises:
        ValueError: on empty or non-finite ``values``.
    """
    arr = _as_1d_finite(values, "values")
    return {
        **percentiles(arr, qs),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }
