"""Mixed precision on the built-in model: does the budgeted search beat the uniform schemes?

    .venv/bin/python benchmarks/mixed_precision.py [--out DIR] [--results FILE]

1. `quantbench run --schemes bf16,w4a16-gptq,w8a8-int8` with the default metrics in DIR.
2. The same study with two mixed variants added, their budgets read from step 1:
   `--mixed target_size=<w4a16-gptq's weights + 10%>` and
   `--mixed max_kl=<w8a8-int8's measured mean KL>`. Step 1's stages are reused, so the
   sensitivity screen and the two mixed variants are what runs.

Then it checks the acceptance of issue 23 on the saved results: the size-budgeted variant's
measured KL at least 30% below w4a16-gptq's with non-overlapping intervals; the KL-budgeted
one at least 5% smaller than w8a8-int8 on disk and within its KL bound (upper end of its
interval reported); and the screen's cost against one w4a16-gptq quantization, both stages of
this one folder, measured back to back on this machine (wall seconds of the worker). Writes
a Markdown summary (default benchmarks/results/mixed_precision.md). Run by hand, on a quiet
machine (about 30 minutes on two cores), never in the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MIB = float(1 << 20)
UNIFORM = "bf16,w4a16-gptq,w8a8-int8"


def _cpu() -> str:
    name, flags = "unknown CPU", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2") if f in flags]
    return f"{name}, {os.cpu_count()} cores, {' '.join(isa)}"


def _or_dash(value: float | None, form: str, unit: float = 1.0) -> str:
    return "–" if value is None else form.format(value / unit)


def _floor_4_digits(value: float) -> float:
    scale = 10 ** (3 - math.floor(math.log10(value)))
    return math.floor(value * scale) / scale


def _commit() -> str:
    head = ["git", "rev-parse", "--short", "HEAD"]
    return subprocess.run(head, cwd=ROOT, capture_output=True, text=True).stdout.strip()


def _run(args: list[str]) -> float:
    command = [sys.executable, "-m", "quantbench", "run", *args]
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT, check=False)
    if finished.returncode not in (0, 1):
        raise SystemExit(f"quantbench run exited {finished.returncode}")
    return time.perf_counter() - start


def _variants(out: Path) -> dict[str, dict[str, Any]]:
    results = json.loads((out / "results.json").read_text())
    return {v["name"]: v for v in results["variants"]}


def _kl(variant: dict[str, Any]) -> dict[str, float]:
    kl: dict[str, float] = variant["metrics"]["divergence"]["kl_mean"]
    return kl


def _size(variant: dict[str, Any]) -> int:
    return int(variant["metrics"]["size"]["weights_bytes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/quantbench-mixed"))
    parser.add_argument(
        "--results", type=Path, default=ROOT / "benchmarks" / "results" / "mixed_precision.md"
    )
    parser.add_argument(
        "--vllm",
        action="store_true",
        help="also serve bf16 and the size-budgeted mixed variant through vLLM (speed only)",
    )
    args = parser.parse_args()
    out = args.out.resolve()
    started = dt.datetime.now(dt.UTC)

    first_s = _run(["--schemes", UNIFORM, "--out", str(out)])
    uniform = _variants(out)
    w4, w8 = uniform["w4a16-gptq"], uniform["w8a8-int8"]
    target = round(_size(w4) * 1.10)
    max_kl = _floor_4_digits(_kl(w8)["estimate"])  # never above the measured figure
    budgets = [f"target_size={target}", f"max_kl={max_kl}"]
    second_s = _run(["--schemes", UNIFORM, "--mixed", ",".join(budgets), "--out", str(out)])

    results = json.loads((out / "results.json").read_text())
    variants = {v["name"]: v for v in results["variants"]}
    sized = next(
        v for v in variants.values() if (v.get("mixed") or {}).get("budget") == "target_size"
    )
    bounded = next(v for v in variants.values() if (v.get("mixed") or {}).get("budget") == "max_kl")
    screen = results["sensitivity"]
    gptq_s = w4["quantization"]["wall_s"]

    lines = [
        "# Mixed precision on the built-in model",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC on {_cpu()}, commit {_commit()}.",
        "",
        "```",
        f".venv/bin/python benchmarks/mixed_precision.py --out {out}"
        + (" --vllm" if args.vllm else ""),
        f"# step 1: quantbench run --schemes {UNIFORM} --out {out}   ({first_s:,.0f} s)",
        f"# step 2: the same with --mixed {','.join(budgets)}   ({second_s:,.0f} s)",
        "```",
        "",
        "Default metrics; KL is the mean KL(baseline ‖ variant) over "
        f"{variants['w4a16-gptq']['metrics']['perplexity']['n_tokens']:,} evaluation "
        "tokens with its 95% window-bootstrap interval. Predicted figures are the search's "
        "(sum of the screen's round-to-nearest per-group increases; tensor bytes without the "
        "file header); the search-sample KL is the GPTQ-quantized allocation's on the "
        f"{screen['search_tokens']} search tokens, as the worker measured it (under a KL "
        "budget: first allocation → second, the kept one starred). The step times above are "
        "this invocation's (stages an earlier one finished are reused); the stage times are "
        "below.",
        "",
        "| variant | weights, MiB | mean KL [95% CI] | perplexity | predicted KL | "
        "search-sample KL | predicted MiB | groups per candidate | quantize s |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, v in variants.items():
        if v["status"] != "ok":
            lines.append(f"| {name} | failed: {v['error']} | | | | | |")
            continue
        div = v["metrics"].get("divergence")
        kl = (
            "{estimate:.4f} [{low:.4f}, {high:.4f}]".format(**div["kl_mean"])
            if div
            else "0 (baseline)"
        )
        ppl = v["metrics"]["perplexity"]["perplexity"]["estimate"]
        search = v.get("mixed") or {}
        rounds = search.get("rounds") or []
        measured = " → ".join(
            f"{r['search_kl']:.4f}" + ("*" if r["kept"] and len(rounds) > 1 else "") for r in rounds
        )
        lines.append(
            f"| {name} | {_size(v) / MIB:,.2f} | {kl} | {ppl:.3f} | "
            f"{_or_dash(search.get('predicted_kl'), '{:.4f}')} | {measured or '–'} | "
            f"{_or_dash(search.get('predicted_size_bytes'), '{:,.2f}', MIB)} | "
            f"{', '.join(f'{k} {n}' for k, n in (search.get('counts') or {}).items())} | "
            f"{v['quantization']['wall_s']:,.0f} |"
        )
    sized_kl, w4_kl, bounded_kl = _kl(sized), _kl(w4), _kl(bounded)
    reduction = 1 - sized_kl["estimate"] / w4_kl["estimate"]
    smaller = 1 - _size(bounded) / _size(w8)
    checks = [
        (
            f"size budget {target / MIB:,.2f} MiB (w4a16-gptq + 10%): KL "
            f"{sized_kl['estimate']:.4f} vs w4a16-gptq {w4_kl['estimate']:.4f}, "
            f"{reduction:.1%} lower (needed ≥ 30%); intervals "
            f"{'do not overlap' if sized_kl['high'] < w4_kl['low'] else 'OVERLAP'}",
            reduction >= 0.30 and sized_kl["high"] < w4_kl["low"],
        ),
        (
            f"KL budget {max_kl} (w8a8-int8's KL): {_size(bounded) / MIB:,.2f} MiB vs w8a8-int8 "
            f"{_size(w8) / MIB:,.2f} MiB, {smaller:.1%} smaller (needed ≥ 5%); measured KL "
            f"{bounded_kl['estimate']:.4f} (upper end {bounded_kl['high']:.4f}) against the "
            f"bound {max_kl}",
            smaller >= 0.05 and bounded_kl["estimate"] <= max_kl,
        ),
        (
            f"cost: the screen ({len(screen['groups'])} groups × {len(screen['candidates'])} "
            f"candidates, {screen['search_tokens']} tokens) took {screen['wall_s']:,.0f} s, one "
            f"w4a16-gptq quantization {gptq_s:,.0f} s: {screen['wall_s'] / gptq_s:.2f}× "
            "(needed ≤ 2×)",
            screen["wall_s"] <= 2 * gptq_s,
        ),
    ]
    lines += ["", "## Acceptance (issue 23)", ""]
    lines += [f"- {'met' if ok else 'NOT MET'}: {text}" for text, ok in checks]
    lines += [
        "",
        "## The ten most sensitive groups (KL added by that group alone, round-to-nearest)",
        "",
        f"| group | {' | '.join(screen['candidates'])} |",
        f"|---|{'---:|' * len(screen['candidates'])}",
    ]
    first = screen["candidates"].index("w4a16-gptq") if "w4a16-gptq" in screen["candidates"] else 0
    for group in sorted(screen["groups"], key=lambda g: -g["kl_increase"][first])[:10]:
        lines.append(
            f"| {group['name']} | {' | '.join(f'{k:.2e}' for k in group['kl_increase'])} |"
        )
    screened = sum(g["kl_increase"][first] for g in screen["groups"])
    lines += [
        "",
        f"Sum of the w4a16 column over all groups (the additive model's prediction for "
        f"w4a16 everywhere, round-to-nearest): {screened:.4f}; w4a16-gptq measured "
        f"{w4_kl['estimate']:.4f}.",
    ]
    if args.vllm:
        lines += ["", *_vllm_check(out, [f"target_size={target}"])]
    args.results.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _vllm_check(out: Path, budgets: list[str]) -> list[str]:
    """Serve bf16, the size-budgeted mixed variant and one of the same budget whose
    candidates are w4a16-gptq and bf16 through vLLM (speed only), in a copy of the study's
    stages so that nothing is quantized again and the study's own results stay as they are;
    what vLLM did with each, in lines of Markdown."""
    import shutil

    check = out.with_name(out.name + "-vllm")
    (check / "stages").mkdir(parents=True, exist_ok=True)
    for kind in ("calibration", "corpus", "sensitivity", "quantize"):
        if (out / "stages" / kind).is_dir():
            shutil.copytree(
                out / "stages" / kind, check / "stages" / kind, symlinks=True, dirs_exist_ok=True
            )
    size = budgets[0].split("=", 1)[1]
    w4_or_bf16 = (
        "{scheme: mixed, name: mixed-w4-bf16, candidates: [w4a16-gptq, bf16], "
        f"target_size: {size}}}"
    )
    flags = [
        "--schemes",
        "bf16",
        "--mixed",
        ",".join(budgets),
        "--set",
        f"schemes=[bf16, {w4_or_bf16}]",
        "--metrics",
        "size,speed",
    ]
    seconds = _run([*flags, "--speed-backend", "vllm", "--out", str(check)])
    lines = [
        "## Through vLLM (speed only)",
        "",
        "```",
        "quantbench run "
        + " ".join(f"'{f}'" if " " in f else f for f in flags)
        + f" --speed-backend vllm --out {check}   ({seconds:,.0f} s)",
        "```",
        "",
        "| variant | status | speed backend | mode | decode ms/token, batch 1 | detail |",
        "|---|---|---|---|---:|---|",
    ]
    for name, v in _variants(check).items():
        speed = v["metrics"].get("speed")
        errors = v["metrics"].get("errors") or {}
        if speed is None:
            lines.append(f"| {name} | {v['status']} | – | – | – | {errors.get('speed', '')} |")
            continue
        first = speed["points"][0]
        decode = first.get("tpot_s") or {}
        ms = f"{decode['median'] * 1000:.2f}" if decode else "–"
        lines.append(
            f"| {name} | {v['status']} | {speed['backend']} | {speed['execution_mode']} | "
            f"{ms} | {speed['detail']} |"
        )
    return lines


if __name__ == "__main__":
    main()
