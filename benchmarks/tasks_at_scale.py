"""Task accuracy at the scale that resolves differences: tasks through vLLM against
transformers, and the full-size task study.

    .venv/bin/python benchmarks/tasks_at_scale.py --compare-backends --limit 100 [--tasks gsm8k]
        [--schemes bf16,w8a8-int8]
    .venv/bin/python benchmarks/tasks_at_scale.py --full [--study DIR]

`--compare-backends`: the built-in model's variants (`--schemes`, bf16 and w8a8-int8 by
default) run the same task items (the first `--limit` of each task, chat template on, as by
default) through the hf backend and through the vllm backend (`--tasks-backend`), in one
study folder, one after the other, nothing else running. For each task and variant it
writes the items per second of each backend (items over the task's own scoring time, engine
start and model load apart) and how many items scored the same on both, listing every
disagreement with both answers.

`--full`: bf16, fp8-dynamic, w4a16-gptq and w8a8-int8 through the vllm backend on every item
of GSM8K (1,319), IFEval (541) and HumanEval+ (164), and 100 questions per subject of
MMLU-Pro (1,400), chat template on; the paired table and the wall time per task and variant.
It runs for hours on a 2-core CPU and is resumable: run the same command again after a kill
and every finished chunk of items is kept.

Both need `quantbench env create vllm` and the real data in ../shared/data (`--data`). Run by
hand on a quiet machine; results go to benchmarks/results/tasks_at_scale.md, each mode in
its own section, with the command and the CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from machine import cpu_class
from sections import write_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "tasks_at_scale.md"
HEADING = "# Task accuracy at scale\n\n"
DATA = ROOT.parent / "shared" / "data"
MAX_MODEL_LEN = 4096
"""vLLM's context for task stages: 5-shot MMLU-Pro prompts with the chat template run past
the default 2,048 (transformers takes the model's 8,192), and a cut prompt is another item."""


def run_study(study: dict[str, Any], folder: Path, log: Path, failures_ok: bool = False) -> float:
    """`quantbench run --config` on `study`; the wall time, seconds. With `failures_ok`, a
    run whose variants failed a metric (exit 1: fp8-dynamic where vLLM cannot load it) is
    taken, and the reasons are read from results.json."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"study-{log.stem}.yaml"
    config.write_text(yaml.safe_dump(study))
    command = [sys.executable, "-m", "quantbench", "run", "--config", str(config)]
    started = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if done.returncode not in ((0, 1) if failures_ok else (0,)):
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}); see {log}")
    return time.perf_counter() - started


def study_file(
    out: Path, schemes: list[str], tasks: list[str], limit: int | None, backend: str, data: Path
) -> dict[str, Any]:
    return {
        "schemes": schemes,
        "out": str(out),
        "execution": {"max_parallel": 1},
        "evaluation": {
            "metrics": [],
            "tasks_backend": backend,
            "vllm": {"max_model_len": MAX_MODEL_LEN},
            "tasks": {
                "names": tasks,
                "limit": limit,
                "data_dir": str(data),
                "allow_code_execution": "humaneval_plus" in tasks,
            },
        },
    }


def task_stages(out: Path) -> list[dict[str, Any]]:
    """Every finished task stage of the study folder: variant, task, backend, record,
    stage wall time and the items."""
    stages = []
    for manifest_path in sorted((out / "stages").glob("tasks.*/*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        items = json.loads((manifest_path.parent / "items.json").read_text())["items"]
        record = manifest["record"]
        stages.append(
            {
                "variant": manifest["variant"],
                "task": record["task"],
                "backend": record["settings"].get("backend", {}).get("name", "?"),
                "record": record,
                "stage_s": manifest.get("wall_s"),
                "items": {item["id"]: item for item in items},
            }
        )
    return stages


def compare_backends(args: argparse.Namespace) -> None:
    out = Path(args.study)
    tasks = args.tasks.split(",")
    schemes = args.schemes.split(",")
    quantize = study_file(out, schemes, [], None, "hf", Path(args.data))
    quantize["evaluation"].pop("tasks")
    run_study(quantize, out, out / "quantize.log")  # apart: nothing runs beside the tasks
    walls = {}
    for backend in ("hf", "vllm"):
        study = study_file(out, schemes, tasks, args.limit, backend, Path(args.data))
        walls[backend] = run_study(study, out, out / f"{backend}.log")
        print(f"{backend}: {walls[backend]:.0f} s", flush=True)
    stages = [s for s in task_stages(out) if s["record"]["settings"].get("limit") == args.limit]
    found = {(s["task"], s["variant"], s["backend"]): s for s in stages}
    lines = [
        f"Command: `.venv/bin/python benchmarks/tasks_at_scale.py --compare-backends "
        f"--limit {args.limit} --tasks {args.tasks} --schemes {args.schemes}`",
        "",
        f"Machine: {cpu_class()}; {dt.date.today().isoformat()}; each run quantized nothing "
        f"(done before) and ran one stage at a time (`--jobs 1`): hf {walls['hf']:.0f} s, "
        f"vllm {walls['vllm']:.0f} s.",
        "",
        "Items per second are a task's items over its own scoring time (the record's `wall_s`:"
        " lm-eval's calls, after the model is loaded or the engine started); the stage column"
        " adds loading and, for vLLM, the engine start.",
        "",
        "| task | variant | items | hf items/s | vllm items/s | vllm / hf | hf stage s "
        "| vllm stage s | hf acc % | vllm acc % | same score |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    disagreements = []
    for task in tasks:
        for variant in schemes:
            hf, vllm = found.get((task, variant, "hf")), found.get((task, variant, "vllm"))
            if hf is None or vllm is None:
                lines.append(
                    f"| {task} | {variant} | missing: hf {hf is not None}, vllm "
                    f"{vllm is not None} |"
                )
                continue
            n = hf["record"]["n_items"]
            rate = {
                b: s["record"]["n_items"] / s["record"]["wall_s"]
                for b, s in (("hf", hf), ("vllm", vllm))
            }
            if set(hf["items"]) != set(vllm["items"]):
                lines.append(f"| {task} | {variant} | the backends ran different items |")
                continue
            same = [i for i in hf["items"] if hf["items"][i]["score"] == vllm["items"][i]["score"]]
            prompts_equal = all(
                hf["items"][i]["prompt_hash"] == vllm["items"][i]["prompt_hash"]
                for i in hf["items"]
            )
            mark = "" if prompts_equal else " PROMPTS DIFFER"
            lines.append(
                f"| {task} | {variant} | {n} | {rate['hf']:.3f} | {rate['vllm']:.3f} | "
                f"{rate['vllm'] / rate['hf']:.1f}x | {hf['stage_s']:.0f} | {vllm['stage_s']:.0f} | "
                f"{100 * hf['record']['accuracy']['estimate']:.1f} | "
                f"{100 * vllm['record']['accuracy']['estimate']:.1f} | "
                f"{len(same)}/{n} ({100 * len(same) / n:.1f}%){mark} |"
            )
            for item_id in sorted(set(hf["items"]) - set(same)):
                a, b = hf["items"][item_id], vllm["items"][item_id]
                disagreements.append(
                    f"| {task} | {variant} | {item_id} | {a['score']:g} / {b['score']:g} | "
                    f"{_cell(a['extracted'])} / {_cell(b['extracted'])} | "
                    f"{_first_difference(a['response'], b['response'])} |"
                )
    lines += [
        "",
        "Disagreements (score hf / vllm; lm-eval's extracted answers; where the two greedy "
        "responses first differ, in characters of the response):",
        "",
        "| task | variant | item | score | extracted | responses first differ at |",
        "|---|---|---|---|---|---|",
        *disagreements,
        "",
    ]
    section = f"compare-backends-limit-{args.limit}"
    write_section(RESULTS, section, "\n".join(lines) + "\n", HEADING)


def _cell(text: str) -> str:
    return "`" + str(text).replace("|", "\\|").replace("`", "'")[:60] + "`"


def _first_difference(a: str, b: str) -> str:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return str(index)
    return "one is a prefix of the other" if len(a) != len(b) else "identical"


FULL_PARTS = [
    ("whole", ["gsm8k", "ifeval", "humaneval_plus"], None),
    ("mmlu_pro", ["mmlu_pro"], 1400),
]
"""The full study's two runs: every item of three tasks, and 1,400 MMLU-Pro questions (100
per subject)."""


def in_full_study(stage: dict[str, Any]) -> bool:
    """Whether a finished task stage belongs to the full study, not to a `--compare-backends`
    or agreement run that shares its folder (same tasks through vLLM, another limit)."""
    if stage["backend"] != "vllm":
        return False
    return any(
        stage["task"] in tasks and stage["record"]["settings"].get("limit") == limit
        for _, tasks, limit in FULL_PARTS
    )


def full_study(args: argparse.Namespace) -> None:
    out = Path(args.study)
    schemes = ["bf16", "fp8-dynamic", "w4a16-gptq", "w8a8-int8"]
    data = Path(args.data)
    rows, failures = [], []
    from quantbench.report.markdown import escape_cell
    from quantbench.report.tasks_table import TASK_HEADERS, task_cells, task_rows
    from quantbench.study_files import load_results

    if args.progress_only:
        progress = full_progress(out, [t for _, ts, _ in FULL_PARTS for t in ts])
        write_section(RESULTS, "full-progress", progress, HEADING)
        return
    for name, tasks, limit in FULL_PARTS:
        study = study_file(out, schemes, tasks, limit, "vllm", data)
        run_study(study, out, out / f"full-{name}.log", failures_ok=True)
        results = load_results(out)
        rows += task_rows(results)
        failures += [
            f"- {variant.name}, {metric}: {why}"
            for variant in results.variants
            for metric, why in variant.metrics.errors.items()
        ]
    stages = sorted(
        (s for s in task_stages(out) if in_full_study(s)), key=lambda s: (s["task"], s["variant"])
    )
    total_s = sum(s["record"]["wall_s"] for s in stages)
    lines = [
        "Command: `.venv/bin/python benchmarks/tasks_at_scale.py --full`",
        "",
        f"Machine: {cpu_class()}; {dt.date.today().isoformat()}; scoring time of all task "
        f"stages {total_s / 3600:.1f} h (summed over resumed runs, engine start-ups excluded)",
        "",
        "| " + " | ".join(TASK_HEADERS) + " |",
        "|" + "---|" * len(TASK_HEADERS),
        *("| " + " | ".join(escape_cell(c) for c in task_cells(r)) + " |" for r in rows),
        "",
        "Variants without task figures, and why:" if failures else "Every variant ran.",
        *failures,
    ]
    lines += [
        "",
        "| task | variant | items | scoring s | items/s |",
        "|---|---|---:|---:|---:|",
    ]
    for stage in stages:
        record = stage["record"]
        lines.append(
            f"| {stage['task']} | {stage['variant']} | {record['n_items']} | "
            f"{record['wall_s']:.0f} | {record['n_items'] / record['wall_s']:.3f} |"
        )
    write_section(RESULTS, "full", "\n".join(lines) + "\n", HEADING)


def _percent(interval: dict[str, float]) -> str:
    return (
        f"{100 * interval['estimate']:.1f} "
        f"[{100 * interval['low']:.1f}, {100 * interval['high']:.1f}]"
    )


def full_progress(out: Path, tasks: list[str]) -> str:
    """Where an unfinished full-size study stands: finished task stages (items, accuracy,
    scoring time) and the chunks saved by stages still under way."""
    lines = [
        "Command: `.venv/bin/python benchmarks/tasks_at_scale.py --full --progress-only` "
        "(the full study was stopped before its end; rerunning `--full` resumes it)",
        "",
        f"Machine: {cpu_class()}; {dt.date.today().isoformat()}",
        "",
        "| task | variant | state | items | accuracy % [95% CI] | scoring s | items/s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for stage in task_stages(out):
        record = stage["record"]
        if not in_full_study(stage):
            continue
        lines.append(
            f"| {stage['task']} | {stage['variant']} | done | {record['n_items']} | "
            f"{_percent(record['accuracy'])} | {record['wall_s']:.0f} | "
            f"{record['n_items'] / record['wall_s']:.3f} |"
        )
    for task in tasks:
        for folder in sorted((out / "stages" / f"tasks.{task}").glob(".partial-*")):
            pieces = [json.loads(p.read_text()) for p in sorted(folder.glob("chunk-*.json"))]
            if not pieces:
                continue
            items = sum(sum(p["counts"].values()) for p in pieces)
            right = sum(i["score"] for p in pieces for i in p["items"])
            seconds = sum(p.get("scoring_s", 0.0) for p in pieces)
            lines.append(
                f"| {task} | (key {folder.name.removeprefix('.partial-')}) | under way | "
                f"{items} saved | {100 * right / items:.1f} | {seconds:.0f} | "
                f"{items / seconds:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--compare-backends", action="store_true")
    mode.add_argument("--full", action="store_true")
    parser.add_argument(
        "--progress-only",
        action="store_true",
        help="with --full: write where an unfinished full study stands, run nothing",
    )
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--tasks", default="gsm8k")
    parser.add_argument("--schemes", default="bf16,w8a8-int8", help="with --compare-backends")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--study", default=str(ROOT.parent / "tasks-at-scale-study"))
    args = parser.parse_args()
    if args.compare_backends:
        compare_backends(args)
    else:
        full_study(args)


if __name__ == "__main__":
    main()
