"""Comparisons of generated token sequences: ROUGE-L on token ids, the first token that
differs, the exact-match rate. Pure functions; language-neutral (they see token ids)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
