"""Issue 7's acceptance runs on the built-in model: Ray versus local, and a study matrix.

    .venv/bin/python benchmarks/scale_out.py [--out FILE] [--work DIR]

1. The default study with `--executor local`, then with `--executor ray` on a local Ray
   cluster of two nodes started here (a head with no CPUs, so every task runs on the
   second node); every quality figure in results.json must be identical (speed and
   times aside, they are measurements of a noisy machine).
2. A matrix study: bf16 + w4a16-gptq × group size {32, 64} × calibration samples {16, 64}.
   It must prepare 2 calibration stages (shared by both group sizes), quantize and
   evaluate the baseline once, and its report must show the two axes.

Run by hand (about an hour on 2 cores); the output is committed under results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

MATRIX = {
    "schemes": ["bf16", {"scheme": "w4a16-gptq", "group_size": [32, 64]}],
    "calibration": {"num_samples": [16, 64]},
    "evaluation": {"metrics": ["size", "perplexity", "divergence", "generations"]},
}


def run(arguments: list[str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as output:
        subprocess.run(
            [sys.executable, "-m", "quantbench", *arguments],
            stdout=output,
            stderr=subprocess.STDOUT,
            check=True,
        )
    return time.perf_counter() - started


def quality(out: Path) -> dict[str, dict[str, Any]]:
    """Every figure that must not depend on where the work ran."""
    results = json.loads((out / "results.json").read_text())
    figures: dict[str, dict[str, Any]] = {}
    for variant in results["variants"]:
        metrics = variant["metrics"]
        generations = metrics.get("generations") or {}
        figures[variant["name"]] = {
            "disk_bytes": variant["disk_bytes"],
            "perplexity": metrics["perplexity"]["perplexity"],
            "tokens_sha256": metrics["perplexity"]["tokens_sha256"],
            "kl_mean": metrics["divergence"]["kl_mean"],
            "kl_p99": metrics["divergence"]["kl_p99"],
            "top1_agreement": metrics["divergence"]["top1_agreement"],
            "generations_exact_match": generations.get("exact_match_rate"),
            "generated_text": [item.get("text") for item in generations.get("items", [])],
        }
    return figures


def stage_counts(out: Path) -> dict[str, int]:
    stages = out / "stages"
    return {
        d.name: sum(1 for k in d.iterdir() if (k / "manifest.json").is_file())
        for d in sorted(stages.iterdir())
        if d.is_dir()
    }


def ray_versus_local(work: Path, lines: list[str]) -> None:
    from ray.cluster_utils import Cluster

    local_s = run(["run", "--out", str(work / "local")], work / "local.log")
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=os.cpu_count() or 2)
    address = str(cluster.address)
    try:
        ray_s = run(
            ["run", "--out", str(work / "ray"), "--executor", "ray", "--ray-address", address],
            work / "ray.log",
        )
    finally:
        cluster.shutdown()
    local, ray = quality(work / "local"), quality(work / "ray")
    executor = json.loads((work / "ray" / "results.json").read_text())["provenance"]["executor"]
    lines += [
        "## 1. Default study: `--executor ray` versus `--executor local`",
        "",
        f"- local: {local_s:,.0f} s; ray: {ray_s:,.0f} s "
        f"(cluster: {executor['nodes']} nodes, {executor['cluster_resources']}, "
        f"ray {executor['ray_version']})",
        f"- quality figures identical: **{local == ray}**",
        "",
        "| variant | disk bytes | perplexity (local / ray) | KL mean (local / ray) "
        "| top-1 (local / ray) | generations identical |",
        "|---|---:|---|---|---|---|",
    ]
    for name, figures in local.items():
        other = ray.get(name, {})

        def pair(
            key: str, digits: int, mine: dict[str, Any] = figures, other: dict[str, Any] = other
        ) -> str:
            theirs = other.get(key) or {"estimate": float("nan")}
            return f"{mine[key]['estimate']:.{digits}f} / {theirs['estimate']:.{digits}f}"

        lines.append(
            f"| {name} | {figures['disk_bytes']:,} | {pair('perplexity', 6)} | "
            f"{pair('kl_mean', 6)} | {pair('top1_agreement', 6)} | "
            f"{figures['generated_text'] == other.get('generated_text')} |"
        )
    differing = sorted(
        f"{name}.{key}"
        for name, figures in local.items()
        for key, value in figures.items()
        if ray.get(name, {}).get(key) != value
    )
    lines += ["", f"- differing figures: {', '.join(differing) or 'none'}", ""]


def matrix(work: Path, lines: list[str]) -> None:
    config = work / "matrix.yaml"
    config.write_text(yaml.safe_dump({**MATRIX, "out": str(work / "matrix")}))
    plan_s = run(["plan", "--config", str(config)], work / "matrix-plan.log")
    run_s = run(["run", "--config", str(config)], work / "matrix.log")
    out = work / "matrix"
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    axes_section = report[report.index("## Study axes") :].split("\n## ")[0]
    lines += [
        "## 2. Matrix study: bf16 + w4a16-gptq × group size {32, 64} × samples {16, 64}",
        "",
        "```yaml",
        yaml.safe_dump(MATRIX, sort_keys=False).strip(),
        "```",
        "",
        f"- `quantbench plan`: {plan_s:.1f} s; `quantbench run`: {run_s:,.0f} s",
        f"- variants: {', '.join(v['name'] for v in results['variants'])}",
        f"- finished stages in the output folder: {stage_counts(out)}",
        f"- calibration records: {[c['num_samples'] for c in results['calibrations']]}",
        "",
        "The report's axes section, as written to report.md:",
        "",
        axes_section.strip().replace("## Study axes", "### Study axes"),
        "",
        "`quantbench plan` output:",
        "",
        "```",
        (work / "matrix-plan.log").read_text().strip(),
        "```",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "scale_out.md"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/quantbench-scale-out"))
    parser.add_argument("--only", choices=["ray", "matrix"], default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    lines = [
        "# Scale-out acceptance runs (issue 7)",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}; commit {commit}",
        f"- machine: {os.cpu_count()} logical cores; built-in model; no network",
        "",
    ]
    if args.only in (None, "ray"):
        ray_versus_local(args.work, lines)
    if args.only in (None, "matrix"):
        matrix(args.work, lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
