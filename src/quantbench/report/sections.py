"""The report's sections, built once from `results.json` for both renderers.

Every sentence, table and figure of report.html and report.md comes from `build_document`;
the renderers (`report.html`, `report.markdown`) only lay the blocks out. Sections, in order:
`measured`, `warning`, `headline`, `divergence`, `tasks`, `axes`, `sensitivity` (the four only
when the study has them), `recommendation`, `plots`, `variants`, `generations`, `provenance`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from quantbench.recommend import describe_budget, describe_front, format_value
from quantbench.report import plots
from quantbench.report.axes import axis_headers, axis_tables
from quantbench.report.divergence_table import INTRO as DIVERGENCE_INTRO
from quantbench.report.divergence_table import divergence_notes, divergence_rows
from quantbench.report.document import (
    Align,
    Banner,
    Block,
    Bullets,
    Cell,
    CodeBlock,
    Details,
    Document,
    Figure,
    Figures,
    GenerationCategory,
    GenerationOutput,
    GenerationPrompt,
    Generations,
    Heading,
    KeyValues,
    Paragraph,
    Row,
    Section,
    Span,
    Spans,
    Table,
    code,
    simple_table,
    spans,
    strong,
)
from quantbench.report.headline import (
    HEADLINE_COLUMNS,
    format_interval,
    headline_rows,
)
from quantbench.report.headline import Cell as Figure_
from quantbench.report.recovery_table import (
    NUMERIC as RECOVERY_NUMERIC,
)
from quantbench.report.recovery_table import (
    RECOVERY_HEADERS,
    recovery_notes,
    recovery_rows,
)
from quantbench.report.tasks_table import TASK_HEADERS, task_cells, task_rows, task_settings_text
from quantbench.results import (
    BASELINE_SCHEMES,
    DivergenceRecord,
    GenerationItem,
    GenerationsRecord,
    Interval,
    MixedSearchRecord,
    PerplexityRecord,
    QuantizationRecord,
    Recommendation,
    SensitivityGroup,
    SensitivityRecord,
    SizeRecord,
    SpeedRecord,
    Spread,
    StudyResults,
    VariantResult,
    find_baseline,
    weights_bytes,
)
from quantbench.units import MIB, format_number

EMPTY = "–"
"""What an empty figure shows: not measured."""
EMULATED_BANNER = (
    "Speed figures marked emulated were measured with weights decompressed and activation "
    "quantization simulated (transformers on CPU); they say nothing about real low-precision "
    "kernels, and quantized variants look slower than BF16 for that reason. Measure deployment "
    "speed with a runtime that has native kernels (vLLM)."
)
OPEN_ALL_PROMPTS = 12
"""Up to this many prompts every generation category starts open; beyond it, only the first."""
QUALITY_NAMES = {
    "kl_mean": "mean KL(baseline ‖ variant), nats/token",
    "perplexity": "perplexity",
}
FOOTER = "Built from results.json alone; every figure can be rebuilt from it."

T = TypeVar("T")


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _first_record(
    results: StudyResults,
    baseline: VariantResult | None,
    get: Callable[[VariantResult], T | None],
) -> T | None:
    """The baseline's record if it has one, else the first variant's that does."""
    ordered = ([baseline] if baseline is not None else []) + list(results.variants)
    return next((r for r in (get(v) for v in ordered) if r is not None), None)


def _config_section(results: StudyResults, *keys: str) -> dict[str, Any]:
    """A nested slice of the saved config, or {} if the config lacks it."""
    node: Any = results.config
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / MIB:,.1f} MiB"


def _ms(seconds: float) -> str:
    return format_number(seconds * 1000, significant=3, minimum=1)


def _interval(
    interval: Interval, significant: int = 3, minimum: int = 2, sign: bool = False
) -> str:
    return format_interval(
        Figure_(interval.estimate, low=interval.low, high=interval.high),
        significant=significant,
        minimum=minimum,
        sign=sign,
    )


def _code_list(values: dict[str, Any]) -> list[Span | str]:
    """`k=v` pairs as code spans, comma-separated; "defaults" when there are none."""
    parts: list[Span | str] = []
    for i, (key, value) in enumerate(values.items()):
        parts += [", " if i else "", code(f"{key}={value}")]
    return parts or ["defaults"]


def _any_emulated(results: StudyResults) -> bool:
    return any(
        v.metrics.speed is not None and v.metrics.speed.execution_mode == "emulated"
        for v in results.variants
    )


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


# --------------------------------------------------------------------------------------
# What was measured
# --------------------------------------------------------------------------------------


def _measured(results: StudyResults, baseline: VariantResult | None) -> list[Spans]:
    """The "what was measured" sentences, read from the records (config as a fallback)."""
    parts: list[Spans] = []
    evaluation = _config_section(results, "evaluation")
    ppl = _first_record(results, baseline, lambda v: v.metrics.perplexity)
    div = _first_record(results, baseline, lambda v: v.metrics.divergence)
    if ppl is not None:
        confidence = round(ppl.perplexity.confidence * 100)
        parts.append(
            spans(
                "Perplexity was scored on corpus ",
                code(ppl.corpus),
                f": {ppl.n_tokens:,} tokens in {ppl.n_windows:,} windows of {ppl.window} tokens "
                f"(stride {ppl.stride}), the same tokens for every variant; intervals are "
                f"{confidence}% bootstrap confidence intervals over windows, and Δppl is paired "
                "against the baseline.",
            )
        )
    elif corpus := _config_section(results, "evaluation", "corpus"):
        parts.append(
            spans(
                "Perplexity was configured on corpus ",
                code(corpus.get("source")),
                f" (windows of {corpus.get('window')} tokens) but no variant has a perplexity "
                "record.",
            )
        )
    if div is not None:
        how = (
            "tokens, from the baseline's full distribution; "
            if div.method == "exact"
            else f"tokens, from the baseline's top-{div.top_k} log-probabilities plus the "
            "tail mass (a lower bound of the exact KL); "
        )
        parts.append(
            spans(
                f"KL divergence is KL(baseline ‖ variant) in nats per token over "
                f"{div.n_tokens:,} {how}top-1 agreement is the share of tokens where both pick "
                "the same next token."
            )
        )
    size = _first_record(results, baseline, lambda v: v.metrics.size)
    speed = _first_record(results, baseline, lambda v: v.metrics.speed)
    backend = (size.backend if size else None) or evaluation.get("backend")
    backend = backend or (speed.backend if speed else None)
    device = (size.device if size else None) or (speed.device if speed else None)
    device = device or evaluation.get("device")
    if speed is not None and backend and speed.backend != backend:
        parts.append(
            spans(
                "Quality figures (size, perplexity, divergence, generations, tasks) ran on the ",
                code(backend),
                " backend, device ",
                code(device),
                "; speed ran on the ",
                code(speed.backend),
                " backend, device ",
                code(speed.device),
                ".",
            )
        )
    elif backend:
        parts.append(
            spans("Evaluation ran on the ", code(backend), " backend, device ", code(device), ".")
        )
    if speed is not None:
        batches = ", ".join(str(p.batch_size) for p in speed.points) or "none"
        first = speed.points[0] if speed.points else None
        shape = (
            f"{first.prompt_tokens}-token prompts and {first.output_tokens} output tokens"
            if first
            else "no points"
        )
        threads = f", {speed.threads} threads" if speed.threads else ""
        parts.append(
            spans(
                f"Speed: {shape} at batch sizes {batches}; {speed.warmup} warm-up run(s) "
                f"excluded and {speed.repeats} timed run(s) per point{threads}; the headline "
                "shows medians."
            )
        )
    gen = _first_record(results, baseline, lambda v: v.metrics.generations)
    if gen is not None:
        parts.append(
            spans(
                "Generations: suite ",
                code(gen.suite),
                f", {gen.n_prompts} prompts, up to {gen.max_new_tokens} new tokens, compared "
                "token by token with the baseline's.",
            )
        )
    if len(results.calibrations) > 1:
        settings: list[Span | str] = []
        for i, c in enumerate(results.calibrations):
            settings += ["; " if i else "", f"{c.num_samples} × {c.seq_len} tokens from "]
            settings += [code(c.source), f" (seed {c.seed})"]
        parts.append(
            spans("Calibration (GPTQ, SmoothQuant), one setting per study axis: ", *settings, ".")
        )
    elif results.calibration is not None:
        cal = results.calibration
        parts.append(
            spans(
                f"Calibration (GPTQ, SmoothQuant): {cal.num_samples} samples of up to "
                f"{cal.seq_len} tokens from ",
                code(cal.source),
                f" ({cal.total_tokens:,} tokens, seed {cal.seed}).",
            )
        )
    return parts or [spans("No metric records were saved for this study.")]


def measured_section(results: StudyResults) -> Section:
    sentences = _measured(results, find_baseline(results))
    joined: list[Span] = []
    for i, sentence in enumerate(sentences):
        joined += [*([Span(" ")] if i else []), *sentence]
    return Section("measured", "What was measured", (Paragraph(tuple(joined)),))


# --------------------------------------------------------------------------------------
# Caveats
# --------------------------------------------------------------------------------------


def _problems(results: StudyResults) -> list[Spans]:
    lines: list[Spans] = []
    for v in results.variants:
        if v.status == "failed":
            lines.append(spans(strong(v.name), f" failed: {v.error or 'unknown error'}"))
        for metric, why in v.metrics.errors.items():
            lines.append(spans(strong(v.name), ": metric ", code(metric), f" failed: {why}"))
    return lines


def warning_section(results: StudyResults) -> Section:
    blocks: list[Block] = []
    emulated = [
        v.name
        for v in results.variants
        if v.metrics.speed is not None and v.metrics.speed.execution_mode == "emulated"
    ]
    if emulated:
        blocks.append(
            Banner(f"Emulated speed: {', '.join(emulated)}", text=EMULATED_BANNER, alert=True)
        )
    model_notes = results.model.get("notes")
    notes = [*results.notes, *(model_notes if isinstance(model_notes, list) else [])]
    if notes:
        blocks.append(Banner("Notes", items=tuple(spans(str(n)) for n in notes)))
    problems = _problems(results)
    if problems:
        blocks.append(Banner("Problems", items=tuple(problems)))
    if not blocks:
        blocks.append(
            Paragraph(
                spans(
                    "Nothing to warn about: no emulated speed figures, no failed variants or "
                    "metrics, no caveats recorded."
                ),
                "note",
            )
        )
    return Section("warning", "Caveats", tuple(blocks))


# --------------------------------------------------------------------------------------
# Headline
# --------------------------------------------------------------------------------------


def _headline_cell_text(text: str, has_interval: bool) -> Spans:
    """The headline text, with an interval's bracket part quieter than its estimate."""
    if has_interval and " [" in text:
        value, interval = text.split(" [", 1)
        return spans(value + " ", Span("[" + interval, "quiet"))
    return spans(text)


def headline_table(results: StudyResults) -> Table:
    """The headline table: the same columns and texts as the CSV and the terminal table."""
    rows: list[Row] = []
    for row in headline_rows(results):
        classes = tuple(
            c for c, on in (("baseline", row.is_baseline), ("failed", row.status != "ok")) if on
        )
        cells: list[Cell] = []
        for col in HEADLINE_COLUMNS:
            figure = row.cell(col.key)
            text = col.text(row)
            cls = ["num"] if col.align == "right" else []
            title = ""
            if not text:
                cls.append("empty")
                content = spans(EMPTY)
            else:
                content = _headline_cell_text(
                    text, figure.low is not None and figure.high is not None
                )
            if figure.mode == "emulated" or (
                col.key == "speed_mode" and figure.value == "emulated"
            ):
                cls.append("emulated")
                title = "emulated: not real low-precision kernels"
            cells.append(Cell(content, tuple(cls), title))
        rows.append(Row(tuple(cells), classes))
    return Table(
        headers=tuple(c.title for c in HEADLINE_COLUMNS),
        rows=tuple(rows),
        align=tuple(c.align for c in HEADLINE_COLUMNS),
        name="headline",
    )


def headline_section(results: StudyResults) -> Section:
    blocks: list[Block] = [
        Paragraph(
            spans(
                "Deltas and ratios are against the baseline; intervals are 95% bootstrap "
                "confidence intervals; speed cells name their execution mode; "
                f"{EMPTY} means not measured (see the variant's details)."
            )
        ),
        headline_table(results),
    ]
    if _any_emulated(results):
        blocks.append(
            Paragraph(
                spans(
                    "Shaded cells are emulated speed figures: they time the emulation, not real "
                    "low-precision kernels."
                ),
                "note",
            )
        )
    return Section("headline", "Headline", tuple(blocks))


# --------------------------------------------------------------------------------------
# Divergence, tasks, study axes
# --------------------------------------------------------------------------------------


def divergence_section(results: StudyResults) -> Section | None:
    names, rows = divergence_rows(results)
    if not rows:
        return None
    table_rows: list[Row] = []
    for r in rows:
        if r.group:
            table_rows.append(Row((), group=r.group))
        cells = (Cell(spans(r.label)), *(Cell(spans(c), ("num",)) for c in r.cells))
        table_rows.append(Row(tuple(cells)))
    right: Align = "right"
    align = ("left", *([right] * len(names)))
    return Section(
        "divergence",
        "Divergence",
        (
            Paragraph(spans(DIVERGENCE_INTRO), "note"),
            Table(("statistic", *names), tuple(table_rows), align),
            Bullets(tuple(spans(n) for n in divergence_notes(results))),
        ),
    )


def tasks_section(results: StudyResults) -> Section | None:
    rows = task_rows(results)
    if not rows:
        return None
    blocks: list[Block] = [
        Paragraph(spans(task_settings_text(results)), "note"),
        simple_table(
            TASK_HEADERS,
            [task_cells(row) for row in rows],
            (False, False, True, True, True, True, True),
            EMPTY,
        ),
    ]
    recovery = recovery_rows(results)
    if recovery:
        baselines = ", ".join(sorted({r.baseline_name for r in recovery}))
        blocks += [
            Heading("Recovery against the baseline"),
            Paragraph(spans(f"Baseline: {baselines}. {recovery_notes(results)}"), "note"),
            simple_table(RECOVERY_HEADERS, [r.cells() for r in recovery], RECOVERY_NUMERIC, EMPTY),
        ]
    return Section("tasks", "Task accuracy", tuple(blocks))


def axes_section(results: StudyResults) -> Section | None:
    tables = axis_tables(results)
    if not tables:
        return None
    blocks: list[Block] = [
        Paragraph(
            spans(
                "Each table follows one axis of the study matrix, the other axes fixed per row: "
                "mean KL(baseline ‖ variant) in nats/token with its 95% interval, and the "
                "perplexity change."
            ),
            "note",
        )
    ]
    for table in tables:
        blocks += [
            Heading(table.axis),
            simple_table(
                axis_headers(table),
                [[label, *row] for label, row in table.rows],
                (False, *([True] * len(table.values))),
                EMPTY,
            ),
        ]
    return Section("axes", "Study axes", tuple(blocks))


# --------------------------------------------------------------------------------------
# Recommendation
# --------------------------------------------------------------------------------------


def _limit(value: float | None, unit: str) -> str:
    if value is None:
        return "not applied"
    return f"{value:g}{unit}" if unit == "%" else f"{value:g} {unit}"


def recommendation_blocks(rec: Recommendation) -> tuple[Block, ...]:
    """The constraints, the pick per objective, every variant's verdict and the Pareto
    fronts, all read from the saved `Recommendation`."""
    c = rec.constraints
    blocks: list[Block] = [
        Paragraph(spans(rec.summary), "summary"),
        Heading("Constraints"),
        Paragraph(
            spans(
                f"Constraints: {describe_budget(rec)}. A constraint whose metric is missing "
                "counts as not met."
            )
        ),
        KeyValues(
            (
                ("max KL", spans(_limit(c.max_kl, "nats/token"))),
                ("max perplexity increase", spans(_limit(c.max_ppl_increase_pct, "%"))),
                ("max accuracy drop", spans(_limit(c.max_accuracy_drop, "points"))),
                ("task margin", spans(_limit(c.non_inferiority_margin, "points"))),
            )
        ),
        Heading("Best acceptable variant per objective"),
    ]
    if rec.choices:
        blocks.append(
            simple_table(
                ("objective", "variant", "value", "reason"),
                [
                    [
                        choice.objective,
                        choice.variant or ("not judged" if not choice.judged else "none"),
                        format_value(choice.value, choice.unit),
                        choice.reason,
                    ]
                    for choice in rec.choices
                ],
                (False, False, True, False),
                EMPTY,
            )
        )
    else:
        blocks.append(Paragraph(spans("No objective was evaluated."), "note"))
    verdict_rows = [
        Row(
            (
                Cell(spans(strong(v.variant))),
                Cell(
                    spans("acceptable" if v.acceptable else "not acceptable"),
                    ("yes" if v.acceptable else "no",),
                ),
                Cell(spans("; ".join(v.broken) or EMPTY)),
                Cell(spans("; ".join(v.unknown) or EMPTY)),
            )
        )
        for v in rec.verdicts
    ]
    blocks += [
        Heading("Verdicts"),
        Table(
            ("variant", "verdict", "breaks", "cannot be checked (counts as not met)"),
            tuple(verdict_rows),
            ("left", "left", "left", "left"),
        ),
    ]
    quality = QUALITY_NAMES.get(rec.quality_metric, rec.quality_metric)
    speed_front = (
        describe_front(rec.pareto_speed_quality, rec.pareto_speed_ties)
        or "no variant has both figures"
        if rec.speed_judged
        else "not drawn: the speed figures are emulated"
    )
    size_front = describe_front(rec.pareto_size_quality, rec.pareto_size_ties)
    blocks += [
        Heading("Pareto fronts"),
        Paragraph(
            spans(
                f"Lower is better on both axes; quality = {quality}; over ok variants that have "
                "both figures."
            )
        ),
        KeyValues(
            (
                ("weights on disk vs quality", spans(size_front or "no variant has both figures")),
                ("decode time per token at batch 1 vs quality", spans(speed_front)),
            )
        ),
    ]
    return tuple(blocks)


def recommendation_section(results: StudyResults) -> Section:
    rec = results.recommendation
    if rec is None:
        blocks: tuple[Block, ...] = (
            Paragraph(
                spans(
                    "No recommendation was computed for this study. Constraints (for example a "
                    "maximum KL or perplexity increase) decide which variants are acceptable; "
                    "rebuild the reports with constraints to get one."
                ),
                "note",
            ),
        )
    else:
        blocks = recommendation_blocks(rec)
    return Section("recommendation", "Recommendation", blocks)


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------


def plots_section(results: StudyResults) -> Section:
    figures = [
        Figure(
            plots.size_vs_quality(results),
            "One point per ok variant; error bars are 95% confidence intervals; the dashed step "
            "line and rings mark the Pareto front (no other variant is both smaller and better).",
            "no variant has both a size and a quality figure",
        ),
        Figure(
            plots.speed_vs_quality(results),
            "Decode time per output token at batch 1 (median, whisker to p90) against quality. "
            "Hollow points are emulated; no front is drawn when any speed figure is emulated.",
            "no variant has both a decode time at batch 1 and a quality figure",
        ),
    ]
    for metric in plots.BAR_METRICS:
        title = plots.bar_title(metric)
        figures.append(
            Figure(
                plots.metric_bars(results, metric),
                f"{title}: one bar per variant that has the figure.",
                f"no variant has {title.lower()}",
            )
        )
    return Section("plots", "Plots", (Figures(tuple(figures)),))


# --------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------


def _quantization_line(quant: QuantizationRecord) -> Spans:
    phases = ", ".join(f"{k} {s:,.1f} s" for k, s in quant.phases.items())
    threads = f", {quant.torch_threads} torch threads" if quant.torch_threads else ""
    if quant.torch_threads and quant.cores and quant.cores != quant.torch_threads:
        threads += f" on {quant.cores} core{'s' if quant.cores != 1 else ''}"
    text = f"Quantization: {quant.wall_s:,.1f} s wall, peak RSS {_mib(quant.peak_rss_bytes)}"
    return spans(text + threads + (f" (phases: {phases})" if phases else ""))


def _size_lines(size: SizeRecord) -> list[Spans]:
    by_dtype = ", ".join(f"{k} {_mib(n)}" for k, n in size.param_bytes_by_dtype.items())
    gpu = f", GPU peak {_mib(size.gpu_peak_bytes)}" if size.gpu_peak_bytes is not None else ""
    return [
        spans(
            f"Size: weights {_mib(size.weights_bytes)}, whole artifact "
            f"{_mib(size.artifact_bytes)}"
            + (f"; stored tensors by dtype: {by_dtype}" if by_dtype else "")
        ),
        spans(
            f"Memory: loaded in {size.load_s:,.2f} s; RSS after load "
            f"{_mib(size.rss_loaded_bytes)}, peak while generating "
            f"{_mib(size.rss_peak_generating_bytes)}{gpu} (",
            code(size.backend),
            " on ",
            code(size.device),
            ")",
        ),
    ]


def _perplexity_line(ppl: PerplexityRecord) -> Spans:
    text = (
        f"Perplexity: {_interval(ppl.perplexity)} "
        f"(mean NLL {ppl.nll_mean:.4f} nats/token, {ppl.n_tokens:,} tokens)"
    )
    if ppl.delta_vs_baseline is not None:
        text += f"; Δ vs baseline {_interval(ppl.delta_vs_baseline, 2, 2, sign=True)}"
    if ppl.ratio_vs_baseline is not None:
        text += f", ratio {ppl.ratio_vs_baseline:.4f}×"
    return spans(text)


def _divergence_lines(div: DivergenceRecord) -> list[Spans]:
    lines = [
        spans(
            f"KL(baseline ‖ variant), nats/token over {div.n_tokens:,} tokens: mean "
            f"{_interval(div.kl_mean, 3, 3)}, median {format_number(div.kl_median, 3, 3)}, "
            f"p99 {format_number(div.kl_p99, 3, 3)}, max {format_number(div.kl_max, 3, 3)}"
        ),
        spans(
            "Top-1 agreement: "
            + format_interval(
                Figure_(
                    div.top1_agreement.estimate, div.top1_agreement.low, div.top1_agreement.high
                ),
                significant=3,
                minimum=1,
                scale=100.0,
            )
            + " %"
        ),
    ]
    approx = div.approximation
    if approx:
        check = int(approx.get("check_tokens", 0))
        exact = approx.get("kl_mean_exact")
        estimate = approx.get("kl_mean_approx")
        error = approx.get("max_abs_error")
        figures = [
            f"exact mean KL {format_number(exact, 3, 3)}" if exact is not None else "",
            f"top-{div.top_k} + tail {format_number(estimate, 3, 3)}"
            if estimate is not None
            else "",
            f"max abs error {format_number(error, 2, 3)}" if error is not None else "",
        ]
        lines.append(
            spans(
                f"Top-k approximation check on the first {check:,} tokens: "
                + ", ".join(f for f in figures if f)
            )
        )
    else:
        lines.append(spans(f"Top-k approximation check: not run (top-{div.top_k} + tail mass)"))
    return lines


def _spread_cells(spread: Spread, to_text: Callable[[float], str]) -> list[str]:
    return [to_text(spread.median), to_text(spread.p90), f"{spread.cv * 100:.1f}%"]


def _speed_blocks(speed: SpeedRecord) -> list[Block]:
    mode = strong("emulated") if speed.execution_mode == "emulated" else Span("native")
    threads = f", {speed.threads} threads" if speed.threads else ""
    if speed.thread_binding:
        threads = f", OpenMP threads bound to cores {speed.thread_binding}"
    blocks: list[Block] = [
        Paragraph(
            spans(
                "Speed: ",
                mode,
                " execution on ",
                code(speed.backend),
                " / ",
                code(speed.device),
                f"{threads}; {speed.detail}",
            )
        )
    ]
    if speed.startup_s is not None:
        what = " (engine start-up and compilation)" if speed.backend == "vllm" else ""
        blocks.append(
            Paragraph(
                spans(
                    f"Model load{what}: {speed.startup_s:.1f} s, apart from the steady-state "
                    "figures below."
                )
            )
        )
    if speed.sample_output:
        blocks.append(
            Paragraph(
                spans(
                    "Output checked beside the figures (the first timed prompt, decoded "
                    "greedily): ",
                    code(speed.sample_output[:120].strip()),
                )
            )
        )
    headers = [
        "batch",
        "mode",
        "prompt + output tokens",
        "TTFT median (ms)",
        "TTFT p90 (ms)",
        "TTFT CV",
        "decode median (ms/token)",
        "decode p90 (ms/token)",
        "decode CV",
        "throughput median (tok/s)",
        "throughput p90 (tok/s)",
        "throughput CV",
        "end-to-end median (s)",
        "requests/s median",
    ]
    with_itl = any(p.itl_s is not None for p in speed.points)
    if with_itl:
        headers += ["inter-token median (ms)", "inter-token p90 (ms)"]
    rows = [
        [
            str(p.batch_size),
            speed.execution_mode,
            f"{p.prompt_tokens} + {p.output_tokens}",
            *_spread_cells(p.ttft_s, _ms),
            *_spread_cells(p.tpot_s, _ms),
            *_spread_cells(p.throughput_tok_s, lambda x: f"{x:,.1f}"),
            f"{p.e2e_s.median:,.3f}",
            f"{p.batch_size / p.e2e_s.median:,.2f}" if p.e2e_s.median > 0 else EMPTY,
            *(
                ([_ms(p.itl_s.median), _ms(p.itl_s.p90)] if p.itl_s else [EMPTY, EMPTY])
                if with_itl
                else []
            ),
        ]
        for p in speed.points
    ]
    if rows:
        numeric = [True, False, *([True] * (len(headers) - 2))]
        blocks.append(simple_table(headers, rows, numeric, EMPTY))
    else:
        blocks.append(Paragraph(spans("No speed points were recorded."), "note"))
    return blocks


def variant_blocks(variant: VariantResult, baseline: VariantResult | None) -> Details:
    """One variant's details: status, options, pre-flight decisions, every record."""
    role = " — baseline" if variant is baseline else ""
    items: list[Spans] = []
    status: Spans = (
        spans("ok")
        if variant.status == "ok"
        else spans(strong("failed"), f": {variant.error or ''}")
    )
    items.append(spans("Status: ", *status))
    items.append(spans("Options used: ", *_code_list(variant.options)))
    if variant.options_requested and variant.options_requested != variant.options:
        items.append(spans("Options requested: ", *_code_list(variant.options_requested)))
    items += [spans("Pre-flight decision: ", d) for d in variant.decisions]
    items += [spans("Note: ", n) for n in variant.notes]
    if variant.quantization is not None:
        items.append(_quantization_line(variant.quantization))
    metrics = variant.metrics
    if metrics.size is not None:
        items += _size_lines(metrics.size)
    elif variant.disk_bytes is not None:
        items.append(spans(f"Size: weights {_mib(variant.disk_bytes)} (from the quantizer)"))
    if metrics.perplexity is not None:
        items.append(_perplexity_line(metrics.perplexity))
    if metrics.divergence is not None:
        items += _divergence_lines(metrics.divergence)
    for name, record in metrics.plugins.items():  # metrics of installed packages, as recorded
        figures = ", ".join(f"{key} = {json.dumps(value)}" for key, value in record.items())
        items.append(spans(code(name), f" (plugin metric): {figures}"))
    items += [spans("Metric ", code(m), f" failed: {why}") for m, why in metrics.errors.items()]
    blocks: list[Block] = [Bullets(tuple(items))]
    div = metrics.divergence
    if div is not None and div.ref_prob_delta:
        blocks += [
            Paragraph(
                spans("Change in the probability of the reference token (variant − baseline):")
            ),
            simple_table(
                list(div.ref_prob_delta),
                [[f"{x:+.4f}" for x in div.ref_prob_delta.values()]],
                [True] * len(div.ref_prob_delta),
            ),
        ]
    if metrics.speed is not None:
        blocks += _speed_blocks(metrics.speed)
    measured = [
        name
        for name in ("size", "perplexity", "divergence", "speed", "generations")
        if getattr(metrics, name) is not None
    ] + list(metrics.plugins)
    if not measured and not metrics.errors:
        blocks.append(Paragraph(spans("No metrics were recorded for this variant."), "note"))
    return Details(spans(variant.name, " (", code(variant.scheme), f"){role}"), tuple(blocks))


def variants_section(results: StudyResults) -> Section:
    baseline = find_baseline(results)
    return Section(
        "variants", "Variants", tuple(variant_blocks(v, baseline) for v in results.variants)
    )


# --------------------------------------------------------------------------------------
# Generations
# --------------------------------------------------------------------------------------


def diverging_prefix(reference: str, text: str) -> int:
    """Length of the shared start of `text` and `reference`, backed off to a word start.

    The texts are compared character by character; when they part in the middle of a word,
    the whole word is counted as different so the highlight reads as words, not letters.
    """
    n = next(
        (i for i, (a, b) in enumerate(zip(reference, text, strict=False)) if a != b),
        min(len(reference), len(text)),
    )
    if n == len(text) == len(reference):
        return n
    mid_word = (
        n > 0
        and text[n - 1].isalnum()
        and (
            (n < len(text) and text[n].isalnum()) or (n < len(reference) and reference[n].isalnum())
        )
    )
    if mid_word:
        while n > 0 and text[n - 1].isalnum():
            n -= 1
    return n


def _output(name: str, item: GenerationItem, reference: GenerationItem) -> GenerationOutput:
    return GenerationOutput(
        variant=name,
        text=item.text,
        n_tokens=item.n_tokens,
        exact_match=item.exact_match,
        first_diff=item.first_diff,
        rouge_l=item.rouge_l,
        departs_at=None
        if item.text == reference.text
        else diverging_prefix(reference.text, item.text),
    )


def generations_section(results: StudyResults) -> Section:
    baseline = find_baseline(results)
    with_gens: list[tuple[VariantResult, GenerationsRecord]] = [
        (v, v.metrics.generations) for v in results.variants if v.metrics.generations is not None
    ]
    if not with_gens:
        note = Paragraph(spans("No generations were recorded."), "note")
        return Section("generations", "Generations", (note,))
    ref_variant, ref_record = next(((v, g) for v, g in with_gens if v is baseline), with_gens[0])
    others = [(v, {i.id: i for i in g.items}) for v, g in with_gens if v is not ref_variant]
    by_category: dict[str, list[GenerationItem]] = {}
    for item in ref_record.items:
        by_category.setdefault(item.category, []).append(item)
    is_baseline = ref_variant is baseline
    categories: list[GenerationCategory] = []
    for index, (category, items) in enumerate(by_category.items()):
        prompts = []
        for item in items:
            prompt = item.prompt
            if prompt is None:
                prompt = next(
                    (by_id[item.id].prompt for _, by_id in others if item.id in by_id), None
                )
            outputs = [
                GenerationOutput(
                    variant=ref_variant.name,
                    text=item.text,
                    n_tokens=item.n_tokens,
                    is_reference=True,
                ),
                *(_output(v.name, by_id[item.id], item) for v, by_id in others if item.id in by_id),
            ]
            prompts.append(GenerationPrompt(item.id, prompt, tuple(outputs)))
        differing = sum(
            1
            for item in items
            if any(item.id in by_id and by_id[item.id].text != item.text for _, by_id in others)
        )
        opened = index == 0 or len(ref_record.items) <= OPEN_ALL_PROMPTS
        categories.append(GenerationCategory(category, tuple(prompts), differing, opened))
    lead = spans(
        f"{ref_record.n_prompts} prompts of suite ",
        code(ref_record.suite),
        f", {ref_record.decoding} decoding, up to {ref_record.max_new_tokens} new tokens. Each "
        f"variant's text is shown beside the {'baseline' if is_baseline else 'first'}'s "
        f"({ref_variant.name}), with whether it is identical, the first token that differs and "
        "ROUGE-L F1 on token ids; ",
        Span("highlighted", "mark"),
        " is where it departs from it.",
    )
    return Section(
        "generations",
        "Generations",
        (
            Paragraph(lead),
            Generations("baseline" if is_baseline else "reference", tuple(categories)),
        ),
    )


# --------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _provenance_lines(block: dict[str, Any]) -> list[Spans]:
    """The provenance a reader looks for first: version, libraries, machine, GPUs (only
    the parts the block records in quantbench's own layout)."""
    lines: list[Spans] = []
    quantbench = _mapping(block.get("quantbench"))
    if quantbench:
        lines.append(
            spans(f"quantbench {quantbench.get('version')} (commit {quantbench.get('git_commit')})")
        )
    libraries = _mapping(block.get("libraries"))
    present = ", ".join(f"{name} {ver}" for name, ver in libraries.items() if ver)
    if present:
        lines.append(spans(f"libraries: {present}"))
    cpu = _mapping(block.get("cpu"))
    if cpu:
        flags = ", ".join(name for name, on in _mapping(cpu.get("flags")).items() if on)
        lines.append(
            spans(
                f"machine: {cpu.get('model')}, {cpu.get('usable_cores')} usable cores; "
                f"flags: {flags or 'none of note'}; Python {block.get('python')}; "
                f"{block.get('os')}"
            )
        )
    gpus = block.get("gpus")
    for gpu in gpus if isinstance(gpus, list) else []:
        gpu = _mapping(gpu)
        lines.append(spans(f"GPU: {gpu.get('name')} (driver {gpu.get('driver')})"))
    return lines


def _key_values(mapping: dict[str, Any]) -> KeyValues:
    items: list[tuple[str, Spans | CodeBlock]] = []
    for key, value in mapping.items():
        if isinstance(value, dict | list):
            items.append((str(key), CodeBlock(_json(value), "json")))
        else:
            items.append((str(key), spans(code(value))))
    return KeyValues(tuple(items))


def provenance_section(results: StudyResults) -> Section:
    """Versions, machine and input hashes up front; the whole block as JSON below them."""
    block = results.provenance
    blocks: list[Block] = []
    if block:
        lines = _provenance_lines(block)
        if lines:
            blocks.append(Bullets(tuple(lines)))
        blocks.append(_key_values(block))
    else:
        blocks.append(
            Paragraph(
                spans(
                    "No provenance was recorded for this study (versions, machine, seeds and "
                    "input hashes are unknown)."
                ),
                "note",
            )
        )
    blocks.append(Heading("Model"))
    blocks.append(
        _key_values(results.model) if results.model else Paragraph(spans("Not recorded."), "note")
    )
    if results.config:
        blocks.append(
            Details(spans("Study configuration"), (CodeBlock(_json(results.config), "json"),))
        )
    return Section("provenance", "Provenance", tuple(blocks))


# --------------------------------------------------------------------------------------
# Sensitivity and mixed precision
# --------------------------------------------------------------------------------------

MIXED_HEADERS = (
    "variant",
    "budget",
    "groups per candidate",
    "predicted size, MiB",
    "measured size, MiB",
    "predicted KL",
    "KL on the search sample",
    "measured KL [95% CI]",
    "measured / predicted KL",
)
TOP_GROUPS = 10


def _budget_text(search: MixedSearchRecord) -> str:
    if search.budget == "target_size":
        return f"target_size {search.budget_value / MIB:,.1f} MiB"
    return f"max_kl {format_number(search.budget_value, 3)} nats/token"


def most_sensitive(record: SensitivityRecord, top: int = TOP_GROUPS) -> list[SensitivityGroup]:
    """The groups whose most aggressive candidate (the smallest) adds the most KL."""
    smallest = min(
        range(len(record.candidates)),
        key=lambda c: sum(group.sizes_bytes[c] for group in record.groups),
    )
    return sorted(record.groups, key=lambda g: -g.kl_increase[smallest])[:top]


def _layer_grid(record: SensitivityRecord, candidate: int) -> Table:
    """One candidate's panel of the heatmap as a table: decoder layers × projection."""
    groups = [g for g in record.groups if g.layer is not None]
    kinds = list(dict.fromkeys(g.kind for g in groups))
    values = {(g.layer, g.kind): g.kl_increase[candidate] for g in groups}
    layers = sorted({g.layer for g in groups if g.layer is not None})
    rows = [
        [str(layer), *(_kl_text(values.get((layer, kind))) for kind in kinds)] for layer in layers
    ]
    return simple_table(["layer", *kinds], rows, [False, *[True] * len(kinds)], EMPTY)


def _search_kl_text(search: MixedSearchRecord) -> str:
    """The search-sample KL of each allocation built, in order, the kept one starred."""
    if not search.rounds:
        return EMPTY
    return " → ".join(
        format_number(r.search_kl, 3) + ("*" if r.kept and len(search.rounds) > 1 else "")
        for r in search.rounds
    )


def _kl_text(value: float | None) -> str:
    return EMPTY if value is None else f"{value:.2e}"


def mixed_section(results: StudyResults) -> Section | None:
    """The sensitivity screen (heatmap, the most sensitive groups) and every mixed-precision
    variant's prediction beside its measurement; None when the study has neither."""
    record = results.sensitivity
    mixed = [v for v in results.variants if v.mixed is not None]
    if record is None and not mixed:
        return None
    blocks: list[Block] = []
    if record is not None:
        disjoint = {
            True: "it shares no 32-token span with the evaluation windows",
            False: "WARNING: it shares text with the evaluation windows",
            None: "the study has no evaluation windows to compare it with",
        }[record.disjoint_from_evaluation]
        blocks.append(
            Paragraph(
                spans(
                    f"Each cell is the {record.method}. Search sample: "
                    f"{record.search_tokens:,} tokens of {record.search_source}; {disjoint}. "
                    f"{len(record.groups)} groups × {len(record.candidates)} candidates "
                    f"({', '.join(record.candidates)}), screened in {record.wall_s:,.0f} s "
                    f"({record.compute_dtype}, {record.torch_threads or '?'} threads). "
                    "Round-to-nearest over-states what GPTQ leaves; the screen ranks groups, "
                    "and the mixed variants below measure the allocation it leads to."
                )
            )
        )
        blocks.append(
            Figures(
                (
                    Figure(
                        plots.sensitivity_heatmap(record),
                        "KL added by quantizing one group alone, per candidate",
                        "no group belongs to a decoder layer",
                    ),
                )
            )
        )
        blocks.append(Heading(f"The {TOP_GROUPS} most sensitive groups"))
        rows = [
            [
                group.name,
                str(len(group.linears)),
                *(_kl_text(v) for v in group.kl_increase),
                *(f"{b / MIB:,.2f}" for b in group.sizes_bytes),
            ]
            for group in most_sensitive(record)
        ]
        headers = [
            "group",
            "layers",
            *(f"KL added, {c}" for c in record.candidates),
            *(f"MiB, {c}" for c in record.candidates),
        ]
        blocks.append(simple_table(headers, rows, [False, *[True] * (len(headers) - 1)]))
        blocks.append(
            Details(
                spans("Every group, layer by layer (the heatmap's figures)"),
                tuple(
                    block
                    for c, name in enumerate(record.candidates)
                    if name not in BASELINE_SCHEMES
                    for block in (Heading(name), _layer_grid(record, c))
                ),
            )
        )
    if mixed:
        blocks.append(Heading("Mixed-precision variants: predicted and measured"))
        rows = []
        for variant in mixed:
            search = variant.mixed
            assert search is not None
            div = variant.metrics.divergence
            size = weights_bytes(variant)
            measured = div.kl_mean.estimate if div is not None else None
            rows.append(
                [
                    variant.name,
                    _budget_text(search),
                    ", ".join(f"{name} {n}" for name, n in search.counts.items()),
                    f"{search.predicted_size_bytes / MIB:,.2f}",
                    EMPTY if size is None else f"{size / MIB:,.2f}",
                    format_number(search.predicted_kl, 3),
                    _search_kl_text(search),
                    EMPTY
                    if div is None
                    else format_interval(
                        Figure_(div.kl_mean.estimate, low=div.kl_mean.low, high=div.kl_mean.high)
                    ),
                    EMPTY
                    if measured is None or search.predicted_kl <= 0
                    else f"{measured / search.predicted_kl:.2f}",
                ]
            )
        blocks.append(
            simple_table(
                MIXED_HEADERS, rows, [False, False, False, True, True, True, True, True, True]
            )
        )
        blocks.append(
            Paragraph(
                spans(
                    "The prediction adds up the screen's per-group increases: it assumes the "
                    "groups' effects are independent and that round-to-nearest stands for "
                    "GPTQ. A measured / predicted ratio below 1 is GPTQ doing better than "
                    "rounding. The KL on the search sample is the GPTQ-quantized allocation's, "
                    "measured by the quantization worker; under a KL budget it rescales the "
                    "screen and searches once more (an arrow to the second allocation's figure; "
                    "the one kept starred). The size-vs-quality plot joins each predicted point "
                    "(hollow diamond) to its measured one."
                ),
                "note",
            )
        )
    return Section("sensitivity", "Sensitivity and mixed precision", tuple(blocks))


# --------------------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------------------


def build_document(results: StudyResults) -> Document:
    """Every section of the report, in order, from the saved results alone."""
    baseline = find_baseline(results)
    spec = str(results.model.get("spec") or "unknown model")
    n = len(results.variants)
    lead: list[Span | str] = [
        f"Generated {results.created_at} by quantbench {results.quantbench_version}. "
        f"{n} variant{'s' if n != 1 else ''}. "
    ]
    if baseline is not None:
        lead += ["Baseline: ", strong(baseline.name), " (", code(baseline.scheme), ")."]
    else:
        lead.append("No bf16/fp16 variant, so there is no baseline and no deltas.")
    optional: Iterable[Section | None] = (
        divergence_section(results),
        tasks_section(results),
        axes_section(results),
        mixed_section(results),
    )
    sections = (
        measured_section(results),
        warning_section(results),
        headline_section(results),
        *(s for s in optional if s is not None),
        recommendation_section(results),
        plots_section(results),
        variants_section(results),
        generations_section(results),
        provenance_section(results),
    )
    return Document(
        title=f"quantbench · {spec}",
        lead=spans(*lead),
        sections=sections,
        footer=FOOTER,
        nav=tuple((s.id, s.title) for s in sections),
    )
