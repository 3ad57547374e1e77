"""report.md: the report's sections laid out as GitHub-flavoured Markdown.

Every sentence and figure comes from `report.sections.build_document`, the same document
report.html renders; this module only decides how each block reads as Markdown. Plots are
inline SVG and live in report.html only; generations show the first prompts of each category.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from quantbench.report.document import (
    Banner,
    Block,
    Bullets,
    CodeBlock,
    Details,
    Document,
    Generations,
    Heading,
    KeyValues,
    Paragraph,
    Section,
    Spans,
    Table,
    plain_text,
)
from quantbench.report.sections import (
    EMPTY,
    build_document,
    recommendation_blocks,
)
from quantbench.results import Recommendation, StudyResults
from quantbench.store import write_text_atomic

GENERATION_PROMPTS_PER_CATEGORY = 3
"""Prompts shown per generation category (report.html shows them all)."""

__all__ = [
    "EMPTY",
    "escape_cell",
    "render_document",
    "render_markdown",
    "render_recommendation",
    "write_markdown",
]


def escape_cell(text: str) -> str:
    """Make `text` safe inside one Markdown table cell (or one list item).

    Pipes would split the cell and newlines would end the row; angle brackets and ampersands
    would otherwise be read as HTML (chat templates are full of `<|im_end|>`).
    """
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "<br>".join(text.splitlines())


def escape_text(text: str) -> str:
    """Make running text safe in a paragraph: no HTML tag or entity can start in it."""
    return text.replace("&", "&amp;").replace("<", "&lt;")


def _cell_text(text: str) -> str:
    """Running text inside a table cell or a list item: one line, no cell-splitting pipe."""
    return "<br>".join(escape_text(text.replace("\\", "\\\\").replace("|", "\\|")).splitlines())


def _code(text: str, in_cell: bool) -> str:
    text = " ".join(text.splitlines())
    if in_cell:
        text = text.replace("|", "\\|")
    longest = max((len(run) for run in text.split("`")[1:]), default=0)
    ticks = "`" * ((text.count("`") and max(2, longest + 1)) or 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _run(run: Spans, in_cell: bool = False) -> str:
    escape = _cell_text if in_cell else escape_text
    parts = []
    for span in run:
        if span.style == "code":
            parts.append(_code(span.text, in_cell))
        elif span.style == "strong":
            parts.append(f"**{escape(span.text)}**")
        elif span.style == "end":
            parts.append(f" {escape(span.text)}")
        else:
            parts.append(escape(span.text))
    return "".join(parts)


def _table(table: Table) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("---:" if a == "right" else ":---" for a in table.align) + "|"
    lines = [line([_cell_text(h) for h in table.headers]), rule]
    for row in table.rows:
        if row.group:
            lines.append(f"| **{_cell_text(row.group)}** |" + " |" * (len(table.headers) - 1))
        else:
            lines.append(line([_run(c.text, in_cell=True) or EMPTY for c in row.cells]))
    return "\n".join(lines)


def _generations(block: Generations) -> str:
    headers = ["variant", "exact match", "first diff (token)", "ROUGE-L", "text"]
    rule = "|:---|:---|---:|---:|:---|"
    lines = [
        f"The first {GENERATION_PROMPTS_PER_CATEGORY} prompts of each category (report.html "
        "has them all)."
    ]
    for category in block.categories:
        lines += ["", f"### {escape_text(category.name)}"]
        for prompt in category.prompts[:GENERATION_PROMPTS_PER_CATEGORY]:
            rows = ["| " + " | ".join(headers) + " |", rule]
            for out in prompt.outputs:
                if out.is_reference:
                    cells = [f"{out.variant} ({block.reference_role})", "", "", "", out.text]
                else:
                    exact = "" if out.exact_match is None else ("yes" if out.exact_match else "no")
                    first = "" if out.first_diff is None else str(out.first_diff)
                    rouge = "" if out.rouge_l is None else f"{out.rouge_l:.3f}"
                    cells = [out.variant, exact, first, rouge, out.text]
                rows.append("| " + " | ".join(_cell_text(c) or EMPTY for c in cells) + " |")
            lines += ["", f"#### {_code(prompt.id, False)}", "", *rows]
    return "\n".join(lines)


def _block(block: Block) -> str | None:
    """One block as Markdown; None for what Markdown does not show (inline SVG plots)."""
    if isinstance(block, Paragraph):
        text = _run(block.text)
        return f"**{text}**" if block.style == "summary" else text
    if isinstance(block, Heading):
        return f"### {escape_text(block.text)}"
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Bullets):
        return "\n".join(f"- {_run(item, in_cell=True)}" for item in block.items)
    if isinstance(block, CodeBlock):
        return f"```{block.language}\n{block.text}\n```"
    if isinstance(block, KeyValues):
        lines = []
        for key, value in block.items:
            if isinstance(value, CodeBlock):  # a list item's own fenced block, indented
                fenced = f"```{value.language}\n{value.text}\n```".splitlines()
                lines += [f"- **{_cell_text(key)}**:", "", *("  " + f for f in fenced)]
            else:
                lines.append(f"- **{_cell_text(key)}**: {_run(value, in_cell=True)}")
        return "\n".join(lines)
    if isinstance(block, Banner):
        if block.alert:
            return f"> ⚠️ **{escape_text(block.title)}.** {escape_text(block.text)}"
        items = "\n".join(f"- {_run(item, in_cell=True)}" for item in block.items)
        return f"**{escape_text(block.title)}**" + (f"\n\n{items}" if items else "")
    if isinstance(block, Details):
        inner = [text for text in map(_block, block.blocks) if text is not None]
        if all(isinstance(b, CodeBlock) for b in block.blocks):
            summary = escape_text(plain_text(block.summary))
            return "\n\n".join([f"<details><summary>{summary}</summary>", *inner, "</details>"])
        return "\n\n".join([f"### {_run(block.summary)}", *inner])
    if isinstance(block, Generations):
        return _generations(block)
    return None  # figures: inline SVG, report.html only


def _section(section: Section) -> str | None:
    blocks = [text for text in map(_block, section.blocks) if text is not None]
    if not blocks:
        return None
    return "\n\n".join([f"## {escape_text(section.title)}", *blocks])


def render_document(document: Document) -> str:
    parts = [f"# {escape_text(document.title)}", _run(document.lead)]
    parts += [text for text in map(_section, document.sections) if text is not None]
    return "\n\n".join(parts) + "\n"


def render_markdown(results: StudyResults) -> str:
    """The whole report as Markdown text (GitHub-flavoured tables)."""
    return render_document(build_document(results))


def render_recommendation(rec: Recommendation) -> str:
    """The "## Recommendation" section of report.md for a saved recommendation."""
    section = _section(Section("recommendation", "Recommendation", recommendation_blocks(rec)))
    assert section is not None
    return section


def write_markdown(results: StudyResults, path: Path) -> None:
    """Write the report so that readers see the old file or the new one, never half of one."""
    write_text_atomic(path, render_markdown(results))
