"""A copy of a finished default study, moved elsewhere and made the only copy: does it report
the same, and does `run --out` on it rerun nothing?

    .venv/bin/python benchmarks/portable_copy.py STUDY [--out FILE] [-- RUN_FLAGS...]

STUDY is a finished study folder made by `quantbench run` with no flags (the default study;
`benchmarks/exact_kl.py --keep DIR` leaves one in DIR/after). The check copies it as `cp -r`
does (links stay links), parks the original under another name so that nothing can reach it
at its old place, and then, through the command line as a user would:

1. `quantbench report COPY`: report.md and report.html must equal the original's byte for
   byte, and no file of the copy may name the original's folder;
2. `quantbench run [RUN_FLAGS] --out COPY` (the flags the study was made with): no stage
   folder may be written again (the model cards and the store's memo of verified hashes
   aside), no worker log may appear, and every variant's figures in results.json must equal
   the original's.

The original is moved back at the end. The model cache comes from the environment
(QUANTBENCH_CACHE_DIR), as for any run. Run by hand; results go to
benchmarks/results/portable_copy.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DERIVED = (".verified.json", "/artifact/README.md")
"""Files a rerun may rewrite without redoing a stage: the memo of hashes, the model cards."""


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Relative path -> (mtime_ns, sha256), or (0, target) for a link, of everything under
    `folder`."""
    state: dict[str, tuple[int, str]] = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            state[name] = (0, os.readlink(path))
        elif path.is_file():
            state[name] = (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def figures(results_json: Path) -> dict[str, Any]:
    """Per variant: status, metrics and quantization record (timings included: a rerun that
    reuses every stage copies them unchanged)."""
    raw = json.loads(results_json.read_text())
    return {
        v["name"]: {k: v.get(k) for k in ("status", "metrics", "quantization", "stage_keys")}
        for v in raw["variants"]
    }


def _cell(text: str) -> str:
    """`text` on one line, safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "/")


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    """Nothing for a command that succeeded; the end of its stderr otherwise."""
    return "" if done.returncode == 0 else done.stderr[-300:]


def quantbench(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "quantbench", *args], capture_output=True, text=True, check=False
    )
    return time.perf_counter() - started, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("study", type=Path, help="a finished default study folder")
    parser.add_argument(
        "run_flags",
        nargs=argparse.REMAINDER,
        help="after `--`: the flags the study was run with (none for the default study)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "portable_copy.md"
    )
    args = parser.parse_args()
    original = args.study.resolve()
    if not (original / "results.json").is_file():
        sys.exit(f"{original} holds no results.json: run a study there first")
    copy = original.parent / f"elsewhere-{original.name}" / "copy"  # does not contain original
    parked = original.parent / f"parked-{original.name}"
    if copy.parent.exists() or parked.exists():
        sys.exit(f"{copy.parent} or {parked} exists already: remove them first")
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    shutil.copytree(original, copy, symlinks=True, copy_function=shutil.copyfile)
    original.rename(parked)
    checks: list[tuple[str, bool, str]] = []
    try:
        report_s, report = quantbench("report", str(copy))
        checks.append(("`report COPY` exits 0", report.returncode == 0, _tail(report)))
        for name in ("report.md", "report.html"):
            same = (copy / name).read_bytes() == (parked / name).read_bytes()
            checks.append((f"{name} equals the original's", same, ""))
        naming = [
            str(path.relative_to(copy))
            for path in copy.rglob("*")
            if path.is_file()
            and path.suffix in {".json", ".md", ".html", ".csv", ".yaml", ".log", ".txt"}
            and str(original) in path.read_text(errors="replace")
        ]
        records = [name for name in naming if not name.startswith("logs/")]
        checks.append(
            (
                "no record of the copy (results, reports, manifests, model cards) names the "
                "original folder",
                not records,
                ", ".join(records[:5]),
            )
        )
        worker_inputs = [name for name in naming if name.startswith("logs/")]
        stages_before = snapshot(copy / "stages")
        logs_before = snapshot(copy / "logs") if (copy / "logs").exists() else {}
        run_s, rerun = quantbench(
            "run", *[f for f in args.run_flags if f != "--"], "--out", str(copy)
        )
        checks.append(("`run --out COPY` exits 0", rerun.returncode == 0, _tail(rerun)))
        rewritten = sorted(
            name
            for name, state in snapshot(copy / "stages").items()
            if stages_before.get(name) != state and not name.endswith(DERIVED)
        )
        checks.append(("no stage folder written again", not rewritten, ", ".join(rewritten[:5])))
        logs_after = snapshot(copy / "logs") if (copy / "logs").exists() else {}
        new_logs = sorted(n for n, state in logs_after.items() if logs_before.get(n) != state)
        checks.append(("no worker log written", not new_logs, ", ".join(new_logs[:5])))
        same_figures = figures(copy / "results.json") == figures(parked / "results.json")
        checks.append(("every variant's figures equal the original's", same_figures, ""))
    finally:
        parked.rename(original)
    variants = ", ".join(figures(original / "results.json"))
    lines = [
        "# A moved copy of the default study: same report, nothing rerun",
        "",
        f"- date: {started_at}",
        f"- machine: {_cpu_name()}, {os.cpu_count()} logical cores, Python "
        f"{platform.python_version()}",
        "- command: `.venv/bin/python benchmarks/portable_copy.py DIR/after` after "
        "`benchmarks/exact_kl.py --keep DIR` (the default study, `quantbench run` with no "
        "flags)",
        f"- variants: {variants}",
        f"- `quantbench report COPY`: {report_s:.1f} s; `quantbench run --out COPY`: {run_s:.1f} s",
        "",
        "Worker request files and logs under logs/ are the last run's own input and output "
        "(the request names the output folder that run wrote to); they are rewritten when a "
        f"worker runs again. Here {len(worker_inputs)} of them name the original folder.",
        "",
        "| check | holds | detail |",
        "|---|---|---|",
        *(
            f"| {what} | {'yes' if ok else '**no**'} | {_cell(detail)} |"
            for what, ok, detail in checks
        ),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    shutil.rmtree(copy.parent)
    if not all(ok for _, ok, _ in checks):
        sys.exit(1)


if __name__ == "__main__":
    main()
