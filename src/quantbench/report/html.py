"""report.html: the report's sections laid out by jinja2 templates with autoescaping.

One self-contained file: the CSS (templates/report.css) inline, plots as inline SVG, no
script, no external resource, so it opens from a disk, an e-mail attachment or a CI artifact
exactly as written. Every sentence and figure comes from `report.sections.build_document`;
every piece of text is escaped by the template engine (only the SVG plots, which matplotlib
draws and escapes, are inserted as markup).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2

from quantbench.report.document import Document
from quantbench.report.sections import build_document
from quantbench.results import StudyResults
from quantbench.store import write_text_atomic

SECTION_IDS = (
    "measured",
    "warning",
    "headline",
    "recommendation",
    "plots",
    "variants",
    "generations",
    "provenance",
)
"""Sections every report.html has, in this order (divergence, tasks and study axes come after
the headline when the study has them)."""


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("quantbench.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def render_document(document: Document) -> str:
    """The page for a built document."""
    return _environment().get_template("report.html.j2").render(doc=document)


def render_html(results: StudyResults) -> str:
    """The whole report as one self-contained HTML document (no script, no external URL)."""
    return render_document(build_document(results))


def write_html(results: StudyResults, path: Path) -> None:
    """Write the report so that readers see the old file or the new one, never half of one."""
    write_text_atomic(path, render_html(results))
