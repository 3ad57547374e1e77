"""Every file derived from results.json: results.csv, report.md, report.html, model cards."""

from __future__ import annotations

from pathlib import Path

from quantbench.report.csv_table import write_csv
from quantbench.report.html import write_html
from quantbench.report.markdown import write_markdown
from quantbench.report.model_card import write_model_cards
from quantbench.report.plots import sensitivity_heatmap
from quantbench.results import SensitivityRecord, StudyResults
from quantbench.store import write_text_atomic

CSV_FILE = "results.csv"
MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"
SENSITIVITY_JSON = "sensitivity.json"
SENSITIVITY_SVG = "sensitivity.svg"


def write_reports(out: Path, results: StudyResults, model_cards: bool = True) -> list[Path]:
    """Write the reports of the study in `out` (model cards into its artifacts, which
    `results` name relative to `out`); the files written."""

    write_csv(results, out / CSV_FILE)
    write_markdown(results, out / MARKDOWN_FILE)
    write_html(results, out / HTML_FILE)
    cards = write_model_cards(results, out) if model_cards else []
    screen = write_sensitivity(results.sensitivity, out) if results.sensitivity else []
    return [out / CSV_FILE, out / MARKDOWN_FILE, out / HTML_FILE, *screen, *cards]


def write_sensitivity(record: SensitivityRecord, out: Path) -> list[Path]:
    """`sensitivity.json` (the screen's table) and `sensitivity.svg` (its heatmap)."""
    written = [out / SENSITIVITY_JSON]
    write_text_atomic(written[0], record.model_dump_json(indent=1) + "\n")
    heatmap = sensitivity_heatmap(record)
    if heatmap is not None:
        written.append(out / SENSITIVITY_SVG)
        write_text_atomic(written[1], heatmap + "\n")
    return written
