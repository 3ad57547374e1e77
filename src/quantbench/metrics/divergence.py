"""Divergence from the baseline's own predictions: llama.cpp's `--kl-divergence` statistics.

KL(baseline ‖ variant) per token (mean with interval, percentiles 99.9 to 0.1, min, max),
top-1 agreement ("same top p"), Δp of the actual next token (mean and RMS with intervals,
percentiles, min, max), and the perplexity comparison llama.cpp prints next to them: mean
ln(PPL(variant)/PPL(baseline)) and the PPL ratio with intervals, and the correlation of the
two models' ln PPL over tokens and over windows. Intervals are bootstrapped over windows
(tokens within a window are correlated); the statistics are `quantbench.stats.divergence`'s.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from quantbench.config import EvaluationConfig
from quantbench.metrics.base import EvalContext
from quantbench.metrics.scores import SCORES_FILE
from quantbench.results import DivergenceRecord, Interval
from quantbench.stats import divergence as stats_divergence
from quantbench.store import MANIFEST


def _interval(values: tuple[float, float, float]) -> Interval:
    estimate, low, high = values
    return Interval(estimate=estimate, low=low, high=high)


def _defined(value: float) -> float | None:
    return None if math.isnan(value) else value


class DivergenceMetric:
    name = "divergence"
    version = 2
    needs_model = False
    uses_corpus = True
    own_inputs: tuple[str, ...] = ("scores",)
    baseline_inputs: tuple[str, ...] = ("scores",)
    reported = True
    timed = False

    def key_config(self, config: EvaluationConfig) -> dict[str, Any]:
        """The divergence method is added by the planner, as for the scores stage."""
        return {"confidence": 0.95, "seed": config.seed}

    def compute(self, ctx: EvalContext) -> DivergenceRecord:
        arrays = np.load(ctx.own["scores"] / SCORES_FILE)
        base_arrays = np.load(ctx.baseline["scores"] / SCORES_FILE)
        summary = json.loads((ctx.own["scores"] / MANIFEST).read_text())["record"]
        index = arrays["window_index"]
        if not np.array_equal(index, base_arrays["window_index"]):
            raise RuntimeError(
                "the evaluated tokens differ from the baseline's; divergences are not comparable"
            )
        seed = ctx.config.seed
        kl = arrays["kl"].astype(np.float64)
        top1 = arrays["top1"].astype(np.float64)
        delta = arrays["ref_prob_delta"].astype(np.float64)
        nll = -arrays["token_logprobs"].astype(np.float64)
        base_nll = -base_arrays["token_logprobs"].astype(np.float64)
        kl_summary = stats_divergence.distribution_summary(kl, stats_divergence.KLD_PERCENTILES)
        delta_summary = stats_divergence.distribution_summary(
            delta, stats_divergence.DELTA_P_PERCENTILES
        )
        delta_mean = stats_divergence.window_mean_ci(delta, index, seed=seed)
        n_windows = int(index.max()) + 1
        window_nll = np.bincount(index, weights=nll, minlength=n_windows)
        window_base_nll = np.bincount(index, weights=base_nll, minlength=n_windows)
        counts = np.bincount(index, minlength=n_windows).astype(np.float64)
        present = counts > 0
        window_nll, window_base_nll, counts = (
            window_nll[present],
            window_base_nll[present],
            counts[present],
        )
        token_correlation = (
            stats_divergence.pearson_correlation(nll, base_nll) if len(nll) > 1 else math.nan
        )
        window_correlation = (
            stats_divergence.pearson_correlation(window_nll / counts, window_base_nll / counts)
            if len(counts) > 1
            else math.nan
        )
        return DivergenceRecord(
            n_tokens=len(kl),
            top_k=int(summary["top_k"]),
            method=summary.get("method", "topk_tail"),
            method_detail=summary.get("method_detail", ""),
            kl_mean=_interval(stats_divergence.window_mean_ci(kl, index, seed=seed)),
            kl_median=kl_summary["p50"],
            kl_p99=kl_summary["p99"],
            kl_max=kl_summary["max"],
            kl_percentiles=kl_summary,
            top1_agreement=_interval(stats_divergence.window_mean_ci(top1, index, seed=seed)),
            ref_prob_delta={"mean": delta_mean[0], **delta_summary},
            ref_prob_delta_mean=_interval(delta_mean),
            ref_prob_delta_rms=_interval(stats_divergence.window_rms_ci(delta, index, seed=seed)),
            ln_ppl_ratio=_interval(
                stats_divergence.ln_ppl_ratio_ci(window_nll, window_base_nll, counts, seed=seed)
            ),
            ppl_ratio=_interval(
                stats_divergence.ppl_ratio_ci(window_nll, window_base_nll, counts, seed=seed)
            ),
            ln_ppl_correlation_tokens=_defined(token_correlation),
            ln_ppl_correlation_windows=_defined(window_correlation),
            approximation=summary["approximation"],
        )
