"""A self-contained HTML report of a study, built from `results.json` alone.

One file: inline CSS, plots as inline SVG, no script, no external resource, so it opens from a
disk, an e-mail attachment or a CI artifact exactly as written. The headline table is built
from `HEADLINE_COLUMNS` / `headline_rows`, so it shows the same figures as the Markdown and CSV
reports. Sections (each an element with this `id`, in this order): `warning`, `headline`,
`recommendation`, `plots`, `generations`, `provenance`. Every piece of text from the results is
escaped with `html.escape`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

from quantbench.recommend import describe_budget, describe_front, format_value
from quantbench.report import plots
from quantbench.report.divergence_table import divergence_html
from quantbench.report.headline import HEADLINE_COLUMNS, headline_rows
from quantbench.report.markdown import EMPTY
from quantbench.report.recovery_table import recovery_html
from quantbench.results import (
    GenerationItem,
    GenerationsRecord,
    Recommendation,
    StudyResults,
    VariantResult,
    find_baseline,
)
from quantbench.store import write_text_atomic

OPEN_ALL_PROMPTS = 12
"""Up to this many prompts every category starts open; beyond it, only the first."""
SECTION_IDS = ("warning", "headline", "recommendation", "plots", "generations", "provenance")
EMULATED_BANNER = (
    "Speed figures marked emulated were measured with weights decompressed and activation "
    "quantization simulated (transformers on CPU); they say nothing about real low-precision "
    "kernels, and quantized variants look slower than BF16 for that reason. Measure deployment "
    "speed with a runtime that has native kernels (vLLM)."
)

CSS = """
:root {
  --fg: #1d2125; --muted: #5f6b76; --line: #d8dde3; --bg: #ffffff; --band: #f5f7f9;
  --accent: #0b5cad; --warn-bg: #fff4df; --warn-line: #d98a00; --warn-fg: #6b4300;
  --bad: #b3261e; --good: #1b7a3d; --mark: #ffe08a;
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body {
  margin: 0; color: var(--fg); background: var(--bg);
  font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    "DejaVu Sans", sans-serif;
}
main { max-width: 78rem; margin: 0 auto; padding: 1.5rem 1.25rem 4rem; }
h1 { font-size: 1.75rem; line-height: 1.2; margin: 0 0 .4rem; }
h2 { font-size: 1.3rem; margin: 2.4rem 0 .8rem; padding-bottom: .3rem;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.4rem 0 .5rem; }
p { margin: .5rem 0; max-width: 70rem; }
code, pre, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas,
  "DejaVu Sans Mono", monospace; font-size: .88em; }
.lead { color: var(--muted); }
nav.toc { margin: .8rem 0 0; font-size: .92rem; display: flex; flex-wrap: wrap; gap: .2rem 1rem; }
nav.toc a { color: var(--accent); text-decoration: none; }
nav.toc a:hover { text-decoration: underline; }
.note { color: var(--muted); font-style: italic; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; margin: .6rem 0 1rem;
  border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { padding: .45rem .65rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--band); text-align: left; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table:not(.headline) td:last-child { min-width: 16rem; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
tbody tr:last-child td { border-bottom: none; }
tr.baseline td { font-weight: 600; }
tr.failed td { color: var(--bad); }
td.empty { color: #9aa4ad; }
table.headline th { white-space: normal; min-width: 6rem; vertical-align: bottom; }
table.headline td { white-space: nowrap; }
table.headline th:first-child, table.headline td:first-child {
  position: sticky; left: 0; z-index: 1; background: var(--bg);
  box-shadow: inset -1px 0 0 var(--line); }
table.headline th:first-child { background: var(--band); }
table.headline tbody tr:nth-child(even) td:first-child { background: #fbfcfd; }
td.emulated, tbody tr:nth-child(even) td.emulated {
  background: var(--warn-bg); color: var(--warn-fg);
  box-shadow: inset 3px 0 0 var(--warn-line);
}
.ci { color: var(--muted); font-size: .86em; }
.swatch { display: inline-block; width: .9em; height: .9em; vertical-align: -.1em;
  background: var(--warn-bg); box-shadow: inset 3px 0 0 var(--warn-line);
  border: 1px solid var(--warn-line); }
.banner { border: 1px solid var(--warn-line); border-left-width: 6px; background: var(--warn-bg);
  color: var(--warn-fg); border-radius: 6px; padding: .8rem 1rem; margin: 1rem 0; }
.banner strong { display: block; margin-bottom: .2rem; }
.banner ul { margin: .3rem 0 0; padding-left: 1.2rem; }
.summary { font-size: 1.05rem; font-weight: 600; background: var(--band);
  border-left: 4px solid var(--accent); padding: .7rem 1rem; border-radius: 4px; }
.yes { color: var(--good); font-weight: 600; }
.no { color: var(--bad); font-weight: 600; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: .35rem 1.2rem;
  margin: .5rem 0; }
dl.kv dt { font-weight: 600; }
dl.kv dd { margin: 0; min-width: 0; }
pre { background: var(--band); border: 1px solid var(--line); border-radius: 6px;
  padding: .6rem .8rem; margin: 0; overflow-x: auto; white-space: pre; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 34rem), 1fr));
  gap: 1.2rem; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: .6rem;
  background: #fff; min-width: 0; }
figure svg { display: block; width: 100%; height: auto; }
figcaption { font-size: .85rem; color: var(--muted); margin-top: .3rem; }
details { border: 1px solid var(--line); border-radius: 6px; margin: .8rem 0; }
details > summary { cursor: pointer; padding: .55rem .9rem; background: var(--band);
  font-weight: 600; border-radius: 6px; }
details[open] > summary { border-bottom: 1px solid var(--line); border-radius: 6px 6px 0 0; }
.prompt { padding: .8rem .9rem 1rem; border-bottom: 1px solid var(--line); }
.prompt:last-child { border-bottom: none; }
.prompt h4 { margin: 0 0 .35rem; font-size: .95rem; }
.prompt h4 code { color: var(--muted); font-weight: 400; }
.ask { white-space: pre-wrap; margin: 0 0 .6rem; padding: .4rem .7rem; background: #eef4fb;
  border-radius: 4px; font-size: .92rem; }
.outputs { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 17rem), 1fr));
  gap: .6rem; }
.output { border: 1px solid var(--line); border-radius: 6px; padding: .45rem .6rem; min-width: 0; }
.output.is-baseline { background: var(--band); }
.output header { font-size: .85rem; font-weight: 600; margin-bottom: .25rem; }
.badge { display: inline-block; font-size: .75rem; font-weight: 500; padding: 0 .4rem;
  margin-left: .3rem; border-radius: 999px; background: #e8ecf0; color: var(--muted); }
.badge.same { background: #e2f3e7; color: var(--good); }
.badge.diff { background: #fde8e6; color: var(--bad); }
.gen { white-space: pre-wrap; overflow-wrap: anywhere; font-size: .88rem; margin: 0;
  font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace; }
mark { background: var(--mark); color: inherit; border-radius: 2px; }
mark.end { background: #fde8e6; font-style: italic; font-family: system-ui, sans-serif; }
footer { margin-top: 3rem; color: var(--muted); font-size: .85rem; }
@media (max-width: 40rem) {
  main { padding: 1rem .7rem 3rem; }
  h1 { font-size: 1.4rem; }
  dl.kv { grid-template-columns: 1fr; }
}
@media print { details { break-inside: avoid; } nav.toc { display: none; } }
"""

_QUALITY = {
    "kl_mean": "mean KL(baseline ‖ variant), nats/token",
    "perplexity": "perplexity",
}
_NAV = (
    ("warning", "Caveats"),
    ("headline", "Headline"),
    ("recommendation", "Recommendation"),
    ("plots", "Plots"),
    ("generations", "Generations"),
    ("provenance", "Provenance"),
)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _section(section_id: str, title: str, body: Iterable[str]) -> str:
    return "\n".join([f'<section id="{section_id}">', f"<h2>{_e(title)}</h2>", *body, "</section>"])


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool] = ()
) -> str:
    """A scrollable table; cells are already HTML."""

    def cls(i: int) -> str:
        return ' class="num"' if i < len(numeric) and numeric[i] else ""

    head = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


# --------------------------------------------------------------------------------------
# Caveats
# --------------------------------------------------------------------------------------


def _any_emulated(results: StudyResults) -> bool:
    return any(
        v.metrics.speed is not None and v.metrics.speed.execution_mode == "emulated"
        for v in results.variants
    )


def _problems(results: StudyResults) -> list[str]:
    lines: list[str] = []
    for v in results.variants:
        if v.status == "failed":
            lines.append(f"<b>{_e(v.name)}</b> failed: {_e(v.error or 'unknown error')}")
        for metric, why in v.metrics.errors.items():
            lines.append(f"<b>{_e(v.name)}</b>: metric <code>{_e(metric)}</code> failed: {_e(why)}")
    return lines


def _warning_section(results: StudyResults) -> str:
    body: list[str] = []
    if _any_emulated(results):
        emulated = [
            v.name
            for v in results.variants
            if v.metrics.speed is not None and v.metrics.speed.execution_mode == "emulated"
        ]
        body.append(
            '<div class="banner" role="alert"><strong>⚠ Emulated speed: '
            f"{_e(', '.join(emulated))}</strong>{_e(EMULATED_BANNER)}</div>"
        )
    model_notes = results.model.get("notes")
    notes = [*results.notes, *(model_notes if isinstance(model_notes, list) else [])]
    if notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in notes)
        body.append(f'<div class="banner"><strong>Notes</strong><ul>{items}</ul></div>')
    problems = _problems(results)
    if problems:
        items = "".join(f"<li>{p}</li>" for p in problems)
        body.append(f'<div class="banner"><strong>Problems</strong><ul>{items}</ul></div>')
    if not body:
        body.append(
            '<p class="note">Nothing to warn about: no emulated speed figures, no failed '
            "variants or metrics, no caveats recorded.</p>"
        )
    return _section("warning", "Caveats", body)


# --------------------------------------------------------------------------------------
# Headline
# --------------------------------------------------------------------------------------


def _cell_html(text: str, has_interval: bool) -> str:
    """The headline text, with an interval's bracket part set in a quieter style."""
    if has_interval and " [" in text:
        value, interval = text.split(" [", 1)
        return f'{_e(value)} <span class="ci">[{_e(interval)}</span>'
    return _e(text)


def render_headline_table(results: StudyResults) -> str:
    """The headline table as HTML: the same columns and texts as the Markdown and CSV."""
    num = ' class="num"'
    head = "".join(
        f'<th{num if c.align == "right" else ""} scope="col">{_e(c.title)}</th>'
        for c in HEADLINE_COLUMNS
    )
    rows: list[str] = []
    for row in headline_rows(results):
        classes = [
            c for c, on in (("baseline", row.is_baseline), ("failed", row.status != "ok")) if on
        ]
        cells: list[str] = []
        for col in HEADLINE_COLUMNS:
            cell = row.cell(col.key)
            text = col.text(row)
            cls = ["num"] if col.align == "right" else []
            title = ""
            if not text:
                cls.append("empty")
                content = EMPTY
            else:
                content = _cell_html(text, cell.low is not None and cell.high is not None)
            if cell.mode == "emulated" or (col.key == "speed_mode" and cell.value == "emulated"):
                cls.append("emulated")
                title = ' title="emulated: not real low-precision kernels"'
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f"<td{attr}{title}>{content}</td>")
        row_attr = f' class="{" ".join(classes)}"' if classes else ""
        rows.append(f"<tr{row_attr}>{''.join(cells)}</tr>")
    return (
        '<div class="scroll"><table class="headline"><thead><tr>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _headline_section(results: StudyResults) -> str:
    body = [
        "<p>Deltas and ratios are against the baseline; intervals are 95% bootstrap confidence "
        f"intervals; speed cells name their execution mode; {EMPTY} means not measured.</p>",
        render_headline_table(results),
    ]
    if _any_emulated(results):
        body.append(
            '<p class="note"><span class="swatch"></span> Shaded cells are emulated speed '
            "figures: they time the emulation, not real low-precision kernels.</p>"
        )
    return _section("headline", "Headline", body)


# --------------------------------------------------------------------------------------
# Recommendation
# --------------------------------------------------------------------------------------


def _limit(value: float | None, unit: str) -> str:
    if value is None:
        return "not applied"
    return f"{value:g}{unit}" if unit == "%" else f"{value:g} {unit}"


def _recommendation_body(rec: Recommendation) -> list[str]:
    constraints = describe_budget(rec)
    c = rec.constraints
    body = [
        f'<p class="summary">{_e(rec.summary)}</p>',
        "<h3>Constraints</h3>",
        f"<p>{_e(constraints)}. A constraint whose metric is missing counts as not met.</p>",
        '<dl class="kv">',
        f"<dt>max KL</dt><dd>{_e(_limit(c.max_kl, 'nats/token'))}</dd>",
        f"<dt>max perplexity increase</dt><dd>{_e(_limit(c.max_ppl_increase_pct, '%'))}</dd>",
        f"<dt>max accuracy drop</dt><dd>{_e(_limit(c.max_accuracy_drop, 'points'))}</dd>",
        f"<dt>task margin</dt><dd>{_e(_limit(c.non_inferiority_margin, 'points'))}</dd>",
        "</dl>",
        "<h3>Best acceptable variant per objective</h3>",
    ]
    if rec.choices:
        rows = [
            [
                _e(choice.objective),
                _e(choice.variant)
                if choice.variant
                else f'<span class="note">{"not judged" if not choice.judged else "none"}</span>',
                _e(format_value(choice.value, choice.unit)) or EMPTY,
                _e(choice.reason),
            ]
            for choice in rec.choices
        ]
        body.append(_table(["objective", "variant", "value", "reason"], rows, [False, False, True]))
    else:
        body.append('<p class="note">No objective was evaluated.</p>')
    body.append("<h3>Verdicts</h3>")
    verdict_rows = [
        [
            f"<b>{_e(v.variant)}</b>",
            '<span class="yes">acceptable</span>'
            if v.acceptable
            else '<span class="no">not acceptable</span>',
            "<br>".join(_e(b) for b in v.broken) or EMPTY,
            "<br>".join(_e(u) for u in v.unknown) or EMPTY,
        ]
        for v in rec.verdicts
    ]
    body.append(
        _table(
            ["variant", "verdict", "breaks", "cannot be checked (counts as not met)"], verdict_rows
        )
    )
    quality = _QUALITY.get(rec.quality_metric, rec.quality_metric)
    speed_front = (
        describe_front(rec.pareto_speed_quality, rec.pareto_speed_ties)
        or "no variant has both figures"
        if rec.speed_judged
        else "not drawn: the speed figures are emulated"
    )
    body += [
        "<h3>Pareto fronts</h3>",
        f"<p>Lower is better on both axes; quality = {_e(quality)}; over ok variants that have "
        "both figures.</p>",
        '<dl class="kv">',
        "<dt>weights on disk vs quality</dt>"
        f"<dd>{_e(describe_front(rec.pareto_size_quality, rec.pareto_size_ties) or EMPTY)}</dd>",
        f"<dt>decode time per token at batch 1 vs quality</dt><dd>{_e(speed_front)}</dd>",
        "</dl>",
    ]
    return body


def _recommendation_section(results: StudyResults) -> str:
    rec = results.recommendation
    if rec is None:
        body = [
            '<p class="note">No recommendation was computed for this study. Constraints (for '
            "example a maximum KL or perplexity increase) decide which variants are acceptable; "
            "rebuild the reports with constraints to get one.</p>"
        ]
    else:
        body = _recommendation_body(rec)
    return _section("recommendation", "Recommendation", body)


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------


def _figure(svg: str | None, caption: str, missing: str) -> str:
    if svg is None:
        return f'<figure class="absent"><p class="note">Not drawn: {_e(missing)}.</p></figure>'
    return f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>"


def _plots_section(results: StudyResults) -> str:
    figures = [
        _figure(
            plots.size_vs_quality(results),
            "One point per ok variant; error bars are 95% confidence intervals; the dashed step "
            "line and rings mark the Pareto front (no other variant is both smaller and better).",
            "no variant has both a size and a quality figure",
        ),
        _figure(
            plots.speed_vs_quality(results),
            "Decode time per output token at batch 1 (median, whisker to p90) against quality. "
            "Hollow points are emulated; no front is drawn when any speed figure is emulated.",
            "no variant has both a decode time at batch 1 and a quality figure",
        ),
    ]
    for metric in plots.BAR_METRICS:
        title = plots.bar_title(metric)
        figures.append(
            _figure(
                plots.metric_bars(results, metric),
                f"{title}: one bar per variant that has the figure.",
                f"no variant has {title.lower()}",
            )
        )
    body = ['<div class="plots">', *figures, "</div>"]
    return _section("plots", "Plots", body)


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


def highlight_divergence(reference: str, text: str) -> str:
    """`text` as HTML with the part after the shared start with `reference` in `<mark>`."""
    if text == reference:
        return _e(text)
    n = diverging_prefix(reference, text)
    if n == len(text):
        return (
            _e(text) + '<mark class="end" title="the baseline continues">'
            "[ends here; the baseline continues]</mark>"
        )
    return f"{_e(text[:n])}<mark>{_e(text[n:])}</mark>"


def _badges(item: GenerationItem, text_differs: bool) -> str:
    parts: list[str] = []
    if item.exact_match or (item.exact_match is None and not text_differs):
        parts.append('<span class="badge same">identical</span>')
    else:
        parts.append('<span class="badge diff">differs</span>')
        if item.first_diff is not None:
            parts.append(f'<span class="badge">from token {item.first_diff}</span>')
    if item.rouge_l is not None:
        parts.append(f'<span class="badge">ROUGE-L {item.rouge_l:.3f}</span>')
    parts.append(f'<span class="badge">{item.n_tokens} tokens</span>')
    return "".join(parts)


def _prompt_block(
    prompt_id: str,
    reference: GenerationItem,
    reference_name: str,
    others: Sequence[tuple[str, GenerationItem]],
    is_baseline: bool,
) -> str:
    prompt = reference.prompt
    if prompt is None:
        prompt = next((item.prompt for _, item in others if item.prompt is not None), None)
    ask = (
        f'<p class="ask">{_e(prompt)}</p>'
        if prompt is not None
        else '<p class="ask note">(prompt text not recorded)</p>'
    )
    role = "baseline" if is_baseline else "reference"
    outputs = [
        '<div class="output is-baseline">'
        f'<header>{_e(reference_name)} <span class="badge">{role}</span>'
        f'<span class="badge">{reference.n_tokens} tokens</span></header>'
        f'<p class="gen">{_e(reference.text)}</p></div>'
    ]
    for name, item in others:
        differs = item.text != reference.text
        outputs.append(
            '<div class="output">'
            f"<header>{_e(name)}{_badges(item, differs)}</header>"
            f'<p class="gen">{highlight_divergence(reference.text, item.text)}</p></div>'
        )
    return (
        f'<div class="prompt"><h4>Prompt <code>{_e(prompt_id)}</code></h4>{ask}'
        f'<div class="outputs">{"".join(outputs)}</div></div>'
    )


def _generations_section(results: StudyResults) -> str:
    baseline = find_baseline(results)
    with_gens: list[tuple[VariantResult, GenerationsRecord]] = [
        (v, v.metrics.generations) for v in results.variants if v.metrics.generations is not None
    ]
    if not with_gens:
        return _section(
            "generations", "Generations", ['<p class="note">No generations were recorded.</p>']
        )
    ref_variant, ref_record = next(((v, g) for v, g in with_gens if v is baseline), with_gens[0])
    others = [(v, {i.id: i for i in g.items}) for v, g in with_gens if v is not ref_variant]
    by_category: dict[str, list[GenerationItem]] = {}
    for item in ref_record.items:
        by_category.setdefault(item.category, []).append(item)
    is_baseline = ref_variant is baseline
    lead = (
        f"{ref_record.n_prompts} prompts of suite <code>{_e(ref_record.suite)}</code>, "
        f"{_e(ref_record.decoding)} decoding, up to {ref_record.max_new_tokens} new tokens. "
        f"Each variant's text is shown beside the {'baseline' if is_baseline else 'first'}'s "
        f"({_e(ref_variant.name)}); <mark>highlighted</mark> is where it departs from it."
    )
    body = [f"<p>{lead}</p>"]
    for index, (category, items) in enumerate(by_category.items()):
        blocks = [
            _prompt_block(
                item.id,
                item,
                ref_variant.name,
                [(v.name, by_id[item.id]) for v, by_id in others if item.id in by_id],
                is_baseline,
            )
            for item in items
        ]
        differing = sum(
            1
            for item in items
            if any(item.id in by_id and by_id[item.id].text != item.text for _, by_id in others)
        )
        open_attr = " open" if index == 0 or len(ref_record.items) <= OPEN_ALL_PROMPTS else ""
        body.append(
            f"<details{open_attr}><summary>{_e(category)} · {len(items)} prompt"
            f"{'s' if len(items) != 1 else ''}, {differing} with differing text</summary>"
            f"{''.join(blocks)}</details>"
        )
    return _section("generations", "Generations", body)


# --------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _kv(mapping: dict[str, Any]) -> str:
    items: list[str] = []
    for key, value in mapping.items():
        if isinstance(value, dict | list):
            shown = f"<pre>{_e(_json(value))}</pre>"
        else:
            shown = f'<span class="mono">{_e(value)}</span>'
        items.append(f"<dt>{_e(key)}</dt><dd>{shown}</dd>")
    return f'<dl class="kv">{"".join(items)}</dl>'


def _provenance_section(results: StudyResults) -> str:
    body: list[str] = []
    if results.provenance:
        body.append(_kv(results.provenance))
    else:
        body.append(
            '<p class="note">No provenance was recorded for this study (versions, machine, '
            "seeds and input hashes are unknown).</p>"
        )
    body += [
        "<h3>Model</h3>",
        _kv(results.model) if results.model else '<p class="note">Not recorded.</p>',
    ]
    if results.config:
        body.append(
            f"<details><summary>Study configuration</summary><pre>{_e(_json(results.config))}"
            "</pre></details>"
        )
    return _section("provenance", "Provenance", body)


# --------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------


def _axes_section(results: StudyResults) -> str:
    from quantbench.report.axes import axis_headers, axis_tables

    tables = axis_tables(results)
    if not tables:
        return ""
    body = [
        '<p class="note">Each table follows one axis of the study matrix, the other axes '
        "fixed per row: mean KL(baseline ‖ variant) in nats/token with its 95% interval, and "
        "the perplexity change.</p>"
    ]
    for table in tables:
        body.append(f"<h3>{_e(table.axis)}</h3>")
        body.append(
            _table(
                [_e(h) for h in axis_headers(table)],
                ([_e(label), *(_e(c) for c in row)] for label, row in table.rows),
                numeric=(False, *([True] * len(table.values))),
            )
        )
    return _section("axes", "Study axes", body)


def _tasks_section(results: StudyResults) -> str:
    from quantbench.report.tasks_table import (
        TASK_HEADERS,
        task_cells,
        task_rows,
        task_settings_text,
    )

    rows = task_rows(results)
    if not rows:
        return ""
    body = [
        f'<p class="note">{_e(task_settings_text(results))}</p>',
        _table(
            [_e(h) for h in TASK_HEADERS],
            ([_e(c) for c in task_cells(row)] for row in rows),
            numeric=(False, False, True, True, True, True, True),
        ),
        *recovery_html(results),
    ]
    return _section("tasks", "Task accuracy", body)


def render_html(results: StudyResults) -> str:
    """The whole report as one self-contained HTML document (no script, no external URL)."""
    baseline = find_baseline(results)
    spec = str(results.model.get("spec") or "unknown model")
    made = (
        f"Generated {_e(results.created_at)} by quantbench {_e(results.quantbench_version)}. "
        f"{len(results.variants)} variant{'s' if len(results.variants) != 1 else ''}. "
    )
    if baseline is not None:
        made += f"Baseline: <b>{_e(baseline.name)}</b> (<code>{_e(baseline.scheme)}</code>)."
    else:
        made += "No bf16/fp16 variant, so there is no baseline and no deltas."
    sections = list(_NAV)
    if any(v.metrics.tasks for v in results.variants):
        sections.insert(2, ("tasks", "Task accuracy"))
    if any(v.axes for v in results.variants):
        sections.insert(2, ("axes", "Study axes"))
    divergence = divergence_html(results)
    if divergence:
        sections.insert(2, ("divergence", "Divergence"))
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="color-scheme" content="light">',
        f"<title>quantbench · {_e(spec)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        "<header>",
        f"<h1>quantbench · {_e(spec)}</h1>",
        f'<p class="lead">{made}</p>',
        f'<nav class="toc">{nav}</nav>',
        "</header>",
        _warning_section(results),
        _headline_section(results),
        divergence,
        _tasks_section(results),
        _axes_section(results),
        _recommendation_section(results),
        _plots_section(results),
        _generations_section(results),
        _provenance_section(results),
        "<footer>Built from results.json alone; every figure can be rebuilt from it.</footer>",
        "</main>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def write_html(results: StudyResults, path: Path) -> None:
    """Write the report so that readers see the old file or the new one, never half of one."""
    write_text_atomic(path, render_html(results))
