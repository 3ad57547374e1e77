"""Does a refactor change any figure? The default study at two commits, compared key by key.

    .venv/bin/python benchmarks/refactor_identity.py --before REV [--after REV] [--keep DIR]
        [--out FILE]

Each commit is taken with `git archive` into its own folder and run as `python -m quantbench
run` with no flags (the default study: every default scheme and metric on the built-in model)
in a fresh output folder, with the user's model cache (the built-in model converted once), back
to back on this machine. Then every key of the two results.json files is compared. Left out of
the comparison, because they measure the machine rather than the model: timings (wall_s,
load_s, warmup_s, startup_s, the speed records' figures, quantization phases), memory readings
(rss, peak), creation times, the provenance block and each study's own folder and commit. Any
other difference, a key present on one side only included, is listed. Run by hand, never in the
test suite (about 20 minutes per study on two cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

MACHINE_KEYS = {
    "created_at",
    "wall_s",
    "load_s",
    "warmup_s",
    "startup_s",
    "phases",
    "peak_rss_bytes",
    "rss_loaded_bytes",
    "rss_peak_generating_bytes",
    "gpu_peak_bytes",
    "provenance",
    "torch_threads",
    "thread_binding",
}
"""Keys whose values measure the machine or the moment, not the model (compared nowhere)."""
TIMED_RECORDS = {"speed"}
"""Records made only of timings: only their structure (batch sizes, token counts) is compared."""
TIMING_FIELDS = {"ttft_s", "tpot_s", "e2e_s", "throughput_tok_s", "itl_s"}


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def snapshot(rev: str, into: Path) -> str:
    """`git archive` of `rev` into `into`; the commit's short hash."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return commit


def run_default_study(src: Path, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "quantbench", "run", "--out", str(out)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Every path where `a` and `b` differ, machine readings left out (see MACHINE_KEYS)."""
    if isinstance(a, dict) and isinstance(b, dict):
        found: list[str] = []
        for key in sorted(set(a) | set(b)):
            if key in MACHINE_KEYS:
                continue
            where = f"{path}.{key}" if path else key
            if key not in a or key not in b:
                side = "after" if key not in a else "before"
                found.append(f"{where}: only {side} has it")
            elif key in TIMED_RECORDS and isinstance(a[key], dict) and isinstance(b[key], dict):
                found += differences(_untimed(a[key]), _untimed(b[key]), where)
            else:
                found += differences(a[key], b[key], where)
        return found
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items before, {len(b)} after"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: {a!r} before, {b!r} after"]


def _untimed(record: dict[str, Any]) -> dict[str, Any]:
    points = [
        {k: v for k, v in p.items() if k not in TIMING_FIELDS} for p in record.get("points", [])
    ]
    return {**{k: v for k, v in record.items() if k not in ("sample_output",)}, "points": points}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the commit before the refactor")
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep both studies")
    parser.add_argument("--out", type=Path, help="write the Markdown summary here")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="qb-identity-"))
    runs: dict[str, tuple[str, float, dict[str, Any]]] = {}
    for label, rev in (("before", args.before), ("after", args.after)):
        commit = snapshot(rev, work / label / "tree")
        out = work / label / "study"
        wall = run_default_study(work / label / "tree" / "src", out)
        results = json.loads((out / "results.json").read_text())
        runs[label] = (commit, wall, results)
        print(f"{label} ({commit}): {wall:.0f} s", flush=True)
    found = differences(runs["before"][2], runs["after"][2])
    lines = [
        "# Refactor identity: the default study before and after",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} logical cores ({_cpu_name()})",
        f"- command: `.venv/bin/python benchmarks/refactor_identity.py --before {args.before}"
        f" --after {args.after}`",
        f"- before: {runs['before'][0]}, {runs['before'][1]:.0f} s wall; after: "
        f"{runs['after'][0]}, {runs['after'][1]:.0f} s wall",
        "- compared: every key of results.json except timings, memory readings, creation "
        "times and the provenance block (`MACHINE_KEYS` in the script); the speed records' "
        "structure (batch sizes, token counts, backend, mode) is compared, their timings not",
        "",
        f"**{len(found)} difference(s).**",
        "",
        *(f"- `{d}`" for d in found),
    ]
    text = "\n".join(lines).rstrip() + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
