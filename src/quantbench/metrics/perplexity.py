"""Perplexity over the corpus windows, with a bootstrap interval over windows and the paired
difference from the baseline (same windows resampled for both)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from quantbench import stats
from quantbench.config import EvaluationConfig
from quantbench.metrics.base import EvalContext
from quantbench.metrics.scores import SCORES_FILE
from quantbench.results import Interval, PerplexityRecord
from quantbench.store import MANIFEST


def window_nll(scores_dir: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-window NLL sums (nats) and token counts, plus the hash of the scored tokens."""
    arrays = np.load(scores_dir / SCORES_FILE)
    index = arrays["window_index"]
    n_windows = int(index.max()) + 1 if len(index) else 0
    nll = np.bincount(
        index, weights=-arrays["token_logprobs"].astype(np.float64), minlength=n_windows
    )
    counts = np.bincount(index, minlength=n_windows).astype(np.float64)
    summary = json.loads((scores_dir / MANIFEST).read_text())["record"]
    return nll, counts, str(summary["tokens_sha256"])


class PerplexityMetric:
    name = "perplexity"
    version = 1
    needs_model = False
    uses_corpus = True
    own_inputs: tuple[str, ...] = ("scores",)
    baseline_inputs: tuple[str, ...] = ("scores",)
    reported = True
    timed = False

    def key_config(self, config: EvaluationConfig) -> dict[str, Any]:
        return {"confidence": 0.95, "seed": config.seed}

    def compute(self, ctx: EvalContext) -> PerplexityRecord:
        nll, counts, tokens_hash = window_nll(ctx.own["scores"])
        base_nll, base_counts, base_hash = window_nll(ctx.baseline["scores"])
        if tokens_hash != base_hash or not np.array_equal(counts, base_counts):
            raise RuntimeError(
                "the evaluated tokens differ from the baseline's; perplexities are not comparable"
            )
        ppl, low, high = stats.perplexity_ci(nll, counts, seed=ctx.config.seed)
        delta = None
        ratio = None
        if not ctx.is_baseline:
            estimate, d_low, d_high = stats.paired_window_ppl_diff_ci(
                nll, base_nll, counts, seed=ctx.config.seed
            )
            delta = Interval(estimate=estimate, low=d_low, high=d_high)
            ratio = ppl / stats.perplexity(float(base_nll.sum()), int(base_counts.sum()))
        corpus = ctx.config.corpus
        return PerplexityRecord(
            corpus=corpus.source,
            corpus_key=ctx.corpus_key,
            tokens_sha256=tokens_hash,
            window=corpus.window,
            stride=corpus.stride,
            n_windows=len(counts),
            n_tokens=int(counts.sum()),
            nll_mean=float(nll.sum() / counts.sum()),
            perplexity=Interval(estimate=ppl, low=low, high=high),
            delta_vs_baseline=delta,
            ratio_vs_baseline=ratio,
        )
