"""One scoring pass over the corpus windows: per-token log-probs and divergence arrays.

The baseline's pass writes the *reference*: for every scored token the baseline's top-k
token ids and log-probs (the rest of its distribution kept as one tail mass) and the log-prob
of the actual next token, plus the full float32 distribution of the first
`exact_check_tokens` tokens.

A variant's pass compares it with the baseline by one of two methods, chosen when the study
is planned (`quantbench.evaluate.plan_divergence`) and part of the stage key:

* ``exact`` (the default): the baseline is loaded next to the variant in the same worker and
  both score every window over the full vocabulary; KL, top-1 agreement and Δp are reduced
  window by window, so nothing larger than one batch of windows is ever held;
* ``topk_tail`` (when two copies of the model do not fit in memory, or the backend cannot
  hold two): KL from the stored top-k + tail (a lower bound), top-1 from the stored top-1 id.

Either way the first `exact_check_tokens` tokens also get the other figure, so the record
says how far the top-k + tail approximation is from the exact KL on this model. Perplexity
and divergence then summarize the arrays written here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import BaseModel

from quantbench import stats
from quantbench.backends.base import WindowScores
from quantbench.config import EvaluationConfig
from quantbench.metrics.base import EvalContext

SCORES_FILE = "scores.npz"
REFERENCE_FILE = "reference.npz"


class ScoresSummary(BaseModel):
    n_tokens: int
    n_windows: int
    tokens_sha256: str
    top_k: int
    pass_s: float
    tokens_per_s: float
    approximation: dict[str, float]
    method: str = "topk_tail"
    method_detail: str = ""
    baseline_load_s: float = 0.0
    """Seconds to load the baseline next to the variant (exact method), not in `pass_s`."""


class ScoresStage:
    name = "scores"
    version = 2
    needs_model = True
    uses_corpus = True
    own_inputs: tuple[str, ...] = ()
    baseline_inputs: tuple[str, ...] = ("scores",)
    reported = False
    timed = False

    def key_config(self, config: EvaluationConfig) -> dict[str, Any]:
        """The divergence method is added by the planner (it depends on memory and backend)."""
        corpus = config.corpus
        return {"top_k": corpus.top_k, "exact_check_tokens": corpus.exact_check_tokens}

    def compute(self, ctx: EvalContext) -> BaseModel:
        windows = ctx.windows
        assert windows is not None, "the scores stage always gets the corpus windows"
        corpus = ctx.config.corpus
        counts = [
            len(w) - 1 - skip for w, skip in zip(windows.windows, windows.score_from, strict=True)
        ]
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        n_tokens = int(starts[-1])
        check_tokens = min(corpus.exact_check_tokens, n_tokens)
        check_windows = (
            int(np.searchsorted(starts[1:], check_tokens, side="left")) + 1 if check_tokens else 0
        )
        method = ctx.divergence_method
        backend, _ = ctx.backend()
        outputs = _Outputs()
        check = _Check(check_tokens)
        total = len(windows.windows)
        baseline_load_s = 0.0
        started = time.perf_counter()
        if ctx.is_baseline:
            reference = _baseline_pass(
                backend.score_windows(windows.windows, corpus.top_k, full_vocab_for=check_windows),
                windows.score_from,
                outputs,
                ctx,
                total,
            )
            if check_tokens:
                reference["check_full"] = reference["check_full"][:check_tokens]
            np.savez(ctx.work / REFERENCE_FILE, **reference)  # type: ignore[arg-type]
        else:
            reference = dict(np.load(ctx.baseline["scores"] / REFERENCE_FILE))
            if method == "exact":
                load_started = time.perf_counter()
                baseline_backend = ctx.open_baseline()
                baseline_load_s = time.perf_counter() - load_started
                started += baseline_load_s
                try:
                    pairs = zip(
                        backend.score_windows(windows.windows, 1, full_vocab_for=total),
                        baseline_backend.score_windows(windows.windows, 1, full_vocab_for=total),
                        strict=True,
                    )
                    _exact_pass(pairs, windows.score_from, starts, reference, outputs, check, ctx)
                finally:
                    baseline_backend.close()
            else:
                _topk_tail_pass(
                    backend.score_windows(
                        windows.windows,
                        1,
                        full_vocab_for=check_windows,
                        gather_ids=_at_reference_ids(reference, windows.score_from, starts),
                    ),
                    windows.score_from,
                    starts,
                    reference,
                    outputs,
                    check,
                    ctx,
                )
        pass_s = time.perf_counter() - started
        np.savez(ctx.work / SCORES_FILE, **outputs.arrays())  # type: ignore[arg-type]
        return ScoresSummary(
            n_tokens=n_tokens,
            n_windows=total,
            tokens_sha256=windows.tokens_sha256,
            top_k=corpus.top_k,
            pass_s=pass_s,
            tokens_per_s=sum(len(w) for w in windows.windows) / pass_s if pass_s > 0 else 0.0,
            approximation=check.summary(),
            method=method,
            method_detail=ctx.divergence_detail,
            baseline_load_s=baseline_load_s,
        )


class _Outputs:
    """The per-token arrays of scores.npz, built window by window."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {
            "token_logprobs": [],
            "kl": [],
            "top1": [],
            "ref_prob_delta": [],
            "window_index": [],
        }

    def add(
        self,
        index: int,
        token_logprobs: np.ndarray,
        kl: np.ndarray,
        top1: np.ndarray,
        ref_prob_delta: np.ndarray,
    ) -> None:
        self.parts["token_logprobs"].append(token_logprobs.astype(np.float32))
        self.parts["kl"].append(kl.astype(np.float64))
        self.parts["top1"].append(top1.astype(bool))
        self.parts["ref_prob_delta"].append(ref_prob_delta.astype(np.float64))
        self.parts["window_index"].append(np.full(len(kl), index, dtype=np.int32))

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.concatenate(parts) for name, parts in self.parts.items()}


class _Check:
    """Exact and top-k + tail KL side by side on the first tokens (the approximation's error)."""

    def __init__(self, tokens: int) -> None:
        self.left = tokens
        self.exact: list[np.ndarray] = []
        self.approx: list[np.ndarray] = []

    def add(self, exact: np.ndarray, approx: np.ndarray) -> None:
        self.exact.append(exact)
        self.approx.append(approx)
        self.left -= len(exact)

    def summary(self) -> dict[str, float]:
        if not self.exact:
            return {"check_tokens": 0.0}
        exact = np.concatenate(self.exact)
        approx = np.concatenate(self.approx)
        return {
            "check_tokens": float(len(exact)),
            "kl_mean_exact": float(exact.mean()),
            "kl_mean_approx": float(approx.mean()),
            "max_abs_error": float(np.max(np.abs(exact - approx))),
        }


def _baseline_pass(
    scored: Iterator[WindowScores],
    score_from: list[int],
    outputs: _Outputs,
    ctx: EvalContext,
    total: int,
) -> dict[str, np.ndarray]:
    """The baseline compared with itself (KL 0, Δp 0, top-1 agreement 1: exact by
    definition, through the same functions), while its reference is collected."""
    parts: dict[str, list[np.ndarray]] = {
        "topk_ids": [],
        "topk_logprobs": [],
        "token_logprobs": [],
        "check_full": [],
    }
    for index, scores in enumerate(scored):
        skip = score_from[index]
        token_lp = scores.token_logprobs[skip:]
        top_lp = scores.topk_logprobs[skip:]
        parts["topk_ids"].append(scores.topk_ids[skip:])
        parts["topk_logprobs"].append(top_lp)
        parts["token_logprobs"].append(token_lp)
        if scores.full_logprobs is not None:
            parts["check_full"].append(scores.full_logprobs[skip:])
        outputs.add(
            index,
            token_lp,
            stats.kl_topk_tail(top_lp, top_lp),
            scores.topk_ids[skip:, 0] == scores.topk_ids[skip:, 0],
            stats.reference_prob_delta(token_lp, token_lp),
        )
        ctx.progress("scoring", index + 1, total)
    return {name: np.concatenate(p) for name, p in parts.items() if p}


def _check_against_topk(
    check: _Check,
    reference: dict[str, np.ndarray],
    offset: int,
    exact_kl: np.ndarray,
    variant_full: np.ndarray,
) -> None:
    """The top-k + tail KL of the first tokens next to their exact KL (exact method)."""
    m = min(check.left, len(exact_kl))
    if m <= 0:
        return
    approx = stats.kl_topk_tail_from_full(
        reference["topk_ids"][offset : offset + m],
        reference["topk_logprobs"][offset : offset + m],
        variant_full[:m],
    )
    check.add(exact_kl[:m], approx)


def _exact_pass(
    pairs: Iterator[tuple[WindowScores, WindowScores]],
    score_from: list[int],
    starts: np.ndarray,
    reference: dict[str, np.ndarray],
    outputs: _Outputs,
    check: _Check,
    ctx: EvalContext,
) -> None:
    """KL, top-1 and Δp of every token from both full distributions, one window at a time."""
    total = len(score_from)
    for index, (variant, base) in enumerate(pairs):
        skip = score_from[index]
        assert variant.full_logprobs is not None and base.full_logprobs is not None
        variant_full = variant.full_logprobs[skip:]
        base_full = base.full_logprobs[skip:]
        kl = stats.kl_divergence_per_token(base_full, variant_full, renormalize=True)
        _check_against_topk(check, reference, int(starts[index]), kl, variant_full)
        outputs.add(
            index,
            variant.token_logprobs[skip:],
            kl,
            stats.top1_agreement(base_full, variant_full),
            stats.reference_prob_delta(base.token_logprobs[skip:], variant.token_logprobs[skip:]),
        )
        ctx.progress("scoring", index + 1, total)


def _at_reference_ids(
    reference: dict[str, np.ndarray], score_from: list[int], starts: np.ndarray
) -> list[np.ndarray]:
    """Per window, the baseline's top-k ids at every target position: the ids at which the
    variant's log-probs are gathered (positions before `score_from` are not scored and
    gather id 0)."""
    ids = reference["topk_ids"]
    gather: list[np.ndarray] = []
    for index, skip in enumerate(score_from):
        offset, stop = int(starts[index]), int(starts[index + 1])
        window_ids = np.zeros((skip + stop - offset, ids.shape[1]), dtype=np.int64)
        window_ids[skip:] = ids[offset:stop]
        gather.append(window_ids)
    return gather


def _topk_tail_pass(
    scored: Iterator[WindowScores],
    score_from: list[int],
    starts: np.ndarray,
    reference: dict[str, np.ndarray],
    outputs: _Outputs,
    check: _Check,
    ctx: EvalContext,
) -> None:
    """KL from the baseline's stored top-k + tail, Δp and top-1 from its stored token
    log-probs and top-1 ids; the first tokens also against the stored full distribution.

    The variant's log-probs come gathered at the baseline's top-k ids, with its own top-1
    id: its full distribution is materialized only for the windows of the exactness check
    (a whole row is 49,152 floats a token for the built-in model, and the vllm backend
    ships rows between processes)."""
    total = len(score_from)
    check_full = reference.get("check_full")
    for index, scores in enumerate(scored):
        skip = score_from[index]
        offset, stop = int(starts[index]), int(starts[index + 1])
        assert scores.gathered_logprobs is not None
        ref_ids = reference["topk_ids"][offset:stop]
        kl = stats.kl_topk_tail(
            reference["topk_logprobs"][offset:stop], scores.gathered_logprobs[skip:]
        )
        m = min(check.left, len(kl))
        if check_full is not None and m > 0:
            assert scores.full_logprobs is not None
            exact = stats.kl_divergence_per_token(
                check_full[offset : offset + m], scores.full_logprobs[skip:][:m], renormalize=True
            )
            check.add(exact, kl[:m])
        outputs.add(
            index,
            scores.token_logprobs[skip:],
            kl,
            scores.topk_ids[skip:, 0] == ref_ids[:, 0],
            stats.reference_prob_delta(
                reference["token_logprobs"][offset:stop], scores.token_logprobs[skip:]
            ),
        )
        ctx.progress("scoring", index + 1, total)
