"""Every registered scheme in one study of the built-in model: its headline figures and the
wall time of each quantization.

    .venv/bin/python benchmarks/scheme_zoo.py [--out FILE] [--keep DIR]

Runs `quantbench run --schemes all` with a small budget so that the whole zoo fits in well
under an hour on a 2-core CPU: 16 calibration samples of up to 256 tokens, 4,096 scored
tokens, and the quality metrics only (size, perplexity, KL divergence). Speed is left out on
purpose: on a CPU through transformers every quantized scheme runs emulated, so its speed
says nothing about the scheme. Run by hand on a quiet machine, never in the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_class

from quantbench.results import StudyResults, VariantResult
from quantbench.study_files import load_results

BUDGET = [
    "--calibration-samples",
    "16",
    "--calibration-seq-len",
    "256",
    "--max-tokens",
    "4096",
    "--metrics",
    "size,perplexity,divergence",
]


def interval(low: float, estimate: float, high: float, digits: int = 4) -> str:
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def row(variant: VariantResult) -> str:
    metrics = variant.metrics
    size = f"{metrics.size.weights_bytes / 2**20:,.1f}" if metrics.size else "–"
    ppl = kl = top1 = "–"
    if metrics.perplexity:
        p = metrics.perplexity.perplexity
        ppl = interval(p.low, p.estimate, p.high, 3)
    if metrics.divergence:
        d = metrics.divergence
        kl = interval(d.kl_mean.low, d.kl_mean.estimate, d.kl_mean.high)
        top1 = f"{100 * d.top1_agreement.estimate:.1f}%"
    wall = f"{variant.quantization.wall_s:,.1f}" if variant.quantization else "–"
    status = variant.status if variant.status == "ok" else f"failed: {variant.error or ''}"
    decisions = "; ".join(variant.decisions) or "–"
    return f"| {variant.name} | {status} | {size} | {ppl} | {kl} | {top1} | {wall} | {decisions} |"


def awq_against_gptq(results: StudyResults) -> list[str]:
    """Both 4-bit INT schemes at the group size pre-flight chose for each, with intervals."""
    names = {v.name: v for v in results.variants}
    awq, gptq = names.get("w4a16-awq"), names.get("w4a16-gptq")
    if not (awq and gptq and awq.metrics.divergence and gptq.metrics.divergence):
        return ["AWQ or GPTQ did not finish: no comparison."]
    lines = [
        "| scheme | group size | KL mean, nats/token [95% CI] | perplexity [95% CI] |",
        "|---|---:|---|---|",
    ]
    for variant in (awq, gptq):
        d = variant.metrics.divergence
        p = variant.metrics.perplexity
        assert d is not None
        ppl = interval(p.perplexity.low, p.perplexity.estimate, p.perplexity.high, 3) if p else "–"
        kl = interval(d.kl_mean.low, d.kl_mean.estimate, d.kl_mean.high)
        lines.append(f"| {variant.name} | {variant.options.get('group_size')} | {kl} | {ppl} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "scheme_zoo.md"
    )
    parser.add_argument("--keep", type=Path, help="study folder to keep (default: temporary)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        study = args.keep or Path(tmp) / "zoo"
        command = [sys.executable, "-m", "quantbench", "run", "--schemes", "all"]
        command += ["--out", str(study), *BUDGET]
        started = time.perf_counter()
        finished = subprocess.run(command, check=False)
        wall = time.perf_counter() - started
        results = load_results(study)
    shown = " ".join(["quantbench", *command[3:]]).replace(str(study), "zoo")
    lines = [
        "# Scheme zoo: every registered scheme on the built-in model",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {cpu_class()}, shared with other work while it ran",
        f"- command: `{shown}` (exit status {finished.returncode})",
        "- budget: 16 calibration samples × up to 256 tokens; perplexity and KL on 4,096 "
        "tokens of the built-in corpus; no speed (emulated on this CPU) and no generations",
        f"- whole study: {wall / 60:,.1f} min wall (model conversion, calibration, every "
        "quantization and evaluation)",
        "",
        "Quantize wall time is the worker process's, load to save. KL is "
        "KL(baseline ‖ variant) per token; intervals are 95% bootstrap intervals.",
        "",
        "| variant | status | weights MiB | perplexity [95% CI] | KL mean [95% CI] | top-1 agree "
        "| quantize s | pre-flight decisions |",
        "|---|---|---:|---|---|---:|---:|---|",
        *(row(v) for v in results.variants),
        "",
        "## AWQ against GPTQ at the same group size",
        "",
        *awq_against_gptq(results),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
