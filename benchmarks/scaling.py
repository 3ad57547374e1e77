"""How a study's time and memory grow with the model, and whether pre-flight predicts memory.

    .venv/bin/python benchmarks/scaling.py measure WORK [--sizes 0.14b,0.25b,0.5b,1.5b]
    .venv/bin/python benchmarks/scaling.py measure-vllm WORK [--sizes ...]
    .venv/bin/python benchmarks/scaling.py report WORK [--out benchmarks/results/scaling.md]

`measure` builds random-weight Llama models (the built-in model's tokenizer, the widths of
real models: SmolLM2-135M, Qwen2-0.5B, Qwen2-1.5B, and a 0.25 B size held out: measured
after the estimates' constants were set from the other three), then for each runs
`quantbench run` twice on one output folder: bf16 + fp8-dynamic + w4a16-gptq + w8a8-int8
with perplexity, then the same with divergence added, so that the second run's evaluation
workers compute divergence and nothing else (stages are content-keyed: quantization and the
scoring pass are reused). `measure-vllm` runs each study once more with perplexity through
vLLM (the artifacts reused), for the engine's memory. Every stage's worker records its wall
time, peak RSS and sampled peak anonymous memory (a quantize stage in its record, a metric
stage in its manifest; vLLM's processes their summed PSS), so each figure is one stage's
own. A finished size is not measured again; WORK/measurements.json holds the runs.

`report` puts beside each measured peak the estimate quantbench makes for that stage now
(`quantbench.memory`, the functions pre-flight and the executors call, fed by
`inspect_model` of the same folder and the study's settings), fits time (t = a·N^b) and
peak memory (m = c + k·N) against parameter count per stage, and writes a Markdown table.
The weights are random: the quality figures mean nothing, the costs are real.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SIZES: dict[str, dict[str, int]] = {
    # SmolLM2-135M's own shape.
    "0.14b": {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
    },
    # Held out: measured after the estimates' constants were set from the other three.
    "0.25b": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 24,
        "num_attention_heads": 12,
        "num_key_value_heads": 4,
    },
    # Qwen2-0.5B's widths (GQA 14/2), 24 layers.
    "0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
    },
    # Qwen2-1.5B's widths (GQA 12/2), 28 layers.
    "1.5b": {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
    },
}
SCHEMES = ("bf16", "fp8-dynamic", "w4a16-gptq", "w8a8-int8")
CALIBRATION_SAMPLES = 16
CALIBRATION_SEQ_LEN = 256
SCORED_TOKENS = 2048
STUDY_FLAGS = (
    "--schemes",
    ",".join(SCHEMES),
    "--calibration-samples",
    str(CALIBRATION_SAMPLES),
    "--calibration-seq-len",
    str(CALIBRATION_SEQ_LEN),
    "--max-tokens",
    str(SCORED_TOKENS),
    "--no-default-constraints",
)
RUNS = (("perplexity", "perplexity"), ("divergence", "perplexity,divergence"))
"""(what the run adds, --metrics): each run's new evaluation stages are computed alone."""

TOKENIZER_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)
MIB = float(1 << 20)
GIB = float(1 << 30)


def build_model(size: str, dest: Path) -> None:
    """A random-weight (seed 0) Llama of `size`'s shape in bf16, with the built-in
    model's tokenizer and vocabulary."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from quantbench.models import resolve_model

    builtin = resolve_model("smollm2-135m-instruct").path
    config = AutoConfig.from_pretrained(builtin)
    for key, value in SIZES[size].items():
        setattr(config, key, value)
    config.head_dim = config.hidden_size // config.num_attention_heads
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    work = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    model.save_pretrained(work)
    for name in TOKENIZER_FILES:
        shutil.copy(builtin / name, work / name)
    work.rename(dest)


def _stage_costs(out: Path) -> dict[str, dict[str, dict[str, float]]]:
    """variant -> stage -> {wall_s, peak_rss_bytes}, read from the study's results and its
    committed metric stages."""
    results = json.loads((out / "results.json").read_text())
    costs: dict[str, dict[str, dict[str, float]]] = {}
    for variant in results["variants"]:
        costs[variant["name"]] = {"quantize": _cost(variant["quantization"])}
    for manifest_path in (out / "stages").glob("*/*/manifest.json"):
        manifest = json.loads(manifest_path.read_text())
        if "metric" not in manifest or manifest.get("wall_s") is None:
            continue
        stage = manifest["metric"]
        if manifest.get("engine_peak_bytes") is not None:
            if stage != "scores":  # later stages of the same worker see the same engine
                continue
            stage = "vllm engine"
            manifest = {**manifest, "peak_rss_bytes": manifest["engine_peak_bytes"]}
        costs.setdefault(manifest["variant"], {})[stage] = _cost(manifest)
    return costs


def _cost(record: dict[str, Any]) -> dict[str, float]:
    fields = ("wall_s", "peak_rss_bytes", "peak_anonymous_bytes")
    return {name: record[name] for name in fields if record.get(name) is not None}


def measure(work: Path, sizes: list[str]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    record_path = work / "measurements.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {"sizes": {}}
    record["machine"] = _machine()
    for size in sizes:
        if size in record["sizes"]:
            print(f"{size}: measured already", flush=True)
            continue
        model = work / "models" / size
        if not model.exists():
            started = time.perf_counter()
            build_model(size, model)
            print(f"{size}: model built in {time.perf_counter() - started:.0f} s", flush=True)
        out = work / "studies" / size
        runs = {}
        for adds, metrics in RUNS:
            command = [
                sys.executable, "-m", "quantbench", "run", "--model", str(model),
                "--out", str(out), "--metrics", metrics, *STUDY_FLAGS,
            ]  # fmt: skip
            started = time.perf_counter()
            log = work / f"{size}-{adds}.log"
            with log.open("w") as handle:
                subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT)
            runs[adds] = time.perf_counter() - started
            print(f"{size}: run adding {adds} took {runs[adds]:.0f} s", flush=True)
        record["sizes"][size] = {
            "model": str(model.relative_to(work)),
            "study": str(out.relative_to(work)),
            "run_wall_s": runs,
            "stages": _stage_costs(out),
        }
        record_path.write_text(json.dumps(record, indent=2) + "\n")


def measure_vllm(work: Path, sizes: list[str]) -> None:
    """vLLM's engine on the CPU: each size's study once more with every metric through vLLM
    (perplexity alone), in the same folder: the artifacts are reused, and the new scores
    stages record the peak memory of vLLM's processes (`engine_peak_bytes`)."""
    record_path = work / "measurements.json"
    record = json.loads(record_path.read_text())
    for size in sizes:
        entry = record["sizes"][size]
        if "vllm" in entry["run_wall_s"]:
            continue
        command = [
            sys.executable, "-m", "quantbench", "run", "--model", str(work / entry["model"]),
            "--out", str(work / entry["study"]), "--metrics", "perplexity",
            "--backend", "vllm", *STUDY_FLAGS,
        ]  # fmt: skip
        started = time.perf_counter()
        with (work / f"{size}-vllm.log").open("w") as handle:
            # status 1: a variant vLLM's CPU build does not run (fp8) is recorded as such
            done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
        if done.returncode not in (0, 1):
            raise SystemExit(f"{size}: the vLLM run failed (status {done.returncode})")
        entry["run_wall_s"]["vllm"] = time.perf_counter() - started
        print(f"{size}: vLLM run took {entry['run_wall_s']['vllm']:.0f} s", flush=True)
        record_path.write_text(json.dumps(record, indent=2) + "\n")


def _machine() -> dict[str, Any]:
    from quantbench.provenance import cpu_info

    cpu = cpu_info()
    flags = ", ".join(name for name, present in cpu["flags"].items() if present)
    described = f"{cpu['model']}, {cpu['usable_cores']} cores ({flags})"
    return {"cpu": described, "python": platform.python_version()}


# --- report ---------------------------------------------------------------------------------


STAGES = ("quantize", "scores", "divergence", "vllm engine")
"""The stages whose memory is compared: quantization, the scoring pass (the models and their
logits; perplexity summarizes its arrays in the same worker, in milliseconds), divergence
alone (its own worker in the second run: a summary of stored arrays), and vLLM's engine."""


def estimates(work: Path, size: str) -> dict[str, dict[str, int]]:
    """variant -> stage -> the estimate quantbench makes for that stage now (bytes), from
    `quantbench.memory`, the functions pre-flight and the executors call."""
    from quantbench.config import VLLMSettings
    from quantbench.evaluate import scoring_dtype
    from quantbench.memory import (
        EVALUATION_RUNTIME_BYTES,
        quantize_stage_bytes,
        scores_stage_bytes,
        vllm_engine_bytes,
    )
    from quantbench.models import inspect_model
    from quantbench.preflight import SCORE_BATCH_WINDOWS
    from quantbench.quantize import calibration_dtype_here
    from quantbench.schemes import get_scheme

    info = inspect_model(work / "models" / size)
    calibration_dtype = calibration_dtype_here("auto")
    kv_cache = int(VLLMSettings().kv_cache_gib * GIB)
    dtype = scoring_dtype("auto", work / "models" / size, cuda=False)  # as the study does
    result: dict[str, dict[str, int]] = {}
    for name in SCHEMES:
        scheme = get_scheme(name)
        result[name] = {
            "quantize": quantize_stage_bytes(
                info,
                quantizes=scheme.quantizes,
                calibrates=scheme.calibrates({}),
                num_samples=CALIBRATION_SAMPLES,
                seq_len=CALIBRATION_SEQ_LEN,
                calibration_dtype=calibration_dtype,
            ).total_bytes,
            "scores": scores_stage_bytes(
                info,
                form=scheme.model_form,
                with_baseline=scheme.quantizes,  # the exact method's baseline
                compute_dtype=dtype,
                window=512,
                batch_windows=SCORE_BATCH_WINDOWS,
            ).total_bytes,
            "divergence": EVALUATION_RUNTIME_BYTES,
        }
        result[name]["vllm engine"] = vllm_engine_bytes(
            info, scheme.model_form, kv_cache
        ).total_bytes
    return result


def _fit_power(n: list[float], y: list[float]) -> tuple[float, float]:
    """y = a·n^b by least squares in log space: (a, b)."""
    b, log_a = np.polyfit(np.log(n), np.log(y), 1)
    return float(math.exp(log_a)), float(b)


def _fit_line(n: list[float], y: list[float]) -> tuple[float, float]:
    """y = c + k·n by least squares: (c, k)."""
    k, c = np.polyfit(n, y, 1)
    return float(c), float(k)


def report(work: Path, out: Path | None) -> str:
    from quantbench.models import inspect_model

    record = json.loads((work / "measurements.json").read_text())
    params = {s: inspect_model(work / "models" / s).num_parameters for s in record["sizes"]}
    sizes = sorted(params, key=params.__getitem__)
    lines = [
        "# How cost grows with model size",
        "",
        f"Machine: {record['machine']['cpu']}, Python {record['machine']['python']}.",
        "",
        "```",
        f".venv/bin/python benchmarks/scaling.py measure {work}",
        f".venv/bin/python benchmarks/scaling.py measure-vllm {work}",
        f".venv/bin/python benchmarks/scaling.py report {work} --out {out}",
        "```",
        "",
        f"Random-weight Llama models; calibration {CALIBRATION_SAMPLES} × {CALIBRATION_SEQ_LEN}"
        f" tokens; perplexity and divergence on {SCORED_TOKENS} tokens (windows of 512)."
        " Peak RSS is each stage's worker's own (`ru_maxrss`); anonymous is the sampled peak"
        " of its anonymous memory (RSS less mapped weight files, which the kernel can drop);"
        " for vLLM, the summed PSS of its worker and engine processes. The estimate is the one"
        " quantbench makes for that stage (`quantbench.memory`).",
        "",
        "| size | parameters | stage | variant | wall s | peak RSS MiB | anonymous MiB |"
        " estimate MiB | measured / estimate |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    ratios: list[float] = []
    series: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for size in sizes:
        study = work / record["sizes"][size]["study"]
        stages = _stage_costs(study)
        estimated = estimates(work, size)
        for stage in STAGES:
            for variant in SCHEMES:
                cost = stages.get(variant, {}).get(stage)
                if cost is None:
                    continue
                estimate = estimated[variant][stage]
                ratio = cost["peak_rss_bytes"] / estimate
                ratios.append(ratio)
                series.setdefault((stage, variant), []).append(
                    (params[size], cost["wall_s"], cost["peak_rss_bytes"])
                )
                anonymous = cost.get("peak_anonymous_bytes")
                lines.append(
                    f"| {size} | {params[size] / 1e9:.3f} B | {stage} | {variant} |"
                    f" {cost['wall_s']:.1f} | {cost['peak_rss_bytes'] / MIB:,.0f} |"
                    f" {'–' if anonymous is None else f'{anonymous / MIB:,.0f}'} |"
                    f" {estimate / MIB:,.0f} | {ratio:.2f} |"
                )
    lines += [
        "",
        f"Measured / estimated memory: {min(ratios):.2f} to {max(ratios):.2f} over"
        f" {len(ratios)} stages (target 0.75 to 1.25).",
        "",
        "## Fitted growth (N = parameters)",
        "",
        "Time: t = a·N^b (least squares in log space); memory: m = c + k·N (least squares).",
        "",
        "| stage | variant | time exponent b | time at 7 B, s | memory c, GiB |"
        " k, bytes per parameter | memory at 7 B, GiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    memory_lines: dict[tuple[str, str], tuple[float, float]] = {}
    for (stage, variant), points in series.items():
        if len(points) < 2:
            continue
        n = [p[0] for p in points]
        a, b = _fit_power(n, [p[1] for p in points])
        c, k = _fit_line(n, [p[2] for p in points])
        memory_lines[stage, variant] = (c, k)
        lines.append(
            f"| {stage} | {variant} | {b:.2f} | {a * 7e9**b:,.0f} | {c / GIB:.2f} | {k:.2f} |"
            f" {(c + k * 7e9) / GIB:.1f} |"
        )
    lines += [
        "",
        "## The largest model a machine fits",
        "",
        "From the fitted memory lines: the largest parameter count whose every measured stage"
        " (all four variants, exact divergence, vLLM) stays under N GiB at this study's small"
        " calibration and scoring budgets, and the stage that binds; then the same for"
        " quantization alone (a study whose baseline does not fit beside a variant scores"
        " divergence by the top-k + tail method instead, one model at a time).",
        "",
        "| memory | largest model, every stage | binding stage | largest model to quantize |",
        "|---:|---:|---|---:|",
    ]
    for gib in (8, 16, 32, 64, 128):
        limits = {key: (gib * GIB - c) / k for key, (c, k) in memory_lines.items() if k > 0}
        (stage, variant), largest = min(limits.items(), key=lambda item: item[1])
        quantize = min(n for (kind, _), n in limits.items() if kind == "quantize")
        lines.append(
            f"| {gib} GiB | {largest / 1e9:.1f} B | {stage} ({variant}) | {quantize / 1e9:.1f} B |"
        )
    text = "\n".join(lines) + "\n"
    if out is not None:
        out.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("measure", "measure-vllm", "report"))
    parser.add_argument("work", type=Path)
    parser.add_argument("--sizes", default=",".join(SIZES))  # 0.25b is held out
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sizes = [s for s in args.sizes.split(",") if s]
    if args.command == "measure":
        measure(args.work, sizes)
    elif args.command == "measure-vllm":
        measure_vllm(args.work, sizes)
    else:
        print(report(args.work, args.out))


if __name__ == "__main__":
    main()
