"""Every file derived from results.json: results.csv, report.md, report.html, model cards."""

from __future__ import annotations

from pathlib import Path

from quantbench.report.csv_table import write_csv
from quantbench.report.html import write_html
from quantbench.report.markdown import write_markdown
from quantbench.report.model_card import write_model_cards
from quantbench.results import StudyResults

CSV_FILE = "results.csv"
MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"


def write_reports(out: Path, results: StudyResults, model_cards: bool = True) -> list[Path]:
    """Write the reports of the study in `out` (model cards into its artifacts, which
    `results` name relative to `out`); the files written."""

    write_csv(results, out / CSV_FILE)
    write_markdown(results, out / MARKDOWN_FILE)
    write_html(results, out / HTML_FILE)
    cards = write_model_cards(results, out) if model_cards else []
    return [out / CSV_FILE, out / MARKDOWN_FILE, out / HTML_FILE, *cards]
