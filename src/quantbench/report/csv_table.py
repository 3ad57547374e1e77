"""The headline figures as CSV: one row per variant, plain numbers in base units.

Meant for spreadsheets and scripts, so values are never pre-formatted: sizes in bytes, times in
seconds, rates as fractions (0–1), KL in nats per token, and each confidence bound in its own
column. A missing figure is an empty field. Column names come from `HEADLINE_COLUMNS`, so the
CSV and the human-readable tables cannot drift apart. The decision columns say whether each
variant is `acceptable` (1/0), what it is `recommended` for, the `broken_constraints` and
`unchecked_constraints` (each joined with "; "), and its place on the size–quality front.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from quantbench.report.headline import HEADLINE_COLUMNS, HeadlineRow, headline_rows
from quantbench.report.tasks_table import csv_task_fields, csv_task_values
from quantbench.results import StudyResults
from quantbench.store import write_text_atomic

CsvValue = str | int | float


def csv_header() -> list[str]:
    """Field names in order: the variant, `is_baseline`, then every column's base-unit fields."""
    names = ["variant", "is_baseline"]
    for col in HEADLINE_COLUMNS:
        names.extend(name for name, _ in col.csv if name != "variant")
    return names


def _csv_row(row: HeadlineRow) -> dict[str, CsvValue]:
    values: dict[str, CsvValue] = {"is_baseline": int(row.is_baseline)}
    for col in HEADLINE_COLUMNS:
        cell = row.cell(col.key)
        for name, attribute in col.csv:
            value = getattr(cell, attribute)
            values[name] = "" if value is None else value
    return values


def render_csv(results: StudyResults) -> str:
    """The CSV text (header plus one line per variant, `\\n` line endings); task accuracy
    adds fifteen columns per task (`<task>_accuracy`, `<task>_delta_points`, ...,
    `<task>_recovery_pct`, `<task>_non_inferiority`)."""
    buffer = io.StringIO()
    fields = csv_header() + csv_task_fields(results)
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in headline_rows(results):
        writer.writerow({**_csv_row(row), **csv_task_values(results, row.name)})
    return buffer.getvalue()


def write_csv(results: StudyResults, path: Path) -> None:
    """Write the CSV so that readers see the old file or the new one, never half of one."""
    write_text_atomic(path, render_csv(results))
