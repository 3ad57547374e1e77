"""The headline figures of a study: one row per variant, one column per figure.

Every table (CSV, Markdown, terminal, HTML) is built from `HEADLINE_COLUMNS` and
`headline_rows`, so they all show the same numbers under the same titles. A `Cell` holds a
figure in base units (bytes, seconds, nats per token, fractions); each column's formatter turns
it into display units (MiB, ms, %), and its `csv` fields name the base-unit values a
machine-readable table keeps. A figure whose record is missing is an empty cell, never an error:
results of a partly failed study must still render.

The last columns carry the decision next to the figures: whether the variant is acceptable
under the recommendation's constraints, what it was recommended for, which constraints it
breaks (or could not be checked against), and where it stands on the size–quality front.
They read `results.recommendation` (empty cells when there is none).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from quantbench.results import (
    Interval,
    Recommendation,
    SpeedPoint,
    SpeedRecord,
    StudyResults,
    VariantResult,
    VariantVerdict,
    find_baseline,
    weights_bytes,
)
from quantbench.units import MIB, decimals_for, format_number

CellValue = float | int | str | None
CellAttribute = Literal["value", "low", "high", "mode", "batch", "detail"]


@dataclass(frozen=True)
class Cell:
    """One figure of one variant, in base units.

    `low` / `high` bound a confidence interval around `value` (same units); `mode` is the
    speed record's execution mode ("native" or "emulated") for speed figures; `batch` is the
    batch size a speed figure was measured at; `detail` is free text (failed metric names).
    """

    value: CellValue = None
    low: float | None = None
    high: float | None = None
    mode: str | None = None
    batch: int | None = None
    detail: str | None = None

    @property
    def missing(self) -> bool:
        return self.value is None


Extractor = Callable[[VariantResult, VariantResult | None], Cell]
DecisionExtractor = Callable[[VariantResult, Recommendation | None], Cell]
Formatter = Callable[[Cell], str]


@dataclass(frozen=True)
class HeadlineColumn:
    """A headline figure: where it comes from, how it reads, and its machine-readable fields.

    `title` carries the display unit; `csv` maps CSV column names (which carry the base unit)
    to the `Cell` attribute each holds.
    """

    key: str
    title: str
    extract: Extractor
    format: Formatter
    csv: tuple[tuple[str, CellAttribute], ...]
    align: Literal["left", "right"] = "right"
    speed: bool = False
    decision: DecisionExtractor | None = None
    """Set for the decision columns: reads the recommendation instead of `extract`."""

    def text(self, row: HeadlineRow) -> str:
        """The display text of this figure for `row`; empty when the figure is missing."""
        cell = row.cells.get(self.key, Cell())
        return "" if cell.missing else self.format(cell)


@dataclass(frozen=True)
class HeadlineRow:
    """The headline figures of one variant, keyed by `HeadlineColumn.key`."""

    name: str
    scheme: str
    status: str
    is_baseline: bool
    cells: Mapping[str, Cell] = field(default_factory=dict)

    def cell(self, key: str) -> Cell:
        return self.cells.get(key, Cell())

    def text(self, key: str) -> str:
        return column(key).text(self)


def format_interval(
    cell: Cell, significant: int = 3, minimum: int = 2, sign: bool = False, scale: float = 1.0
) -> str:
    """`estimate [low, high]` with one precision for all three, chosen from the estimate."""
    assert isinstance(cell.value, int | float)
    value = float(cell.value) * scale
    places = decimals_for(value, significant, minimum)
    spec = f"{'+' if sign else ''},.{places}f"
    text = format(value, spec)
    if cell.low is not None and cell.high is not None:
        text += f" [{format(cell.low * scale, spec)}, {format(cell.high * scale, spec)}]"
    return text


def _interval_cell(interval: Interval | None) -> Cell:
    if interval is None:
        return Cell()
    return Cell(interval.estimate, low=interval.low, high=interval.high)


def _speed_point(speed: SpeedRecord | None, batch: int | None) -> SpeedPoint | None:
    """The point at batch size `batch`, or at the largest batch size when `batch` is None."""
    if speed is None or not speed.points:
        return None
    if batch is None:
        return max(speed.points, key=lambda p: p.batch_size)
    return next((p for p in speed.points if p.batch_size == batch), None)


def _variant(variant: VariantResult, baseline: VariantResult | None) -> Cell:
    return Cell(variant.name, detail="baseline" if variant is baseline else None)


def _scheme(variant: VariantResult, _: VariantResult | None) -> Cell:
    return Cell(variant.scheme)


def _status(variant: VariantResult, _: VariantResult | None) -> Cell:
    failed = ", ".join(variant.metrics.errors) or None
    return Cell(variant.status, detail=failed)


def _weights(variant: VariantResult, _: VariantResult | None) -> Cell:
    return Cell(weights_bytes(variant))


def _size_ratio(variant: VariantResult, baseline: VariantResult | None) -> Cell:
    own = weights_bytes(variant)
    base = weights_bytes(baseline) if baseline is not None else None
    if own is None or not base:
        return Cell()
    return Cell(own / base)


def _rss_loaded(variant: VariantResult, _: VariantResult | None) -> Cell:
    size = variant.metrics.size
    return Cell(size.rss_loaded_bytes if size is not None else None)


def _ppl(variant: VariantResult, _: VariantResult | None) -> Cell:
    ppl = variant.metrics.perplexity
    return _interval_cell(ppl.perplexity if ppl is not None else None)


def _ppl_delta(variant: VariantResult, _: VariantResult | None) -> Cell:
    ppl = variant.metrics.perplexity
    return _interval_cell(ppl.delta_vs_baseline if ppl is not None else None)


def _ppl_increase(variant: VariantResult, baseline: VariantResult | None) -> Cell:
    """Perplexity increase over the baseline in percent, 100 · (ppl / baseline ppl − 1); its
    interval is the paired Δppl interval divided by the baseline's perplexity (the baseline's
    own figure held fixed). 0 for the baseline itself."""
    ppl = variant.metrics.perplexity
    base = baseline.metrics.perplexity if baseline is not None else None
    if ppl is None or base is None:
        return Cell()
    base_ppl = base.perplexity.estimate
    if variant is baseline:
        return Cell(0.0)
    if not (base_ppl > 0 and math.isfinite(base_ppl)):
        return Cell()
    if ppl.ratio_vs_baseline is not None:
        estimate = 100.0 * (ppl.ratio_vs_baseline - 1.0)
    else:
        estimate = 100.0 * (ppl.perplexity.estimate / base_ppl - 1.0)
    delta = ppl.delta_vs_baseline
    if delta is None:
        return Cell(estimate)
    shift = estimate - 100.0 * delta.estimate / base_ppl  # 0 up to rounding
    return Cell(
        estimate,
        low=100.0 * delta.low / base_ppl + shift,
        high=100.0 * delta.high / base_ppl + shift,
    )


def _kl_mean(variant: VariantResult, _: VariantResult | None) -> Cell:
    div = variant.metrics.divergence
    return _interval_cell(div.kl_mean if div is not None else None)


def _kl_p99(variant: VariantResult, _: VariantResult | None) -> Cell:
    div = variant.metrics.divergence
    return Cell(div.kl_p99 if div is not None else None)


def _top1(variant: VariantResult, _: VariantResult | None) -> Cell:
    div = variant.metrics.divergence
    return _interval_cell(div.top1_agreement if div is not None else None)


def _decode(variant: VariantResult, _: VariantResult | None) -> Cell:
    speed = variant.metrics.speed
    point = _speed_point(speed, 1)
    if speed is None or point is None:
        return Cell()
    return Cell(point.tpot_s.median, mode=speed.execution_mode, batch=point.batch_size)


def _ttft(variant: VariantResult, _: VariantResult | None) -> Cell:
    speed = variant.metrics.speed
    point = _speed_point(speed, 1)
    if speed is None or point is None:
        return Cell()
    return Cell(point.ttft_s.median, mode=speed.execution_mode, batch=point.batch_size)


def _throughput(variant: VariantResult, _: VariantResult | None) -> Cell:
    speed = variant.metrics.speed
    point = _speed_point(speed, None)
    if speed is None or point is None:
        return Cell()
    return Cell(point.throughput_tok_s.median, mode=speed.execution_mode, batch=point.batch_size)


def _speed_mode(variant: VariantResult, _: VariantResult | None) -> Cell:
    speed = variant.metrics.speed
    return Cell(speed.execution_mode if speed is not None else None)


def _speed_backend(variant: VariantResult, _: VariantResult | None) -> Cell:
    speed = variant.metrics.speed
    return Cell(speed.backend if speed is not None else None)


def _exact_match(variant: VariantResult, _: VariantResult | None) -> Cell:
    gen = variant.metrics.generations
    return Cell(gen.exact_match_rate if gen is not None else None)


def _rouge(variant: VariantResult, _: VariantResult | None) -> Cell:
    gen = variant.metrics.generations
    return Cell(gen.rouge_l_mean if gen is not None else None)


def _quant_wall(variant: VariantResult, _: VariantResult | None) -> Cell:
    quant = variant.quantization
    return Cell(quant.wall_s if quant is not None else None)


def _no_figure(_: VariantResult, __: VariantResult | None) -> Cell:
    return Cell()


def _verdict(rec: Recommendation | None, variant: VariantResult) -> VariantVerdict | None:
    if rec is None:
        return None
    return next((v for v in rec.verdicts if v.variant == variant.name), None)


def _acceptable(variant: VariantResult, rec: Recommendation | None) -> Cell:
    judged = _verdict(rec, variant)
    return Cell() if judged is None else Cell(int(judged.acceptable))


def _recommended(variant: VariantResult, rec: Recommendation | None) -> Cell:
    if rec is None:
        return Cell()
    picked = [c.objective for c in rec.choices if c.judged and c.variant == variant.name]
    return Cell("; ".join(picked))


def _broken(variant: VariantResult, rec: Recommendation | None) -> Cell:
    judged = _verdict(rec, variant)
    if judged is None:
        return Cell()
    return Cell("; ".join(judged.broken), detail="; ".join(judged.unknown))


def _size_front(variant: VariantResult, rec: Recommendation | None) -> Cell:
    if rec is None or variant.status != "ok":
        return Cell()
    ties = rec.pareto_size_ties.get(variant.name)
    if ties:
        return Cell("tie", detail=", ".join(ties))
    return Cell("front" if variant.name in rec.pareto_size_quality else "dominated")


def _yes_no(cell: Cell) -> str:
    return "yes" if cell.value else "no"


def _broken_text(cell: Cell) -> str:
    parts = [str(cell.value)] if cell.value else []
    if cell.detail:
        parts.append(f"cannot be checked: {cell.detail}")
    return "; ".join(parts) or "none"


def _front_text(cell: Cell) -> str:
    if cell.value == "tie":
        return f"tie with {cell.detail} (quality within the intervals)"
    return str(cell.value)


def _num(cell: Cell) -> float:
    assert isinstance(cell.value, int | float)
    return float(cell.value)


def _plain(cell: Cell) -> str:
    return str(cell.value)


def _variant_text(cell: Cell) -> str:
    return f"{cell.value} ({cell.detail})" if cell.detail else str(cell.value)


def _status_text(cell: Cell) -> str:
    return f"{cell.value}; failed: {cell.detail}" if cell.detail else str(cell.value)


def _mode_suffix(cell: Cell) -> str:
    return f" ({cell.mode})" if cell.mode else ""


def _ms_text(cell: Cell) -> str:
    return f"{format_number(_num(cell) * 1000, significant=3, minimum=1)} ms{_mode_suffix(cell)}"


def _throughput_text(cell: Cell) -> str:
    where = f" @ batch {cell.batch}" if cell.batch is not None else ""
    return f"{_num(cell):,.1f} tok/s{where}{_mode_suffix(cell)}"


HEADLINE_COLUMNS: tuple[HeadlineColumn, ...] = (
    HeadlineColumn(
        "variant", "variant", _variant, _variant_text, (("variant", "value"),), align="left"
    ),
    HeadlineColumn("scheme", "scheme", _scheme, _plain, (("scheme", "value"),), align="left"),
    HeadlineColumn(
        "status",
        "status",
        _status,
        _status_text,
        (("status", "value"), ("failed_metrics", "detail")),
        align="left",
    ),
    HeadlineColumn(
        "weights",
        "weights (MiB)",
        _weights,
        lambda c: f"{_num(c) / MIB:,.1f}",
        (("weights_bytes", "value"),),
    ),
    HeadlineColumn(
        "size_ratio",
        "size vs baseline (×)",
        _size_ratio,
        lambda c: f"{_num(c):.2f}×",
        (("size_ratio", "value"),),
    ),
    HeadlineColumn(
        "rss_loaded",
        "RSS loaded (MiB)",
        _rss_loaded,
        lambda c: f"{_num(c) / MIB:,.1f}",
        (("rss_loaded_bytes", "value"),),
    ),
    HeadlineColumn(
        "ppl",
        "perplexity [95% CI]",
        _ppl,
        lambda c: format_interval(c, significant=3, minimum=2),
        (("ppl", "value"), ("ppl_ci_low", "low"), ("ppl_ci_high", "high")),
    ),
    HeadlineColumn(
        "ppl_delta",
        "Δppl vs baseline [95% CI]",
        _ppl_delta,
        lambda c: format_interval(c, significant=2, minimum=2, sign=True),
        (("ppl_delta", "value"), ("ppl_delta_ci_low", "low"), ("ppl_delta_ci_high", "high")),
    ),
    HeadlineColumn(
        "ppl_increase",
        "Δppl vs baseline (%) [95% CI]",
        _ppl_increase,
        lambda c: format_interval(c, significant=2, minimum=1, sign=True),
        (
            ("ppl_increase_pct", "value"),
            ("ppl_increase_pct_ci_low", "low"),
            ("ppl_increase_pct_ci_high", "high"),
        ),
    ),
    HeadlineColumn(
        "kl_mean",
        "KL mean (nats/token) [95% CI]",
        _kl_mean,
        lambda c: format_interval(c, significant=3, minimum=3),
        (("kl_mean", "value"), ("kl_mean_ci_low", "low"), ("kl_mean_ci_high", "high")),
    ),
    HeadlineColumn(
        "kl_p99",
        "KL p99 (nats/token)",
        _kl_p99,
        lambda c: format_number(_num(c), significant=3, minimum=3),
        (("kl_p99", "value"),),
    ),
    HeadlineColumn(
        "top1",
        "top-1 agreement (%) [95% CI]",
        _top1,
        lambda c: format_interval(c, significant=3, minimum=1, scale=100.0),
        (
            ("top1_agreement", "value"),
            ("top1_agreement_ci_low", "low"),
            ("top1_agreement_ci_high", "high"),
        ),
    ),
    HeadlineColumn(
        "decode_b1",
        "decode @ batch 1 (ms/token)",
        _decode,
        _ms_text,
        (("decode_tpot_s_b1", "value"),),
        speed=True,
    ),
    HeadlineColumn(
        "ttft_b1",
        "TTFT @ batch 1 (ms)",
        _ttft,
        _ms_text,
        (("ttft_s_b1", "value"),),
        speed=True,
    ),
    HeadlineColumn(
        "throughput",
        "throughput @ largest batch (tok/s)",
        _throughput,
        _throughput_text,
        (("throughput_tok_s", "value"), ("throughput_batch_size", "batch")),
        speed=True,
    ),
    HeadlineColumn(
        "speed_mode",
        "speed execution",
        _speed_mode,
        _plain,
        (("speed_execution_mode", "value"),),
        align="left",
    ),
    HeadlineColumn(
        "speed_backend",
        "speed backend",
        _speed_backend,
        _plain,
        (("speed_backend", "value"),),
        align="left",
    ),
    HeadlineColumn(
        "exact_match",
        "generations exact match (%)",
        _exact_match,
        lambda c: f"{_num(c) * 100:.1f}",
        (("generations_exact_match", "value"),),
    ),
    HeadlineColumn(
        "rouge_l",
        "ROUGE-L mean",
        _rouge,
        lambda c: f"{_num(c):.3f}",
        (("rouge_l_mean", "value"),),
    ),
    HeadlineColumn(
        "quant_wall",
        "quantization (s)",
        _quant_wall,
        lambda c: f"{_num(c):,.1f}",
        (("quantize_wall_s", "value"),),
    ),
    HeadlineColumn(
        "acceptable",
        "acceptable",
        _no_figure,
        _yes_no,
        (("acceptable", "value"),),
        align="left",
        decision=_acceptable,
    ),
    HeadlineColumn(
        "recommended",
        "recommended for",
        _no_figure,
        _plain,
        (("recommended", "value"),),
        align="left",
        decision=_recommended,
    ),
    HeadlineColumn(
        "broken",
        "constraints broken",
        _no_figure,
        _broken_text,
        (("broken_constraints", "value"), ("unchecked_constraints", "detail")),
        align="left",
        decision=_broken,
    ),
    HeadlineColumn(
        "size_front",
        "size–quality front",
        _no_figure,
        _front_text,
        (("pareto_size_quality", "value"), ("pareto_size_ties", "detail")),
        align="left",
        decision=_size_front,
    ),
)

_BY_KEY: dict[str, HeadlineColumn] = {c.key: c for c in HEADLINE_COLUMNS}


def column(key: str) -> HeadlineColumn:
    """The headline column named `key` (KeyError if there is none)."""
    return _BY_KEY[key]


def headline_rows(results: StudyResults) -> list[HeadlineRow]:
    """One row per variant, in study order, with every headline figure extracted.

    Pure: reads only the saved records, so any report can be rebuilt from `results.json`.
    """
    rows = []
    rec = results.recommendation
    for variant in results.variants:
        baseline = find_baseline(results, variant)
        rows.append(
            HeadlineRow(
                name=variant.name,
                scheme=variant.scheme,
                status=variant.status,
                is_baseline=variant is baseline,
                cells={
                    c.key: c.decision(variant, rec) if c.decision else c.extract(variant, baseline)
                    for c in HEADLINE_COLUMNS
                },
            )
        )
    return rows
