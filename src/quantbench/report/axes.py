"""Study-matrix results grouped by axis: how a figure moves along one axis, the others fixed.

For every axis of the study (e.g. `group_size`, `calibration.num_samples`), one table: a row
per scheme and combination of the other axes, a column per value of this axis, and in each
cell the variant's mean KL from the baseline (nats/token, with its interval) and its
perplexity change in points and in percent of the baseline's perplexity. Shared by report.md
and report.html.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.results import StudyResults, VariantResult


@dataclass(frozen=True)
class AxisTable:
    axis: str
    values: list[Any]
    rows: list[tuple[str, list[str]]]
    """(row label, one cell per axis value; '–' where no variant has that combination)."""


def _value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def cell_text(variant: VariantResult) -> str:
    metrics = variant.metrics
    parts = []
    if metrics.divergence is not None:
        kl = metrics.divergence.kl_mean
        parts.append(f"KL {kl.estimate:.4f} [{kl.low:.4f}, {kl.high:.4f}]")
    ppl = metrics.perplexity
    if ppl is not None and ppl.delta_vs_baseline is not None:
        text = f"Δppl {ppl.delta_vs_baseline.estimate:+.2f}"
        if ppl.ratio_vs_baseline is not None:
            text += f" ({100 * (ppl.ratio_vs_baseline - 1):+.1f}%)"
        parts.append(text)
    if variant.status != "ok":
        parts.append("failed")
    return " · ".join(parts) or variant.name


def axis_tables(results: StudyResults) -> list[AxisTable]:
    """One table per axis that takes at least two values in the study."""
    axes: list[str] = []
    for variant in results.variants:
        axes += [a for a in variant.axes if a not in axes]
    tables = []
    for axis in axes:
        having = [v for v in results.variants if axis in v.axes]
        values = sorted({v.axes[axis] for v in having}, key=lambda x: (str(type(x)), x))
        if len(values) < 2:
            continue
        groups: dict[str, dict[Any, VariantResult]] = {}
        for variant in having:
            others = ", ".join(
                f"{k} {_value_text(val)}" for k, val in sorted(variant.axes.items()) if k != axis
            )
            label = variant.scheme + (f" ({others})" if others else "")
            if variant.axes[axis] in groups.get(label, {}):
                label += f" [{variant.name}]"  # same coordinates, other fixed options
            groups.setdefault(label, {})[variant.axes[axis]] = variant
        rows = [
            (label, [cell_text(by_value[v]) if v in by_value else "–" for v in values])
            for label, by_value in groups.items()
        ]
        tables.append(AxisTable(axis, values, rows))
    return tables


def axis_headers(table: AxisTable) -> list[str]:
    return ["scheme (other axes)", *(f"{table.axis} = {_value_text(v)}" for v in table.values)]
