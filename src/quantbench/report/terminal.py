"""The compact headline table printed at the end of `quantbench run` and by `quantbench report`.

It reads the same cells as results.csv and report.md (`report.headline`), so the figures
agree; intervals and details are left to report.md to keep the table within a terminal.
Emulated speed figures carry a `*` and the warning below the table. When the study has a
recommendation, each row also says whether the variant is acceptable (and, if not, which
constraints it breaks) and what it is recommended for.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from quantbench.report.headline import Cell, HeadlineRow, headline_rows
from quantbench.report.tasks_table import TASK_HEADERS, task_cells, task_rows
from quantbench.results import StudyResults
from quantbench.units import MIB

EMULATED_NOTE = (
    "* emulated: transformers decompresses the weights and simulates activation "
    "quantization, so these speeds say nothing about real low-precision kernels (quantized "
    "variants look slower than BF16 for that reason). See report.md."
)


def _speed(cell: Cell, scale: float) -> str:
    star = "*" if cell.mode == "emulated" else ""
    return f"{float(cell.value or 0) * scale:,.1f}{star}"


def _num(fmt: str, scale: float = 1.0) -> Callable[[Cell], str]:
    return lambda cell: format(float(cell.value or 0) * scale, fmt)


COMPACT: tuple[tuple[str, str, Callable[[Cell], str]], ...] = (
    ("weights", "MiB", _num(",.1f", 1 / MIB)),
    ("size_ratio", "× base", _num(".2f")),
    ("ppl", "ppl", _num(".2f")),
    ("ppl_delta", "Δppl", _num("+.2f")),
    ("ppl_increase", "Δppl %", _num("+.1f")),
    ("kl_mean", "KL nats/tok", _num(".4f")),
    ("top1", "top-1 %", _num(".1f", 100)),
    ("decode_b1", "ms/tok b1", lambda c: _speed(c, 1000)),
    ("throughput", "tok/s max b", lambda c: _speed(c, 1)),
    ("exact_match", "gen = %", _num(".0f", 100)),
    ("quant_wall", "quant s", _num(",.1f")),
)


def _row(
    row: HeadlineRow, keys: list[tuple[str, str, Callable[[Cell], str]]], decided: bool
) -> list[str]:
    name = f"{row.name} (base)" if row.is_baseline else row.name
    cells = [name]
    for key, _, render in keys:
        cell = row.cell(key)
        cells.append("–" if cell.missing else render(cell))
    failed = row.cell("status").detail
    status = row.status if not failed else f"{row.status}; failed: {failed}"
    cells.append(status)
    if decided:
        cells += [_acceptable_text(row), row.text("recommended") or "–"]
    return cells


def _acceptable_text(row: HeadlineRow) -> str:
    """ "yes", or "no: " and the constraints the variant breaks or could not be checked on."""
    cell = row.cell("acceptable")
    if cell.missing:
        return "–"
    if cell.value:
        return "yes"
    return f"no: {row.text('broken')}"


def _task_table(results: StudyResults) -> Table | None:

    rows = task_rows(results)
    if not rows:
        return None
    table = Table(title="task accuracy (paired with the baseline)", title_justify="left")
    for index, header in enumerate(TASK_HEADERS):
        table.add_column(header, justify="left" if index < 2 else "right", no_wrap=index < 2)
    for row in rows:
        table.add_row(*task_cells(row))
    return table


def results_table(results: StudyResults) -> RenderableType:
    rows = headline_rows(results)
    keys = [c for c in COMPACT if any(not r.cell(c[0]).missing for r in rows)]
    table = Table(title=f"quantbench · {results.model.get('spec')}", title_justify="left")
    table.add_column("variant", no_wrap=True)
    for _, title, _ in keys:
        table.add_column(title, justify="right")
    table.add_column("status")
    decided = results.recommendation is not None
    if decided:
        table.add_column("acceptable")
        table.add_column("recommended for")
    for row in rows:
        table.add_row(*_row(row, keys, decided))
    parts: list[RenderableType] = [table]
    task_table = _task_table(results)
    if task_table is not None:
        parts.append(task_table)
    if any(
        v.metrics.speed and v.metrics.speed.execution_mode == "emulated" for v in results.variants
    ):
        parts.append(Text(EMULATED_NOTE, style="yellow"))
    for note in results.notes:
        parts.append(Text(f"note: {note}", style="yellow"))
    if results.recommendation is not None:
        parts.append(Text(f"recommendation: {results.recommendation.summary}", style="bold"))
    return Group(*parts)
