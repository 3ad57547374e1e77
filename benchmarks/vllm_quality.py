"""Quality through vLLM against quality through transformers, on the same artifacts.

    .venv/bin/python benchmarks/vllm_quality.py --study quantbench-out [--python PY] [--out FILE]

`--study` is a finished default study, evaluated through the hf backend. Its quantize and
calibration stages are copied (nothing is quantized again) and `quantbench run --backend
vllm --metrics perplexity,divergence,generations` scores the same corpus windows and decodes
the same prompts through vLLM. The table puts both backends' figures side by side: the
perplexity of every variant, its KL divergence from its own backend's baseline and its
top-1 agreement, and, for the generations, how many of the 48 greedy texts the two backends
wrote identically.
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


def interval(record: dict[str, Any], scale: float = 1.0, digits: int = 3) -> str:
    return (
        f"{record['estimate'] * scale:.{digits}f} "
        f"[{record['low'] * scale:.{digits}f}, {record['high'] * scale:.{digits}f}]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", type=Path, required=True)
    parser.add_argument("--python", default=None, help="vLLM env interpreter")
    parser.add_argument(
        "--reuse", type=Path, default=None, help="a finished work folder: skip the run"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "vllm_quality.md"
    )
    args = parser.parse_args()
    python = args.python
    if python is None:
        from quantbench.envs import env_python

        python = str(env_python("vllm"))
    work = args.reuse or Path(tempfile.mkdtemp(prefix="quantbench-vllm-quality-"))
    study = work / "study"
    started = time.perf_counter()
    if args.reuse is None:
        for stage in ("quantize", "calibration"):
            shutil.copytree(args.study / "stages" / stage, study / "stages" / stage)
    with open(work / "quantbench.log", "a") as log:
        subprocess.run(
            [sys.executable, "-m", "quantbench", "run", "--out", str(study), "--backend",
             "vllm", "--metrics", "perplexity,divergence,generations", "--vllm-python", python],
            stdout=log, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    run_s = time.perf_counter() - started
    hf = {v["name"]: v for v in json.loads((args.study / "results.json").read_text())["variants"]}
    vllm = {v["name"]: v for v in json.loads((study / "results.json").read_text())["variants"]}
    rows = []
    for name, ours in vllm.items():
        theirs = hf[name]["metrics"]
        metrics = ours["metrics"]
        if not metrics.get("perplexity"):
            rows.append(f"| {name} | {metrics.get('errors')} | | | | | | |")
            continue
        ppl_v, ppl_h = metrics["perplexity"], theirs["perplexity"]
        ratio = ppl_v["perplexity"]["estimate"] / ppl_h["perplexity"]["estimate"]
        div_v, div_h = metrics.get("divergence"), theirs.get("divergence")
        kl = (
            f"{interval(div_h['kl_mean'], digits=4)} | {interval(div_v['kl_mean'], digits=4)} | "
            f"{div_h['top1_agreement']['estimate']:.3f} / "
            f"{div_v['top1_agreement']['estimate']:.3f}"
            if div_v and div_h
            else "– | – | –"
        )
        texts_h = [item["text"] for item in theirs["generations"]["items"]]
        texts_v = [item["text"] for item in metrics["generations"]["items"]]
        same = sum(a.strip() == b.strip() for a, b in zip(texts_h, texts_v, strict=True))
        rows.append(
            f"| {name} | {interval(ppl_h['perplexity'])} | {interval(ppl_v['perplexity'])} | "
            f"{ratio:.4f} | {kl} | {same}/{len(texts_h)} |"
        )
    lines = [
        "# Quality through vLLM against quality through transformers, same artifacts",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {os.cpu_count()} logical cores; vLLM env: `{python}`",
        f"- hf figures: `{args.study}/results.json`; vLLM figures: `quantbench run --backend "
        "vllm --metrics perplexity,divergence,generations` on copies of its artifacts, "
        + (
            f"{run_s:.0f} s (engine start-ups included)"
            if args.reuse is None
            else f"resumed in `{args.reuse}` ({run_s:.0f} s)"
        ),
        "- same corpus windows (16,384 tokens), same 48 prompts, greedy decoding; each "
        "backend's KL is against its own baseline's top-256 reference",
        "",
        "| variant | perplexity, hf | perplexity, vLLM | ratio | KL mean, hf | KL mean, vLLM "
        "| top-1 agreement, hf / vLLM | same greedy text |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"work folder: {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
