"""A self-contained Markdown report of a study, built from `results.json` alone.

It is meant to be read by someone who did not run the study: it says what was measured and
how, shows the headline table (the same figures as the CSV and the terminal table), warns
loudly when speed was measured in emulation, then gives every variant's details and a sample
of generations side by side with the baseline's. Empty headline figures render as "–".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from quantbench.recommend import describe_budget, describe_front, format_value
from quantbench.report.divergence_table import divergence_markdown
from quantbench.report.headline import HEADLINE_COLUMNS, Cell, format_interval, headline_rows
from quantbench.report.recovery_table import recovery_markdown
from quantbench.results import (
    DivergenceRecord,
    GenerationItem,
    GenerationsRecord,
    Interval,
    PerplexityRecord,
    QuantizationRecord,
    Recommendation,
    SizeRecord,
    SpeedRecord,
    Spread,
    StudyResults,
    VariantResult,
    find_baseline,
)
from quantbench.store import write_text_atomic
from quantbench.units import MIB, format_number

GENERATION_PROMPTS_PER_CATEGORY = 3
EMULATED_WARNING = (
    "> ⚠️ **Speed figures marked *emulated* were measured with weights decompressed and "
    "activation quantization simulated (transformers on CPU); they say nothing about real "
    "low-precision kernels, and quantized variants look slower than BF16 for that reason. "
    "Measure deployment speed with a runtime that has native kernels (vLLM).**"
)
EMPTY = "–"

T = TypeVar("T")
Align = Literal["left", "right"]


def escape_cell(text: str) -> str:
    """Make `text` safe inside one Markdown table cell (or one list item).

    Pipes would split the cell and newlines would end the row; angle brackets and ampersands
    would otherwise be read as HTML (chat templates are full of `<|im_end|>`).
    """
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "<br>".join(text.splitlines())


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], aligns: Sequence[Align]) -> str:
    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(escape_cell(c) or EMPTY for c in cells) + " |"

    rule = "|" + "|".join("---:" if a == "right" else ":---" for a in aligns) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


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
        Cell(interval.estimate, low=interval.low, high=interval.high),
        significant=significant,
        minimum=minimum,
        sign=sign,
    )


def _code_list(values: dict[str, Any]) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in values.items()) or "defaults"


def _measured(results: StudyResults, baseline: VariantResult | None) -> list[str]:
    """The "what was measured" paragraph, read from the records (config as a fallback)."""
    parts: list[str] = []
    evaluation = _config_section(results, "evaluation")
    ppl = _first_record(results, baseline, lambda v: v.metrics.perplexity)
    div = _first_record(results, baseline, lambda v: v.metrics.divergence)
    if ppl is not None:
        confidence = round(ppl.perplexity.confidence * 100)
        parts.append(
            f"Perplexity was scored on corpus `{ppl.corpus}`: {ppl.n_tokens:,} tokens in "
            f"{ppl.n_windows:,} windows of {ppl.window} tokens (stride {ppl.stride}), the same "
            f"tokens for every variant; intervals are {confidence}% bootstrap confidence "
            "intervals over windows, and Δppl is paired against the baseline."
        )
    elif corpus := _config_section(results, "evaluation", "corpus"):
        parts.append(
            f"Perplexity was configured on corpus `{corpus.get('source')}` "
            f"(windows of {corpus.get('window')} tokens) but no variant has a perplexity record."
        )
    if div is not None:
        parts.append(
            f"KL divergence is KL(baseline ‖ variant) in nats per token over {div.n_tokens:,} "
            + (
                "tokens, from the baseline's full distribution; "
                if div.method == "exact"
                else f"tokens, from the baseline's top-{div.top_k} log-probabilities plus the "
                "tail mass (a lower bound of the exact KL); "
            )
            + "top-1 agreement is the share of tokens where both pick the same next token."
        )
    size = _first_record(results, baseline, lambda v: v.metrics.size)
    speed = _first_record(results, baseline, lambda v: v.metrics.speed)
    backend = (size.backend if size else None) or evaluation.get("backend")
    backend = backend or (speed.backend if speed else None)
    device = (size.device if size else None) or (speed.device if speed else None)
    backend = backend or evaluation.get("backend")
    device = device or evaluation.get("device")
    if speed is not None and backend and speed.backend != backend:
        parts.append(
            f"Quality figures (size, perplexity, divergence, generations, tasks) ran on the "
            f"`{backend}` backend, device `{device}`; speed ran on the `{speed.backend}` "
            f"backend, device `{speed.device}`."
        )
    elif backend:
        parts.append(f"Evaluation ran on the `{backend}` backend, device `{device}`.")
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
            f"Speed: {shape} at batch sizes {batches}; {speed.warmup} warm-up run(s) excluded "
            f"and {speed.repeats} timed run(s) per point{threads}; the headline shows medians."
        )
    gen = _first_record(results, baseline, lambda v: v.metrics.generations)
    if gen is not None:
        parts.append(
            f"Generations: suite `{gen.suite}`, {gen.n_prompts} prompts, up to "
            f"{gen.max_new_tokens} new tokens, compared token by token with the baseline's."
        )
    if len(results.calibrations) > 1:
        settings = "; ".join(
            f"{c.num_samples} × {c.seq_len} tokens from `{c.source}` (seed {c.seed})"
            for c in results.calibrations
        )
        parts.append(f"Calibration (GPTQ, SmoothQuant), one setting per study axis: {settings}.")
    elif results.calibration is not None:
        cal = results.calibration
        parts.append(
            f"Calibration (GPTQ, SmoothQuant): {cal.num_samples} samples of up to "
            f"{cal.seq_len} tokens from `{cal.source}` ({cal.total_tokens:,} tokens, "
            f"seed {cal.seed})."
        )
    return parts or ["No metric records were saved for this study."]


def _any_emulated(results: StudyResults) -> bool:
    return any(
        v.metrics.speed is not None and v.metrics.speed.execution_mode == "emulated"
        for v in results.variants
    )


def render_headline_table(results: StudyResults) -> str:
    """The side-by-side headline table, one row per variant, from `HEADLINE_COLUMNS`."""
    rows = headline_rows(results)
    return _table(
        [c.title for c in HEADLINE_COLUMNS],
        [[c.text(row) for c in HEADLINE_COLUMNS] for row in rows],
        [c.align for c in HEADLINE_COLUMNS],
    )


_QUALITY_NAMES = {
    "kl_mean": "mean KL(baseline ‖ variant), nats/token",
    "perplexity": "perplexity",
}


def render_recommendation(rec: Recommendation) -> str:
    """The "## Recommendation" section: constraints, the pick per objective, every variant's
    verdict and the Pareto fronts, all read from the saved `Recommendation`."""
    constraints = describe_budget(rec)
    lines = [
        "## Recommendation",
        "",
        f"Constraints: {escape_cell(constraints)}. A constraint whose metric is missing counts "
        "as not met.",
        "",
        f"**{escape_cell(rec.summary)}**",
        "",
    ]
    rows = [
        [
            choice.objective,
            choice.variant or ("not judged" if not choice.judged else "none"),
            format_value(choice.value, choice.unit),
            choice.reason,
        ]
        for choice in rec.choices
    ]
    if rows:
        aligns: list[Align] = ["left", "left", "right", "left"]
        lines += [_table(["objective", "variant", "value", "reason"], rows, aligns), ""]
    lines += ["Verdicts:", ""]
    for verdict in rec.verdicts:
        name = f"**{escape_cell(verdict.variant)}**"
        if verdict.acceptable:
            lines.append(f"- {name}: acceptable")
            continue
        parts = []
        if verdict.broken:
            parts.append("breaks " + "; ".join(escape_cell(b) for b in verdict.broken))
        if verdict.unknown:
            parts.append(
                "cannot be checked (not acceptable): "
                + "; ".join(escape_cell(u) for u in verdict.unknown)
            )
        lines.append(f"- {name}: " + ("; ".join(parts) or "not acceptable"))
    quality = _QUALITY_NAMES.get(rec.quality_metric, rec.quality_metric)
    lines += [
        "",
        f"Pareto fronts (lower is better on both axes; quality = {escape_cell(quality)}), "
        "over ok variants that have both figures:",
        "",
        "- weights on disk vs quality: "
        + _front_text(rec.pareto_size_quality, rec.pareto_size_ties),
    ]
    if rec.speed_judged:
        speed_front = _front_text(rec.pareto_speed_quality, rec.pareto_speed_ties)
    else:
        speed_front = "not drawn: the speed figures are emulated"
    lines += [f"- decode time per token at batch 1 vs quality: {speed_front}", ""]
    return "\n".join(lines)


def _front_text(names: Sequence[str], ties: dict[str, list[str]]) -> str:
    return escape_cell(describe_front(names, ties)) or "no variant has both figures"


def _problems(results: StudyResults) -> list[str]:
    lines: list[str] = []
    for v in results.variants:
        if v.status == "failed":
            lines.append(f"- **{escape_cell(v.name)}** failed: {escape_cell(v.error or 'unknown')}")
        for metric, why in v.metrics.errors.items():
            lines.append(
                f"- **{escape_cell(v.name)}**: metric `{metric}` failed: {escape_cell(why)}"
            )
    return lines


def _quantization_lines(quant: QuantizationRecord) -> list[str]:
    phases = ", ".join(f"{k} {s:,.1f} s" for k, s in quant.phases.items())
    threads = f", {quant.torch_threads} torch threads" if quant.torch_threads else ""
    text = f"- Quantization: {quant.wall_s:,.1f} s wall, peak RSS {_mib(quant.peak_rss_bytes)}"
    return [text + threads + (f" (phases: {phases})" if phases else "")]


def _size_lines(size: SizeRecord) -> list[str]:
    by_dtype = ", ".join(f"{k} {_mib(n)}" for k, n in size.param_bytes_by_dtype.items())
    gpu = f", GPU peak {_mib(size.gpu_peak_bytes)}" if size.gpu_peak_bytes is not None else ""
    return [
        f"- Size: weights {_mib(size.weights_bytes)}, whole artifact {_mib(size.artifact_bytes)}"
        + (f"; stored tensors by dtype: {by_dtype}" if by_dtype else ""),
        f"- Memory: loaded in {size.load_s:,.2f} s; RSS after load {_mib(size.rss_loaded_bytes)}, "
        f"peak while generating {_mib(size.rss_peak_generating_bytes)}{gpu} "
        f"(`{size.backend}` on `{size.device}`)",
    ]


def _perplexity_lines(ppl: PerplexityRecord) -> list[str]:
    text = (
        f"- Perplexity: {_interval(ppl.perplexity)} "
        f"(mean NLL {ppl.nll_mean:.4f} nats/token, {ppl.n_tokens:,} tokens)"
    )
    if ppl.delta_vs_baseline is not None:
        text += f"; Δ vs baseline {_interval(ppl.delta_vs_baseline, 2, 2, sign=True)}"
    if ppl.ratio_vs_baseline is not None:
        text += f", ratio {ppl.ratio_vs_baseline:.4f}×"
    return [text]


def _divergence_lines(div: DivergenceRecord) -> list[str]:
    lines = [
        f"- KL(baseline ‖ variant), nats/token over {div.n_tokens:,} tokens: mean "
        f"{_interval(div.kl_mean, 3, 3)}, median {format_number(div.kl_median, 3, 3)}, "
        f"p99 {format_number(div.kl_p99, 3, 3)}, max {format_number(div.kl_max, 3, 3)}",
        "- Top-1 agreement: "
        + format_interval(
            Cell(div.top1_agreement.estimate, div.top1_agreement.low, div.top1_agreement.high),
            significant=3,
            minimum=1,
            scale=100.0,
        )
        + " %",
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
            f"- Top-k approximation check on the first {check:,} tokens: "
            + ", ".join(f for f in figures if f)
        )
    else:
        lines.append(f"- Top-k approximation check: not run (top-{div.top_k} + tail mass)")
    if div.ref_prob_delta:
        lines += [
            "",
            "Change in the probability of the reference token (variant − baseline):",
            "",
            _table(
                list(div.ref_prob_delta),
                [[f"{x:+.4f}" for x in div.ref_prob_delta.values()]],
                ["right"] * len(div.ref_prob_delta),
            ),
        ]
    return lines


def _spread_cells(spread: Spread, to_text: Callable[[float], str]) -> list[str]:
    return [to_text(spread.median), to_text(spread.p90), f"{spread.cv * 100:.1f}%"]


def _speed_lines(speed: SpeedRecord) -> list[str]:
    mode = f"**{speed.execution_mode}**" if speed.execution_mode == "emulated" else "native"
    threads = f", {speed.threads} threads" if speed.threads else ""
    if speed.thread_binding:
        threads = f", OpenMP threads bound to cores {speed.thread_binding}"
    lines = [
        f"Speed: {mode} execution on `{speed.backend}` / `{speed.device}`{threads}; "
        f"{escape_cell(speed.detail)}",
        "",
    ]
    if speed.startup_s is not None:
        lines[-1:-1] = [
            "",
            f"Model load{' (engine start-up and compilation)' if speed.backend == 'vllm' else ''}"
            f": {speed.startup_s:.1f} s, apart from the steady-state figures below.",
        ]
    if speed.sample_output:
        lines[-1:-1] = [
            "",
            f"Output checked beside the figures (the first timed prompt, decoded greedily): "
            f"`{escape_cell(speed.sample_output[:120].strip())}`",
        ]
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
            f"{p.batch_size / p.e2e_s.median:,.2f}" if p.e2e_s.median > 0 else "–",
            *(
                ([_ms(p.itl_s.median), _ms(p.itl_s.p90)] if p.itl_s else ["–", "–"])
                if with_itl
                else []
            ),
        ]
        for p in speed.points
    ]
    right: list[Align] = ["right"] * (len(headers) - 2)
    aligns: list[Align] = ["right", "left", *right]
    lines.append(_table(headers, rows, aligns) if rows else "No speed points were recorded.")
    return lines


def _variant_section(variant: VariantResult, baseline: VariantResult | None) -> list[str]:
    role = " — baseline" if variant is baseline else ""
    lines = [f"### {escape_cell(variant.name)} (`{variant.scheme}`){role}", ""]
    status = "ok" if variant.status == "ok" else f"**failed**: {escape_cell(variant.error or '')}"
    lines.append(f"- Status: {status}")
    lines.append(f"- Options used: {_code_list(variant.options)}")
    if variant.options_requested and variant.options_requested != variant.options:
        lines.append(f"- Options requested: {_code_list(variant.options_requested)}")
    if variant.decisions:
        lines.append("- Pre-flight decisions:")
        lines += [f"  - {escape_cell(d)}" for d in variant.decisions]
    if variant.notes:
        lines.append("- Notes:")
        lines += [f"  - {escape_cell(n)}" for n in variant.notes]
    if variant.quantization is not None:
        lines += _quantization_lines(variant.quantization)
    metrics = variant.metrics
    if metrics.size is not None:
        lines += _size_lines(metrics.size)
    elif variant.disk_bytes is not None:
        lines.append(f"- Size: weights {_mib(variant.disk_bytes)} (from the quantizer)")
    if metrics.perplexity is not None:
        lines += _perplexity_lines(metrics.perplexity)
    if metrics.divergence is not None:
        lines += _divergence_lines(metrics.divergence)
    if metrics.speed is not None:
        lines += ["", *_speed_lines(metrics.speed)]
    for name, record in metrics.plugins.items():  # metrics of installed packages, as recorded
        figures = ", ".join(f"{key} = {json.dumps(value)}" for key, value in record.items())
        lines.append(f"- `{escape_cell(name)}` (plugin metric): {escape_cell(figures)}")
    if metrics.errors:
        lines += ["", "Metric errors:", ""]
        lines += [f"- `{m}`: {escape_cell(why)}" for m, why in metrics.errors.items()]
    measured = [
        name
        for name in ("size", "perplexity", "divergence", "speed", "generations")
        if getattr(metrics, name) is not None
    ] + list(metrics.plugins)
    if not measured and not metrics.errors:
        lines += ["", "No metrics were recorded for this variant."]
    return [*lines, ""]


def _generation_row(variant: VariantResult, item: GenerationItem, is_baseline: bool) -> list[str]:
    if is_baseline:
        return [f"{variant.name} (baseline)", "", "", "", item.text]
    exact = "" if item.exact_match is None else ("yes" if item.exact_match else "no")
    first_diff = "" if item.first_diff is None else str(item.first_diff)
    rouge = "" if item.rouge_l is None else f"{item.rouge_l:.3f}"
    return [variant.name, exact, first_diff, rouge, item.text]


def _generations_section(results: StudyResults, baseline: VariantResult | None) -> list[str]:
    reference: GenerationsRecord | None = _first_record(
        results, baseline, lambda v: v.metrics.generations
    )
    if reference is None:
        return []
    by_category: dict[str, list[str]] = {}
    for item in reference.items:
        ids = by_category.setdefault(item.category, [])
        if len(ids) < GENERATION_PROMPTS_PER_CATEGORY:
            ids.append(item.id)
    with_generations = [v for v in results.variants if v.metrics.generations is not None]
    ordered = sorted(with_generations, key=lambda v: v is not baseline)
    items = {
        v.name: {i.id: i for i in v.metrics.generations.items}
        for v in ordered
        if v.metrics.generations is not None
    }
    lines = [
        "## Generations",
        "",
        f"The first {GENERATION_PROMPTS_PER_CATEGORY} prompts of each category. Each variant's "
        "text is shown beside the baseline's, with whether it is identical, the index of the "
        "first token that differs, and ROUGE-L F1 on token ids against the baseline.",
        "",
    ]
    headers = ["variant", "exact match", "first diff (token)", "ROUGE-L", "text"]
    aligns: list[Align] = ["left", "left", "right", "right", "left"]
    for category, ids in by_category.items():
        lines += [f"### {escape_cell(category)}", ""]
        for prompt_id in ids:
            rows = [
                _generation_row(v, items[v.name][prompt_id], v is baseline)
                for v in ordered
                if prompt_id in items[v.name]
            ]
            lines += [f"#### `{prompt_id}`", "", _table(headers, rows, aligns), ""]
    return lines


def render_markdown(results: StudyResults) -> str:
    """The whole report as Markdown text (GitHub-flavoured tables)."""
    baseline = find_baseline(results)
    spec = results.model.get("spec") or "unknown model"
    lines = [f"# quantbench · {escape_cell(str(spec))}", ""]
    made = f"Generated {results.created_at} by quantbench {results.quantbench_version}."
    if baseline is not None:
        made += f" Baseline: **{escape_cell(baseline.name)}** (`{baseline.scheme}`)."
    else:
        made += " No bf16/fp16 variant, so there is no baseline and no deltas."
    lines += [made, "", "## What was measured", "", " ".join(_measured(results, baseline)), ""]
    if _any_emulated(results):
        lines += [EMULATED_WARNING, ""]
    problems = _problems(results)
    if problems:
        lines += ["## Problems", "", *problems, ""]
    if results.notes:
        lines += ["## Notes", "", *[f"- {escape_cell(note)}" for note in results.notes], ""]
    lines += [
        "## Headline",
        "",
        "Deltas and ratios are against the baseline; speed cells name their execution mode; "
        f"{EMPTY} means not measured (see the variant's details).",
        "",
        render_headline_table(results),
        "",
    ]
    lines += divergence_markdown(results)
    lines += _tasks_section(results)
    lines += recovery_markdown(results)
    lines += _axes_section(results)
    if results.recommendation is not None:
        lines += [render_recommendation(results.recommendation), ""]
    lines += ["## Variants", ""]
    for variant in results.variants:
        lines += _variant_section(variant, baseline)
    lines += _generations_section(results, baseline)
    lines += _provenance_section(results)
    return "\n".join(lines).rstrip("\n") + "\n"


def _axes_section(results: StudyResults) -> list[str]:
    from quantbench.report.axes import axis_headers, axis_tables

    tables = axis_tables(results)
    if not tables:
        return []
    lines = [
        "## Study axes",
        "",
        "Each table follows one axis of the study matrix, the other axes fixed per row: mean "
        "KL(baseline ‖ variant) in nats/token with its 95% interval, and the perplexity change.",
        "",
    ]
    for table in tables:
        headers = axis_headers(table)
        right: Align = "right"
        aligns: list[Align] = ["left", *([right] * len(table.values))]
        cells = ([escape_cell(label), *map(escape_cell, row)] for label, row in table.rows)
        lines += [f"### {escape_cell(table.axis)}", "", _table(headers, cells, aligns), ""]
    return lines


def _tasks_section(results: StudyResults) -> list[str]:
    from quantbench.report.tasks_table import (
        TASK_HEADERS,
        task_cells,
        task_rows,
        task_settings_text,
    )

    rows = task_rows(results)
    if not rows:
        return []
    aligns: list[Align] = ["left", "left", "right", "right", "right", "right", "right"]
    cells = ([escape_cell(c) for c in task_cells(row)] for row in rows)
    return [
        "## Task accuracy",
        "",
        escape_cell(task_settings_text(results)),
        "",
        _table(TASK_HEADERS, cells, aligns),
        "",
    ]


def _provenance_section(results: StudyResults) -> list[str]:
    """Versions, machine and input hashes up front; the whole block as JSON below them."""
    block = results.provenance
    if not block:
        return ["## Provenance", "", "No provenance was recorded for these results.", ""]
    lines = ["## Provenance", ""]
    quantbench = block.get("quantbench") or {}
    if quantbench:
        lines.append(
            f"- quantbench {quantbench.get('version')} (commit {quantbench.get('git_commit')})"
        )
    libraries = block.get("libraries") or {}
    present = ", ".join(f"{name} {ver}" for name, ver in libraries.items() if ver)
    if present:
        lines.append(f"- libraries: {present}")
    cpu = block.get("cpu") or {}
    if cpu:
        flags = ", ".join(name for name, on in (cpu.get("flags") or {}).items() if on)
        lines.append(
            f"- machine: {cpu.get('model')}, {cpu.get('usable_cores')} usable cores; "
            f"flags: {flags or 'none of note'}; Python {block.get('python')}; {block.get('os')}"
        )
    for gpu in block.get("gpus") or []:
        lines.append(f"- GPU: {gpu.get('name')} (driver {gpu.get('driver')})")
    lines += [
        "",
        "<details><summary>Full provenance (JSON)</summary>",
        "",
        "```json",
        json.dumps(block, indent=2, sort_keys=True, default=str),
        "```",
        "",
        "</details>",
        "",
    ]
    return lines


def write_markdown(results: StudyResults, path: Path) -> None:
    """Write the report so that readers see the old file or the new one, never half of one."""
    write_text_atomic(path, render_markdown(results))
