"""Divergence from the baseline's own predictions, like llama.cpp's `--kl-divergence` report:
KL(baseline ‖ variant) per token, top-1 agreement and the change of the reference token's
probability. Intervals are bootstrapped over windows (tokens within a window are correlated)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from quantbench import stats
from quantbench.config import EvaluationConfig
from quantbench.metrics.base import EvalContext
from quantbench.metrics.scores import SCORES_FILE
from quantbench.results import DivergenceRecord, Interval
from quantbench.store import MANIFEST


class DivergenceMetric:
    name = "divergence"
    version = 1
    needs_model = False
    uses_corpus = True
    own_inputs: tuple[str, ...] = ("scores",)
    baseline_inputs: tuple[str, ...] = ("scores",)
    reported = True

    def key_config(self, config: EvaluationConfig) -> dict[str, Any]:
        return {"confidence": 0.95, "seed": config.seed}

    def compute(self, ctx: EvalContext) -> DivergenceRecord:
        arrays = np.load(ctx.own["scores"] / SCORES_FILE)
        summary = json.loads((ctx.own["scores"] / MANIFEST).read_text())["record"]
        kl = arrays["kl"].astype(np.float64)
        top1 = arrays["top1"].astype(np.float64)
        index = arrays["window_index"]
        counts = np.bincount(index).astype(np.float64)
        seed = ctx.config.seed
        kl_mean, kl_low, kl_high = stats.ratio_bootstrap_ci(
            np.bincount(index, weights=kl), counts, seed=seed
        )
        agree, agree_low, agree_high = stats.ratio_bootstrap_ci(
            np.bincount(index, weights=top1), counts, seed=seed
        )
        kl_percentiles = stats.percentiles(kl, (50, 99))
        delta = arrays["ref_prob_delta"].astype(np.float64)
        return DivergenceRecord(
            n_tokens=len(kl),
            top_k=int(summary["top_k"]),
            kl_mean=Interval(estimate=kl_mean, low=kl_low, high=kl_high),
            kl_median=kl_percentiles["p50"],
            kl_p99=kl_percentiles["p99"],
            kl_max=float(kl.max()),
            top1_agreement=Interval(estimate=agree, low=agree_low, high=agree_high),
            ref_prob_delta={"mean": float(delta.mean()), **stats.percentiles(delta)},
            approximation=summary["approximation"],
        )
