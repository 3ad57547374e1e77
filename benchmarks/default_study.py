"""Wall time of the default study, from an empty cache and output folder, then of a re-run.

    .venv/bin/python benchmarks/default_study.py [--out FILE]

Targets from the issues: the whole default study (quantization and evaluation) under 15
minutes on a 2-core CPU, and a re-run of a finished study under 10 seconds. Timed here, run
by hand on a quiet machine, never in the test suite.
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


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "default_study.md"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "QUANTBENCH_CACHE_DIR": str(Path(tmp) / "cache")}
        command = [sys.executable, "-m", "quantbench", "run", "--out", str(Path(tmp) / "out")]
        first = timed(command, env)
        again = timed(command, env)
    lines = [
        "# Default study wall time",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {os.cpu_count()} logical cores",
        "- command: `quantbench run --out OUT` with an empty cache (GGUF conversion included)",
        "",
        "| run | seconds | target |",
        "|---|---:|---|",
        f"| first (quantize + evaluate 4 variants) | {first:,.1f} | < 900 |",
        f"| again (everything cached) | {again:,.1f} | < 10 |",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
