"""Exact divergence on the built-in model: quantbench's figures against plain-numpy float64,
and the divergence cost before and after exact KL became the default, in one run.

    .venv/bin/python benchmarks/exact_kl.py --before SRC [--max-tokens N] [--keep DIR] [--out FILE]

`--before SRC` is the `src` folder of quantbench before the change (for example
`git archive 560a347 | tar -x -C /tmp/qb_before`, then `/tmp/qb_before/src`: the commit
before exact KL, 338b016). `--keep DIR` runs in DIR and keeps both studies. Both runs are a
default study (`quantbench run` with no flags: every default scheme and metric), each in a
fresh output folder with a shared, pre-warmed model cache, back to back on the same machine.
The figures: the whole study's wall time (the budget: at most 15% growth), and per variant
the scores stage's pass (where the divergence cost lies: the exact method adds the
baseline's forward and the full-vocabulary reductions) plus the baseline's load next to the
variant.

The exactness check then reads the "after" study's artifacts and windows, runs every model
on the same batches of windows as the hf backend does (so the logits are the same), and
computes log-softmax, KL(baseline ‖ variant), top-1 agreement and Δp in float64 with numpy
alone, window by window. Target: every variant's KL mean within 1e-4 relative. Run by hand
on a quiet machine, never in the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
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

import numpy as np

STUDY = "quantbench run (defaults)"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_study(out: Path, env: dict[str, str], max_tokens: int | None) -> float:
    command = [sys.executable, "-m", "quantbench", "run", "--out", str(out)]
    if max_tokens is not None:
        command += ["--max-tokens", str(max_tokens)]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def stage_records(out: Path, stage: str) -> dict[str, dict[str, Any]]:
    """Variant name → the record of its `stage` manifest."""
    records = {}
    for manifest in (out / "stages" / stage).glob("*/manifest.json"):
        data = json.loads(manifest.read_text())
        records[str(data["variant"])] = data["record"]
    return records


def float64_reference(out: Path) -> dict[str, dict[str, float]]:
    """KL mean, top-1 agreement and mean Δp of every variant from numpy float64."""
    import torch
    from transformers import AutoModelForCausalLM

    from quantbench.backends.hf import resolve_compute_dtype
    from quantbench.corpus import read_windows
    from quantbench.study_files import load_results

    results = load_results(out)
    baseline = next(v for v in results.variants if v.scheme in ("bf16", "fp16"))
    ppl = baseline.metrics.perplexity
    assert ppl is not None
    windows = read_windows(out / "stages" / "corpus" / ppl.corpus_key)
    dtype, _ = resolve_compute_dtype("auto", "cpu", "bfloat16")
    models = {
        v.name: AutoModelForCausalLM.from_pretrained(v.artifact_path, dtype=dtype).eval()
        for v in results.variants
    }
    sums: dict[str, dict[str, float]] = {
        name: {"kl": 0.0, "top1": 0.0, "delta": 0.0} for name in models if name != baseline.name
    }
    tokens = 0

    def log_softmax(logits: Any) -> np.ndarray:
        row = logits.float().numpy().astype(np.float64)
        shifted = row - row.max(axis=-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))

    index = 0
    all_windows = windows.windows
    with torch.inference_mode():
        while index < len(all_windows):  # the hf backend's batches: up to 4 equal windows
            end = index + 1
            while (
                end < len(all_windows)
                and end - index < 4
                and len(all_windows[end]) == len(all_windows[index])
            ):
                end += 1
            batch = torch.tensor(all_windows[index:end])
            base_logits = models[baseline.name](input_ids=batch).logits
            variant_logits = {n: models[n](input_ids=batch).logits for n in sums}
            for row in range(end - index):
                skip = windows.score_from[index + row]
                targets = np.array(all_windows[index + row][1:])[skip:]
                positions = np.arange(len(targets))
                p = log_softmax(base_logits[row, :-1])[skip:]
                for name, logits in variant_logits.items():
                    q = log_softmax(logits[row, :-1])[skip:]
                    sums[name]["kl"] += float((np.exp(p) * (p - q)).sum())
                    sums[name]["top1"] += float((p.argmax(axis=1) == q.argmax(axis=1)).sum())
                    sums[name]["delta"] += float(
                        (np.exp(q[positions, targets]) - np.exp(p[positions, targets])).sum()
                    )
                tokens += len(targets)
            index = end
    return {
        name: {key: value / tokens for key, value in figures.items()} | {"tokens": tokens}
        for name, figures in sums.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, required=True, help="src folder before")
    parser.add_argument("--max-tokens", type=int, default=None, help="default: the study's")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="an empty folder to run in and keep (the studies and the model cache), e.g. for "
        "benchmarks/portable_copy.py; default: a temporary folder, removed",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "exact_kl.md"
    )
    args = parser.parse_args()
    before_src = args.before.resolve()
    if not (before_src / "quantbench" / "__init__.py").is_file():
        sys.exit(f"--before {before_src} holds no quantbench package")
    after_src = Path(__file__).resolve().parents[1] / "src"
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        sys.exit(f"--keep {args.keep} is not empty")
    with contextlib.ExitStack() as stack:
        root = (
            args.keep.resolve()
            if args.keep is not None
            else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        )
        root.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "QUANTBENCH_CACHE_DIR": str(root / "cache"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        warm = [sys.executable, "-m", "quantbench", "run", "--out", str(root / "warm")]
        subprocess.run(  # converts the built-in GGUF once, outside both timings
            [*warm, "--schemes", "bf16", "--metrics", "none"],
            env={**env, "PYTHONPATH": str(after_src)},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        before_wall = run_study(
            root / "before", {**env, "PYTHONPATH": str(before_src)}, args.max_tokens
        )
        after_wall = run_study(
            root / "after", {**env, "PYTHONPATH": str(after_src)}, args.max_tokens
        )
        before_scores = stage_records(root / "before", "scores")
        after_scores = stage_records(root / "after", "scores")
        after_divergence = stage_records(root / "after", "divergence")
        reference = float64_reference(root / "after")
    lines = [
        "# Exact KL: quantbench against numpy float64, and the cost before and after",
        "",
        f"- date: {started_at}",
        f"- machine: {_cpu_name()}, {os.cpu_count()} logical cores, Python "
        f"{platform.python_version()}; shared with other work while it ran",
        "- command: `.venv/bin/python benchmarks/exact_kl.py --before /tmp/qb_before/src"
        + (f" --max-tokens {args.max_tokens}" if args.max_tokens else "")
        + "` (before: quantbench at 560a347, top-k 256 + tail)",
        f"- study: `{STUDY}`: default model, schemes, metrics and corpus",
        "",
        "## Exactness (after): KL(baseline ‖ variant) mean, nats/token",
        "",
        "| variant | tokens | method | quantbench | numpy float64 | relative error | "
        "top-1 quantbench | top-1 float64 | mean Δp quantbench | mean Δp float64 |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    worst = 0.0
    for name, figures in sorted(reference.items()):
        record = after_divergence[name]
        kl = record["kl_mean"]["estimate"]
        error = abs(kl - figures["kl"]) / figures["kl"]
        worst = max(worst, error)
        lines.append(
            f"| {name} | {figures['tokens']:,.0f} | {record['method']} | {kl:.6f} | "
            f"{figures['kl']:.6f} | {error:.1e} | {record['top1_agreement']['estimate']:.4f} | "
            f"{figures['top1']:.4f} | {record['ref_prob_delta']['mean']:+.6f} | "
            f"{figures['delta']:+.6f} |"
        )
    lines += [
        "",
        f"Worst relative error of the KL mean: **{worst:.1e}** (target ≤ 1e-4).",
        "",
        "## Cost: scores stage per variant, seconds",
        "",
        "| variant | before (top-k + tail) | after: pass | after: baseline load | after total |",
        "|---|---:|---:|---:|---:|",
    ]
    before_total = after_total = 0.0
    for name in sorted(after_scores):
        before_s = float(before_scores.get(name, {}).get("pass_s", float("nan")))
        after = after_scores[name]
        after_s = float(after["pass_s"]) + float(after.get("baseline_load_s", 0.0))
        before_total += before_s
        after_total += after_s
        lines.append(
            f"| {name} | {before_s:,.1f} | {after['pass_s']:,.1f} | "
            f"{after.get('baseline_load_s', 0.0):,.1f} | {after_s:,.1f} |"
        )
    growth = (after_wall - before_wall) / before_wall
    lines += [
        f"| all | {before_total:,.1f} | | | {after_total:,.1f} |",
        "",
        "| default study, whole run (4 variants, every default metric) | seconds |",
        "|---|---:|",
        f"| before | {before_wall:,.1f} |",
        f"| after | {after_wall:,.1f} |",
        "",
        f"The default study's wall time grew by **{growth:+.1%}** (budget: at most +15%); "
        f"the scores stages by {after_total - before_total:+,.1f} s. Other stages (speed, "
        "generations, quantization) do not change with the method: the rest of the "
        "difference is the noise of a shared machine.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
