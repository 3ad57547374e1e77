"""The report as data: sections of blocks of spans, built once from the results.

`report.sections.build_document` fills a `Document` from `results.json` alone, and two thin
renderers turn it into text: `report.html` (jinja2 templates with autoescaping) and
`report.markdown`. Neither renderer works out a figure, a verdict or a sentence of its own;
each only decides how a block looks in its format (Markdown leaves out the inline SVG plots
and shows the first prompts of each generation category). No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

SpanStyle = Literal["", "code", "strong", "mark", "end", "quiet"]
Align = Literal["left", "right"]


@dataclass(frozen=True)
class Span:
    """A run of text with one inline style: plain, `code`, strong, a highlight (`mark`: where a
    generation departs from the reference; `end`: the reference goes on where this one
    stopped) or `quiet` (an interval's bracket beside its estimate)."""

    text: str
    style: SpanStyle = ""


Spans = tuple[Span, ...]


def spans(*parts: str | Span) -> Spans:
    """Plain strings and spans as one run of spans (empty strings dropped)."""
    return tuple(p if isinstance(p, Span) else Span(p) for p in parts if p != "")


def code(text: object) -> Span:
    return Span(str(text), "code")


def strong(text: object) -> Span:
    return Span(str(text), "strong")


def plain_text(run: Spans) -> str:
    """The text of a run of spans without its styles."""
    return "".join(s.text for s in run)


@dataclass(frozen=True)
class Paragraph:
    """Running text; `style` is how it stands out: a quieter note, the page's lead, or the
    recommendation's summary sentence."""

    kind: ClassVar[str] = "paragraph"
    text: Spans
    style: Literal["", "note", "lead", "summary"] = ""


@dataclass(frozen=True)
class Heading:
    """A heading inside a section (the section's own title is one level up)."""

    kind: ClassVar[str] = "heading"
    text: str


@dataclass(frozen=True)
class Cell:
    """One table cell. `classes` mark how it reads (`num`: a figure, right-aligned; `empty`:
    not measured; `emulated`: an emulated speed figure, with `title` saying so)."""

    text: Spans
    classes: tuple[str, ...] = ()
    title: str = ""


@dataclass(frozen=True)
class Row:
    """A table row; `group` makes it a heading row spanning the table (its cells unused)."""

    cells: tuple[Cell, ...]
    classes: tuple[str, ...] = ()
    group: str = ""


@dataclass(frozen=True)
class Table:
    """A table with a header row; `align` per column; `name` is its CSS class (`headline`)."""

    kind: ClassVar[str] = "table"
    headers: tuple[str, ...]
    rows: tuple[Row, ...]
    align: tuple[Align, ...]
    name: str = ""


@dataclass(frozen=True)
class Bullets:
    kind: ClassVar[str] = "bullets"
    items: tuple[Spans, ...]


@dataclass(frozen=True)
class CodeBlock:
    kind: ClassVar[str] = "code"
    text: str
    language: str = ""


@dataclass(frozen=True)
class KeyValues:
    """Labelled values: a short value as a run of spans, a long one as a code block."""

    kind: ClassVar[str] = "keyvalues"
    items: tuple[tuple[str, Spans | CodeBlock], ...]


@dataclass(frozen=True)
class Banner:
    """A boxed warning or list of caveats; `alert` for the one a reader must not miss."""

    kind: ClassVar[str] = "banner"
    title: str
    text: str = ""
    items: tuple[Spans, ...] = ()
    alert: bool = False


@dataclass(frozen=True)
class Figure:
    """An inline SVG plot (None: not drawn, and `missing` says why). Markdown shows none."""

    kind: ClassVar[str] = "figure"
    svg: str | None
    caption: str
    missing: str


@dataclass(frozen=True)
class Figures:
    kind: ClassVar[str] = "figures"
    figures: tuple[Figure, ...]


@dataclass(frozen=True)
class Details:
    """Blocks behind a summary line that a reader opens (HTML) or that follow it (Markdown)."""

    kind: ClassVar[str] = "details"
    summary: Spans
    blocks: tuple[Block, ...]
    open: bool = False


@dataclass(frozen=True)
class GenerationOutput:
    """One variant's text for one prompt; `departs_at` is the character where it leaves the
    reference's text (None: identical, or it is the reference)."""

    variant: str
    text: str
    n_tokens: int
    is_reference: bool = False
    exact_match: bool | None = None
    first_diff: int | None = None
    rouge_l: float | None = None
    departs_at: int | None = None

    @property
    def identical(self) -> bool:
        return bool(self.exact_match) or (self.exact_match is None and self.departs_at is None)

    @property
    def marked(self) -> Spans:
        """The text with where it departs from the reference marked (`mark`), or an `end`
        mark when it stops where the reference goes on."""
        n = self.departs_at
        if n is None:
            return spans(self.text)
        if n >= len(self.text):
            return spans(self.text, Span("[ends here; the baseline continues]", "end"))
        return spans(self.text[:n], Span(self.text[n:], "mark"))


@dataclass(frozen=True)
class GenerationPrompt:
    id: str
    prompt: str | None
    outputs: tuple[GenerationOutput, ...]


@dataclass(frozen=True)
class GenerationCategory:
    name: str
    prompts: tuple[GenerationPrompt, ...]
    differing: int
    open: bool


@dataclass(frozen=True)
class Generations:
    """Every variant's greedy text beside the reference's (the baseline's, else the first
    variant's), by prompt category."""

    kind: ClassVar[str] = "generations"
    reference_role: Literal["baseline", "reference"]
    categories: tuple[GenerationCategory, ...]


Block = (
    Paragraph
    | Heading
    | Table
    | Bullets
    | CodeBlock
    | KeyValues
    | Banner
    | Figures
    | Details
    | Generations
)


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Document:
    title: str
    lead: Spans
    sections: tuple[Section, ...]
    footer: str = ""
    nav: tuple[tuple[str, str], ...] = field(default=())
    """(section id, title) of every section, in order, for the page's table of contents."""


def simple_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    numeric: Sequence[bool] = (),
    empty: str = "",
) -> Table:
    """A table of plain-text cells; columns flagged in `numeric` are right-aligned figures,
    and an empty cell shows `empty`."""

    def is_num(i: int) -> bool:
        return i < len(numeric) and numeric[i]

    align: tuple[Align, ...] = tuple("right" if is_num(i) else "left" for i in range(len(headers)))
    return Table(
        headers=tuple(headers),
        rows=tuple(
            Row(
                tuple(
                    Cell(spans(text or empty), ("num",) if is_num(i) else ())
                    for i, text in enumerate(row)
                )
            )
            for row in rows
        ),
        align=align,
    )
