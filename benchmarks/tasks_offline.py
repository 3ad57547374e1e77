"""Task accuracy offline on the built-in model: the command of issue 5, timed.

    .venv/bin/python benchmarks/tasks_offline.py [--study DIR] [--data ../shared/data]
    .venv/bin/python benchmarks/tasks_offline.py --study DIR --summarize-only --wall-s S

Runs `quantbench run --tasks mmlu_pro,gsm8k,ifeval,humaneval_plus --limit 20 --task-data DATA
--allow-code-execution` on the default study in DIR (a fresh temporary folder if not given;
reusing a finished default study skips quantization and the other metrics, so the time is
the tasks' own), then writes results/tasks_offline.md: wall time, per-task seconds per
variant, and the paired task table. Run by hand, never in the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS = "mmlu_pro,gsm8k,ifeval,humaneval_plus"
LIMIT = 20


def summarize(study: Path, wall_s: float, command: str) -> str:
    from quantbench.report.markdown import escape_cell
    from quantbench.report.tasks_table import (
        TASK_HEADERS,
        task_cells,
        task_rows,
        task_settings_text,
    )
    from quantbench.study_files import load_results

    results = load_results(study)
    rows = task_rows(results)
    lines = [
        "# Task accuracy offline (issue 5 acceptance)",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {os.cpu_count()} logical cores, no network",
        f"- command: `{command}`",
        f"- wall time of the command: {wall_s:,.0f} s",
        f"- {task_settings_text(results)}",
        "",
        "## Seconds per task and variant",
        "",
        "| variant | " + " | ".join(TASKS.split(",")) + " |",
        "|---|" + "---:|" * len(TASKS.split(",")),
    ]
    for variant in results.variants:
        cells = [
            f"{variant.metrics.tasks[t].wall_s:,.0f}" if t in variant.metrics.tasks else "–"
            for t in TASKS.split(",")
        ]
        lines.append(f"| {variant.name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Accuracy, paired with the baseline",
        "",
        "| " + " | ".join(TASK_HEADERS) + " |",
        "|---|---|" + "---:|" * (len(TASK_HEADERS) - 2),
    ]
    for row in rows:
        lines.append("| " + " | ".join(escape_cell(c) for c in task_cells(row)) + " |")
    errors = {v.name: v.metrics.errors for v in results.variants if v.metrics.errors}
    if errors:
        lines += ["", f"Errors: {errors}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared" / "data")
    parser.add_argument("--summarize-only", action="store_true")
    parser.add_argument("--wall-s", type=float, default=0.0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "tasks_offline.md"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        study = args.study or Path(tmp) / "out"
        flags = f"--tasks {TASKS} --limit {LIMIT} --task-data {args.data} --allow-code-execution"
        command = f"quantbench run --out {study} {flags}"
        wall_s = args.wall_s
        if not args.summarize_only:
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "quantbench", "run", "--out", str(study), *flags.split()],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            wall_s = time.perf_counter() - started
        text = summarize(study, wall_s, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
