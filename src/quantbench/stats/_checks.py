"""Input checks the statistics modules share: finite 1-D samples, confidence levels,
resample counts, pairs of log-probability arrays; and the memory bound of their chunks."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# Upper bound on the number of float64 elements materialised at once by the bootstrap and
# KL helpers (2**22 elements = 32 MiB per temporary), so that bootstrapping 10^5 per-token
# values or computing KL over a 150k-token vocabulary does not allocate gigabytes.
_MAX_CHUNK_ELEMENTS = 1 << 22


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
