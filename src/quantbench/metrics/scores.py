"""One scoring pass over the corpus windows: per-token log-probs and divergence arrays.

The baseline's pass also writes the *reference*: for every scored token the baseline's top-k
token ids and log-probs (the rest of its distribution kept as one tail mass) and the log-prob
of the actual next token, plus the full float32 distribution of the first
`exact_check_tokens` tokens. Every variant (the baseline too) is then compared with that
reference by the same code in the same pass, so perplexity and divergence cost one forward
over the corpus per variant. The full distribution of the first tokens measures the error of
the top-k + tail approximation of KL (it is a lower bound of the exact KL, and exact when the
tail is empty).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pydantic import BaseModel

from quantbench import stats
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


class _Reference:
    """The baseline's stored distribution, or one being built during the baseline's pass."""

    def __init__(self, arrays: dict[str, np.ndarray] | None) -> None:
        self.building = arrays is None
        self.parts: dict[str, list[np.ndarray]] = {
            "topk_ids": [],
            "topk_logprobs": [],
            "token_logprobs": [],
            "check_full": [],
        }
        self.arrays = arrays

    def take(self, name: str, start: int, stop: int) -> np.ndarray:
        assert self.arrays is not None
        return self.arrays[name][start:stop]

    def finish(self) -> dict[str, np.ndarray]:
        arrays = {name: np.concatenate(parts) for name, parts in self.parts.items() if parts}
        self.arrays = arrays
        return arrays


class ScoresStage:
    name = "scores"
    version = 1
    needs_model = True
    uses_corpus = True
    own_inputs: tuple[str, ...] = ()
    baseline_inputs: tuple[str, ...] = ("scores",)
    reported = False

    def key_config(self, config: EvaluationConfig) -> dict[str, Any]:
        corpus = config.corpus
        return {"top_k": corpus.top_k, "exact_check_tokens": corpus.exact_check_tokens}

    def compute(self, ctx: EvalContext) -> BaseModel:
        windows = ctx.windows
        assert windows is not None, "the scores stage always gets the corpus windows"
        corpus = ctx.config.corpus
        reference = _Reference(
            None if ctx.is_baseline else dict(np.load(ctx.baseline["scores"] / REFERENCE_FILE))
        )
        backend, _ = ctx.backend()
        outputs: dict[str, list[np.ndarray]] = {
            "token_logprobs": [],
            "kl": [],
            "top1": [],
            "ref_prob_delta": [],
            "window_index": [],
        }
        check_exact: list[np.ndarray] = []
        check_approx: list[np.ndarray] = []
        check_left = corpus.exact_check_tokens
        counts = [
            len(w) - 1 - skip for w, skip in zip(windows.windows, windows.score_from, strict=True)
        ]
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        full_for = (
            int(np.searchsorted(starts[1:], check_left, side="left")) + 1 if check_left else 0
        )
        gather = None
        if not reference.building:
            # A variant needs only its argmax, its log-probs at the baseline's top-k ids, and
            # its full distribution for the few tokens of the exactness check.
            gather = []
            ref_ids_all = reference.take("topk_ids", 0, int(starts[-1]))
            for index, (window, skip) in enumerate(
                zip(windows.windows, windows.score_from, strict=True)
            ):
                ids = np.zeros((len(window) - 1, ref_ids_all.shape[1]), dtype=np.int64)
                ids[skip:] = ref_ids_all[starts[index] : starts[index + 1]]
                gather.append(ids)
        top_k = corpus.top_k if reference.building else 1
        total = len(windows.windows)
        started = time.perf_counter()
        scored = backend.score_windows(
            windows.windows, top_k, full_vocab_for=full_for, gather_ids=gather
        )
        for index, scores in enumerate(scored):
            skip = windows.score_from[index]
            offset, count = int(starts[index]), counts[index]
            token_lp = scores.token_logprobs[skip:]
            full = scores.full_logprobs[skip:] if scores.full_logprobs is not None else None
            if reference.building:
                ref_ids, ref_lp, ref_token_lp = (
                    scores.topk_ids[skip:],
                    scores.topk_logprobs[skip:],
                    token_lp,
                )
                at_ref_ids = ref_lp
                reference.parts["topk_ids"].append(ref_ids)
                reference.parts["topk_logprobs"].append(ref_lp)
                reference.parts["token_logprobs"].append(token_lp)
                if check_left > 0 and full is not None:
                    reference.parts["check_full"].append(full[:check_left].copy())
                ref_full = full[:check_left] if check_left > 0 and full is not None else None
            else:
                assert scores.gathered_logprobs is not None
                ref_ids = reference.take("topk_ids", offset, offset + count)
                ref_lp = reference.take("topk_logprobs", offset, offset + count)
                ref_token_lp = reference.take("token_logprobs", offset, offset + count)
                at_ref_ids = scores.gathered_logprobs[skip:]
                ref_full = (
                    reference.take("check_full", offset, offset + min(check_left, count))
                    if check_left > 0 and "check_full" in (reference.arrays or {})
                    else None
                )
            kl = stats.kl_topk_tail(ref_lp, at_ref_ids)
            if ref_full is not None and len(ref_full) and full is not None:
                m = len(ref_full)
                check_exact.append(stats.kl_divergence_per_token(ref_full, full[:m]))
                check_approx.append(kl[:m])
                check_left -= m
            outputs["token_logprobs"].append(token_lp.astype(np.float32))
            outputs["kl"].append(kl.astype(np.float32))
            outputs["top1"].append(scores.topk_ids[skip:, 0] == ref_ids[:, 0])
            outputs["ref_prob_delta"].append(
                np.exp(token_lp.astype(np.float64)) - np.exp(ref_token_lp.astype(np.float64))
            )
            outputs["window_index"].append(np.full(count, index, dtype=np.int32))
            ctx.progress("scoring", index + 1, total)
        offset = int(starts[-1])
        pass_s = time.perf_counter() - started
        arrays = {name: np.concatenate(parts) for name, parts in outputs.items()}
        np.savez(ctx.work / SCORES_FILE, **arrays)  # type: ignore[arg-type]
        if reference.building:
            np.savez(ctx.work / REFERENCE_FILE, **reference.finish())  # type: ignore[arg-type]
        approximation: dict[str, float] = {"check_tokens": 0.0}
        if check_exact:
            exact = np.concatenate(check_exact)
            approx = np.concatenate(check_approx)
            approximation = {
                "check_tokens": float(len(exact)),
                "kl_mean_exact": float(exact.mean()),
                "kl_mean_approx": float(approx.mean()),
                "max_abs_error": float(np.max(np.abs(exact - approx))),
            }
        return ScoresSummary(
            n_tokens=offset,
            n_windows=total,
            tokens_sha256=windows.tokens_sha256,
            top_k=corpus.top_k,
            pass_s=pass_s,
            tokens_per_s=sum(len(w) for w in windows.windows) / pass_s if pass_s > 0 else 0.0,
            approximation=approximation,
        )
