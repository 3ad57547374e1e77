"""Recovery tables: each variant's task accuracy as a share of the baseline's, in the layout of
Red Hat's model cards (task, shots, metric, baseline, variant, recovery), with what those cards
leave out: the paired interval of the recovery, the raw and Holm-adjusted McNemar p-values and
a non-inferiority verdict against the accuracy-drop budget.

The rows are the recommendation's `TaskVerdict`s (computed by `quantbench.recommend` from the
saved task records), so report.md, report.html, results.csv and the model cards show the same
figures. Accuracies and differences are in percentage points, recovery in percent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from quantbench.results import StudyResults, TaskRecord, TaskVerdict, find_baseline

EMPTY = "–"

RECOVERY_HEADERS = (
    "task",
    "shots",
    "metric",
    "items",
    "variant",
    "baseline %",
    "variant %",
    "recovery % [95% CI]",
    "Δ points [95% CI]",
    "McNemar p",
    "Holm p",
    "verdict",
)
NUMERIC = (False, True, False, True, False, True, True, True, True, True, True, False)

CARD_HEADERS = (
    "task",
    "shots",
    "metric",
    "baseline %",
    "this variant %",
    "recovery % [95% CI]",
    "Holm p",
    "verdict",
)


@dataclass(frozen=True)
class RecoveryRow:
    """One task × variant row, every cell already text."""

    verdict: TaskVerdict
    baseline_name: str
    shots: str
    metric: str

    def cells(self) -> list[str]:
        v = self.verdict
        return [
            v.task,
            self.shots,
            self.metric,
            str(v.n_items),
            v.variant,
            f"{100 * v.baseline_accuracy:.1f}",
            f"{100 * v.variant_accuracy:.1f}",
            recovery_text(v),
            difference_text(v),
            p_text(v.p_value),
            p_text(v.p_holm),
            v.verdict,
        ]

    def card_cells(self) -> list[str]:
        v = self.verdict
        return [
            v.task,
            self.shots,
            self.metric,
            f"{100 * v.baseline_accuracy:.1f}",
            f"{100 * v.variant_accuracy:.1f}",
            recovery_text(v),
            p_text(v.p_holm),
            v.verdict,
        ]


def recovery_text(verdict: TaskVerdict) -> str:
    r = verdict.recovery_pct
    if r is None:
        return f"{EMPTY} (baseline 0)"
    approx = "≈ " if verdict.recovery_method == "from_difference" else ""
    return f"{approx}{r.estimate:.1f} [{r.low:.1f}, {r.high:.1f}]"


def difference_text(verdict: TaskVerdict) -> str:
    d = verdict.difference_points
    return f"{d.estimate:+.1f} [{d.low:+.1f}, {d.high:+.1f}]"


def p_text(p: float | None) -> str:
    return EMPTY if p is None else f"{p:.3g}"


def shots_text(record: TaskRecord | None) -> str:
    """Few-shot examples lm-eval used (one value, or the range over a group's subtasks)."""
    if record is None:
        return EMPTY
    raw = record.settings.get("num_fewshot")
    values = raw.values() if isinstance(raw, dict) else [raw]
    shots = sorted({int(v) for v in values if isinstance(v, int | float)})
    if not shots:
        return EMPTY
    return str(shots[0]) if len(shots) == 1 else f"{shots[0]}–{shots[-1]}"


def metric_text(record: TaskRecord | None) -> str:
    if record is None:
        return EMPTY
    return record.metric if record.filter in ("", "none") else f"{record.metric} ({record.filter})"


def recovery_rows(results: StudyResults) -> list[RecoveryRow]:
    """The recommendation's task verdicts as rows (none without a recommendation)."""
    rec = results.recommendation
    if rec is None:
        return []
    rows = []
    for verdict in rec.tasks:
        variant = results.variant(verdict.variant)
        baseline = find_baseline(results, variant)
        record = variant.metrics.tasks.get(verdict.task)
        rows.append(
            RecoveryRow(
                verdict,
                baseline.name if baseline is not None else EMPTY,
                shots_text(record),
                metric_text(record),
            )
        )
    return rows


def recovery_notes(results: StudyResults) -> str:
    """How to read the table, in a few sentences (margin and methods from the rows)."""
    rows = recovery_rows(results)
    if not rows:
        return ""
    margins = sorted({r.verdict.margin_points for r in rows})
    margin = ", ".join(f"{m:g}" for m in margins)
    graded = any(r.verdict.recovery_method == "from_difference" for r in rows)
    family = sum(r.verdict.p_value is not None for r in rows)
    text = (
        "Recovery is the variant's accuracy as a percentage of the baseline's on the same "
        "items. For right/wrong scores its 95% interval is the delta method on the log of the "
        "ratio of paired proportions, and the difference's is Bonett–Price's adjusted Wald "
        "interval for paired proportions; both add one pseudo-item to each flip count, so a "
        "variant that flips nothing still gets an interval as wide as the items allow. "
        f"McNemar p is exact and two-sided; Holm p adjusts it over the study's {family} "
        "task × variant comparisons. The verdict compares the difference's interval with the "
        f"accuracy-drop budget of {margin} point(s): non-inferior when its lower end is above "
        "minus the budget, inferior when its upper end is below it, otherwise inconclusive."
    )
    if graded:
        text += (
            " Rows marked ≈ have graded scores: their recovery is the paired-bootstrap "
            "difference divided by the baseline's accuracy (the baseline held fixed)."
        )
    return text


def _md_escape(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _md_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool]
) -> str:
    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(_md_escape(c) or EMPTY for c in cells) + " |"

    rule = "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def recovery_card(results: StudyResults, variant: str) -> list[str]:
    """The recovery table of one variant for its model card; [] when it has no task rows."""
    rows = [r for r in recovery_rows(results) if r.verdict.variant == variant]
    if not rows:
        return []
    baseline = rows[0].baseline_name
    numeric = (False, True, False, True, True, True, True, False)
    return [
        "## Accuracy recovery",
        "",
        f"Against {_md_escape(baseline)} on the same items. {_md_escape(recovery_notes(results))}",
        "",
        _md_table(CARD_HEADERS, (r.card_cells() for r in rows), numeric),
        "",
    ]
