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

The package, by topic: `intervals` (perplexity, the summary of repeated measurements,
bootstrap, Wilson and McNemar), `divergence` (per-token KL, top-1 agreement, Δp and
llama.cpp's divergence report), `text` (comparisons of generated token sequences), `pareto`
(fronts that respect the quality figure's interval) and `tasks` (paired task accuracy:
recovery, Holm, non-inferiority). The names most callers use are re-exported here.
"""

from __future__ import annotations

from quantbench.stats.divergence import (
    kl_divergence_per_token,
    kl_topk_tail,
    kl_topk_tail_from_full,
    reference_prob_delta,
    top1_agreement,
)
from quantbench.stats.intervals import (
    Statistic,
    bootstrap_ci,
    mcnemar_exact_p,
    paired_bootstrap_diff_ci,
    paired_window_ppl_diff_ci,
    percentiles,
    perplexity,
    perplexity_ci,
    ratio_bootstrap_ci,
    spread,
    wilson_interval,
)
from quantbench.stats.text import exact_match_rate, first_difference, rouge_l_f1

__all__ = [
    "Statistic",
    "bootstrap_ci",
    "exact_match_rate",
    "first_difference",
    "kl_divergence_per_token",
    "kl_topk_tail",
    "kl_topk_tail_from_full",
    "mcnemar_exact_p",
    "paired_bootstrap_diff_ci",
    "paired_window_ppl_diff_ci",
    "percentiles",
    "perplexity",
    "perplexity_ci",
    "ratio_bootstrap_ci",
    "reference_prob_delta",
    "rouge_l_f1",
    "spread",
    "top1_agreement",
    "wilson_interval",
]
