"""Task accuracy rows shared by report.md, report.html, results.csv and the terminal.

One row per (task, variant): accuracy with its interval, and against the baseline the paired
difference in points with its interval, the items that flipped each way and the exact
McNemar p-value. Every output formats these same values, so they cannot disagree. results.csv
also carries the recommendation's per-task figures (Holm-adjusted p, recovery with its
interval, the non-inferiority verdict; see `report.recovery_table`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.results import StudyResults, TaskRecord, find_baseline


@dataclass(frozen=True)
class TaskRow:
    task: str
    variant: str
    is_baseline: bool
    record: TaskRecord

    @property
    def accuracy_pct(self) -> float:
        return 100 * self.record.accuracy.estimate

    def accuracy_text(self) -> str:
        acc = self.record.accuracy
        return f"{100 * acc.estimate:.1f} [{100 * acc.low:.1f}, {100 * acc.high:.1f}]"

    def difference_text(self) -> str:
        paired = self.record.vs_baseline
        if paired is None or self.is_baseline:
            return "–"
        d = paired.difference_points
        return f"{d.estimate:+.1f} [{d.low:+.1f}, {d.high:+.1f}]"

    def flips_text(self) -> str:
        paired = self.record.vs_baseline
        if paired is None or self.is_baseline or paired.mcnemar_p is None:
            return "–"  # flips are defined for right/wrong (0/1) scores only
        return f"{paired.right_to_wrong} / {paired.wrong_to_right}"

    def mcnemar_text(self) -> str:
        paired = self.record.vs_baseline
        if paired is None or self.is_baseline or paired.mcnemar_p is None:
            return "–"
        return f"{paired.mcnemar_p:.3g}"


TASK_HEADERS = (
    "task",
    "variant",
    "items",
    "accuracy % [95% CI]",
    "Δ vs base, points [95% CI]",
    "right→wrong / wrong→right",
    "McNemar p",
)


def task_rows(results: StudyResults) -> list[TaskRow]:
    """Rows grouped by task (in the order tasks first appear), variants in study order."""

    order: list[str] = []
    for variant in results.variants:
        for name in variant.metrics.tasks:
            if name not in order:
                order.append(name)
    rows = []
    for task in order:
        for variant in results.variants:
            record = variant.metrics.tasks.get(task)
            if record is not None:
                baseline = find_baseline(results, variant)
                is_base = baseline is not None and variant.name == baseline.name
                rows.append(TaskRow(task, variant.name, is_base, record))
    return rows


def task_cells(row: TaskRow) -> list[str]:
    name = f"{row.variant} (base)" if row.is_baseline else row.variant
    return [
        row.task,
        name,
        str(row.record.n_items),
        row.accuracy_text(),
        row.difference_text(),
        row.flips_text(),
        row.mcnemar_text(),
    ]


def task_settings_text(results: StudyResults) -> str:
    """One sentence on how the tasks ran (identical for every variant by construction)."""
    record = next((r for v in results.variants for r in v.metrics.tasks.values()), None)
    if record is None:
        return ""
    settings: dict[str, Any] = record.settings
    cap = settings.get("max_gen_tokens")
    parts = [
        f"lm-evaluation-harness {settings.get('lm_eval_version') or '?'}",
        "chat template " + ("on" if settings.get("apply_chat_template") else "off"),
        f"generation capped at {cap} tokens" if cap else "each task's own generation limit",
        f"first {settings['limit']} items per task" if settings.get("limit") else "all items",
    ]
    kinds = {r.accuracy_interval for v in results.variants for r in v.metrics.tasks.values()}
    intervals = (
        "Accuracy intervals are Wilson score intervals"
        if kinds == {"wilson"}
        else "Accuracy intervals are Wilson score intervals for right/wrong scores and "
        "percentile-bootstrap intervals over items for graded scores"
    )
    return (
        "; ".join(parts) + f". {intervals}; differences are paired (same items) with "
        "percentile-bootstrap intervals over items; McNemar p is exact (two-sided) on the "
        "items that flipped."
    )


def csv_task_fields(results: StudyResults) -> list[str]:
    names = []
    for task in dict.fromkeys(r.task for r in task_rows(results)):
        names += [
            f"{task}_accuracy",
            f"{task}_accuracy_low",
            f"{task}_accuracy_high",
            f"{task}_items",
            f"{task}_delta_points",
            f"{task}_delta_points_low",
            f"{task}_delta_points_high",
            f"{task}_right_to_wrong",
            f"{task}_wrong_to_right",
            f"{task}_mcnemar_p",
            f"{task}_holm_p",
            f"{task}_recovery_pct",
            f"{task}_recovery_pct_low",
            f"{task}_recovery_pct_high",
            f"{task}_non_inferiority",
        ]
    return names


def csv_task_values(results: StudyResults, variant: str) -> dict[str, float | int | str]:
    """Plain numbers in base units (fractions for accuracy, points for differences)."""
    values: dict[str, float | int | str] = {}
    for row in task_rows(results):
        if row.variant != variant:
            continue
        acc, paired = row.record.accuracy, row.record.vs_baseline
        values[f"{row.task}_accuracy"] = acc.estimate
        values[f"{row.task}_accuracy_low"] = acc.low
        values[f"{row.task}_accuracy_high"] = acc.high
        values[f"{row.task}_items"] = row.record.n_items
        if paired is not None:
            values[f"{row.task}_delta_points"] = paired.difference_points.estimate
            values[f"{row.task}_delta_points_low"] = paired.difference_points.low
            values[f"{row.task}_delta_points_high"] = paired.difference_points.high
            values[f"{row.task}_right_to_wrong"] = paired.right_to_wrong
            values[f"{row.task}_wrong_to_right"] = paired.wrong_to_right
            if paired.mcnemar_p is not None:
                values[f"{row.task}_mcnemar_p"] = paired.mcnemar_p
    rec = results.recommendation
    for judged in rec.tasks if rec is not None else []:
        if judged.variant != variant:
            continue
        if judged.p_holm is not None:
            values[f"{judged.task}_holm_p"] = judged.p_holm
        if judged.recovery_pct is not None:
            values[f"{judged.task}_recovery_pct"] = judged.recovery_pct.estimate
            values[f"{judged.task}_recovery_pct_low"] = judged.recovery_pct.low
            values[f"{judged.task}_recovery_pct_high"] = judged.recovery_pct.high
        values[f"{judged.task}_non_inferiority"] = judged.verdict
    return values
