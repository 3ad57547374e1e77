"""The "Divergence" table: llama.cpp's `--kl-divergence` report, one column per variant.

Rows follow llama.cpp's print order (perplexity statistics, KL divergence statistics, token
probability statistics); every mean carries its interval, bootstrapped over windows where
llama.cpp prints a per-token standard error. Each column is a variant compared with the
baseline; the method row says whether its figures come from the baseline's full
distribution ("exact") or from its stored top-k + tail (a lower bound of KL), and the notes
under the table say why and how large that approximation's error was on the first tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from quantbench.report.headline import Cell, format_interval
from quantbench.results import (
    DivergenceRecord,
    Interval,
    StudyResults,
    VariantResult,
    find_baseline,
)
from quantbench.stats.divergence import DELTA_P_PERCENTILES, KLD_PERCENTILES
from quantbench.units import format_number

EMPTY = "–"
METHOD_NAMES = {"exact": "exact (full vocabulary)", "topk_tail": "top-k + tail (lower bound)"}


@dataclass(frozen=True)
class DivergenceRow:
    """One statistic across the variants; `group` starts a new block of rows when set."""

    label: str
    cells: list[str]
    group: str = ""


def _columns(results: StudyResults) -> list[VariantResult]:
    baseline = find_baseline(results)
    return [v for v in results.variants if v is not baseline and v.metrics.divergence is not None]


def _interval(interval: Interval | None, scale: float = 1.0, significant: int = 3) -> str:
    if interval is None:
        return EMPTY
    cell = Cell(interval.estimate, low=interval.low, high=interval.high)
    return format_interval(cell, significant=significant, minimum=2, scale=scale)


def _number(value: float | None, scale: float = 1.0, significant: int = 3) -> str:
    if value is None:
        return EMPTY
    return format_number(value * scale, significant=significant, minimum=2)


def _percent(value: float | None) -> str:
    return EMPTY if value is None else f"{value * 100:.2f}%"


def _q_label(q: float) -> str:
    return "Median" if q == 50 else f"{q:g}%"


def _statistic_cell(
    field: str, key: str, scale: float
) -> Callable[[VariantResult, DivergenceRecord], str]:
    """A cell showing `record.<field>[key]` (a percentile of KL or Δp) times `scale`."""

    def cell(_: VariantResult, record: DivergenceRecord) -> str:
        values: dict[str, float] = getattr(record, field)
        return _number(values.get(key), scale)

    return cell


def divergence_rows(results: StudyResults) -> tuple[list[str], list[DivergenceRow]]:
    """The table's variant names and its rows (text cells), or no rows when no variant
    other than the baseline has a divergence record."""
    columns = _columns(results)
    if not columns:
        return [], []
    records: list[DivergenceRecord] = [v.metrics.divergence for v in columns]  # type: ignore[misc]
    baseline = find_baseline(results)
    base_ppl = baseline.metrics.perplexity if baseline is not None else None

    def row(
        label: str, cell: Callable[[VariantResult, DivergenceRecord], str], group: str = ""
    ) -> DivergenceRow:
        return DivergenceRow(
            label, [cell(v, r) for v, r in zip(columns, records, strict=True)], group
        )

    rows = [
        row("method", lambda _, r: METHOD_NAMES.get(r.method, r.method), "Comparison"),
        row("tokens", lambda _, r: f"{r.n_tokens:,}"),
        row(
            "Mean PPL(Q)",
            lambda v, _: _interval(
                v.metrics.perplexity.perplexity if v.metrics.perplexity else None
            ),
            "Perplexity statistics",
        ),
        row("Mean PPL(base)", lambda _v, _r: _interval(base_ppl.perplexity if base_ppl else None)),
        row(
            "Cor(ln(PPL(Q)), ln(PPL(base))), tokens",
            lambda _, r: _percent(r.ln_ppl_correlation_tokens),
        ),
        row(
            "Cor(ln(PPL(Q)), ln(PPL(base))), windows",
            lambda _, r: _percent(r.ln_ppl_correlation_windows),
        ),
        row("Mean ln(PPL(Q)/PPL(base))", lambda _, r: _interval(r.ln_ppl_ratio)),
        row("Mean PPL(Q)/PPL(base)", lambda _, r: _interval(r.ppl_ratio, significant=4)),
        row(
            "Mean PPL(Q)-PPL(base)",
            lambda v, _: _interval(
                v.metrics.perplexity.delta_vs_baseline if v.metrics.perplexity else None
            ),
        ),
        row("Mean KLD", lambda _, r: _interval(r.kl_mean), "KL divergence statistics, nats/token"),
        row("Maximum KLD", lambda _, r: _number(r.kl_percentiles.get("max", r.kl_max))),
    ]
    for q in KLD_PERCENTILES:
        key = f"p{q:g}"
        rows.append(row(f"{_q_label(q)} KLD", _statistic_cell("kl_percentiles", key, 1.0)))
    rows.append(row("Minimum KLD", lambda _, r: _number(r.kl_percentiles.get("min"))))
    rows.append(
        row(
            "Mean Δp",
            lambda _, r: (
                _interval(r.ref_prob_delta_mean, scale=100.0) + " %"
                if r.ref_prob_delta_mean
                else EMPTY
            ),
            "Token probability statistics (Δp of the next token, %)",
        )
    )
    rows.append(row("Maximum Δp", lambda _, r: _number(r.ref_prob_delta.get("max"), 100.0)))
    for q in DELTA_P_PERCENTILES:
        key = f"p{q:g}"
        rows.append(row(f"{_q_label(q)} Δp", _statistic_cell("ref_prob_delta", key, 100.0)))
    rows.append(row("Minimum Δp", lambda _, r: _number(r.ref_prob_delta.get("min"), 100.0)))
    rows.append(
        row(
            "RMS Δp",
            lambda _, r: (
                _interval(r.ref_prob_delta_rms, scale=100.0) + " %"
                if r.ref_prob_delta_rms
                else EMPTY
            ),
        )
    )
    rows.append(row("Same top p", lambda _, r: _interval(r.top1_agreement, scale=100.0) + " %"))
    return [v.name for v in columns], rows


def divergence_notes(results: StudyResults) -> list[str]:
    """One sentence per variant on how its divergence was computed, and the top-k + tail
    check on the first tokens (how far the approximation is from the exact KL here)."""
    notes = []
    for variant in _columns(results):
        record = variant.metrics.divergence
        assert record is not None
        text = f"{variant.name}: {METHOD_NAMES.get(record.method, record.method)}"
        if record.method_detail:
            text += f" — {record.method_detail}"
        approx = record.approximation
        if approx.get("check_tokens"):
            exact = approx.get("kl_mean_exact")
            estimate = approx.get("kl_mean_approx")
            error = approx.get("max_abs_error")
            if exact is not None and estimate is not None and error is not None:
                text += (
                    f"; on the first {int(approx['check_tokens']):,} tokens the exact mean KL is "
                    f"{_number(exact)} and top-{record.top_k} + tail gives {_number(estimate)} "
                    f"(max abs error per token {_number(error, significant=2)})"
                )
        notes.append(text + ".")
    return notes


INTRO = (
    "Laid out like llama.cpp's `llama-perplexity --kl-divergence` report, one column per "
    "variant against the baseline. Intervals are 95% bootstrap intervals over windows "
    "(llama.cpp prints a per-token standard error, which treats correlated tokens as "
    "independent). Δp is the variant's probability of the actual next token minus the "
    'baseline\'s; "Same top p" is top-1 agreement.'
)
