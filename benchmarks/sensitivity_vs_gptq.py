"""Does the round-to-nearest screen rank groups as GPTQ would? A sample of groups, each
quantized alone by GPTQ, against the screen's figure for it.

    .venv/bin/python benchmarks/sensitivity_vs_gptq.py --study DIR [--groups 12]
        [--calibration-samples 16] [--results FILE]

DIR is a study folder holding a sensitivity stage (e.g. the one `benchmarks/mixed_precision.py`
leaves). For `--groups` groups spread evenly over the screen's ranking (w4a16-gptq column),
the baseline model is loaded in float32, only that group is quantized by llm-compressor's
GPTQ (the candidate's own options, on the first `--calibration-samples` of the study's
calibration samples), and KL(baseline ‖ model) is measured on the screen's own search sample
with the same function. Reports Spearman's rank correlation between the screen and GPTQ and
the GPTQ / screen ratio per group. Run by hand (about half a minute per group on two cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", type=Path, required=True)
    parser.add_argument("--groups", type=int, default=12)
    parser.add_argument("--calibration-samples", type=int, default=16)
    parser.add_argument(
        "--results", type=Path, default=ROOT / "benchmarks" / "results" / "sensitivity_vs_gptq.md"
    )
    args = parser.parse_args()

    import torch
    from compressed_tensors.quantization import QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from scipy.stats import spearmanr
    from transformers import AutoModelForCausalLM

    from quantbench.calibration import SAMPLES_FILE, read_samples
    from quantbench.models import locate_model
    from quantbench.output import OutputFolder
    from quantbench.schemes import get_scheme
    from quantbench.schemes.gptq import gptq_actorder
    from quantbench.sensitivity import sample_kl, search_logprobs, search_sample
    from quantbench.store import StageRef

    results = json.loads((args.study / "results.json").read_text())
    screen = results["sensitivity"]
    request = json.loads((args.study / "logs" / "sensitivity.request.json").read_text())
    candidate = "w4a16-gptq"
    column = screen["candidates"].index(candidate)
    options = request["candidate_options"][candidate]
    store = OutputFolder.open(args.study).stages()
    calibration = store.path(StageRef("calibration", results["calibration"]["key"]))
    samples = read_samples(calibration / SAMPLES_FILE)
    sample = search_sample(samples, screen["search_tokens"])
    model_path = locate_model(request["model"])

    ranked = sorted(screen["groups"], key=lambda g: -g["kl_increase"][column])
    step = max(1, len(ranked) // args.groups)
    chosen = ranked[::step][: args.groups]
    baseline_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    baseline = search_logprobs(baseline_model, sample)
    del baseline_model
    calibration_rows = samples[: args.calibration_samples]
    data = Dataset.from_dict(
        {"input_ids": calibration_rows, "attention_mask": [[1] * len(r) for r in calibration_rows]}
    )
    scheme = get_scheme(candidate)
    rows = []
    for group in chosen:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        recipe = GPTQModifier(
            config_groups={
                "g": QuantizationScheme(
                    targets=group["linears"],
                    weights=scheme.weight_args(options),  # type: ignore[attr-defined]
                )
            },
            ignore=["lm_head"],
            dampening_frac=float(options["dampening_frac"]),
            block_size=int(options["block_size"]),
            actorder=gptq_actorder(str(options["actorder"])),
        )
        oneshot(
            model=model,
            recipe=recipe,
            dataset=data,
            num_calibration_samples=len(calibration_rows),
            max_seq_length=max(len(r) for r in calibration_rows),
            shuffle_calibration_samples=False,
        )
        gptq = sample_kl(baseline, search_logprobs(model, sample))
        rows.append((group["name"], group["kl_increase"][column], gptq))
        print(rows[-1], flush=True)
        del model

    rho = spearmanr([r[1] for r in rows], [r[2] for r in rows]).statistic
    ratios = sorted(r[2] / r[1] for r in rows if r[1] > 0)
    lines = [
        "# The sensitivity screen against GPTQ, group by group",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {_cpu()}, commit "
        + subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        + ".",
        "",
        "```",
        f".venv/bin/python benchmarks/sensitivity_vs_gptq.py --study {args.study} "
        f"--groups {args.groups} --calibration-samples {args.calibration_samples}",
        "```",
        "",
        f"{len(rows)} groups spread over the screen's ranking ({candidate}); each quantized "
        f"alone by GPTQ on {len(calibration_rows)} calibration samples; KL(baseline ‖ model) "
        f"on the screen's {screen['search_tokens']}-token search sample, float32, nats/token.",
        "",
        f"**Spearman rank correlation, screen vs GPTQ: {rho:.3f}**; GPTQ / screen ratio: "
        f"median {ratios[len(ratios) // 2]:.2f}, range {ratios[0]:.2f}–{ratios[-1]:.2f}.",
        "",
        "| group | screen (round-to-nearest) | GPTQ | GPTQ / screen |",
        "|---|---:|---:|---:|",
        *(f"| {n} | {s:.2e} | {g:.2e} | {g / s:.2f} |" for n, s, g in rows),
    ]
    args.results.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
