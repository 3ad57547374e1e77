"""quantbench against the plain script a user would write for the same work, and the default
study under the default schedule against `--jobs 1`.

    .venv/bin/python benchmarks/vs_script.py script [--rounds 3]
    .venv/bin/python benchmarks/vs_script.py default-study

`script`: the work is bf16 + fp8-dynamic + w4a16-gptq (group 64) + w8a8-int8 on the built-in
model, 41 calibration texts x 512 tokens, WikiText-2 perplexity on 16,384 tokens in
512-token windows, one 64-token greedy generation per variant, everything computed in
bfloat16 (the script loads every model in bfloat16; quantbench is given `--dtype bfloat16`
for its evaluation and calibrates in bfloat16 on a CPU with bf16 matmuls). This file writes
the plain sequential script (llm-compressor's `oneshot` and transformers, called directly,
one variant after another in one process: quantize, save compressed, load the artifact,
score, generate) and the equivalent `quantbench run`, and runs them back to back for
`--rounds` rounds, the order alternated, each from an empty output folder (the built-in
model's conversion is cached for both). The calibration texts are written to one file both
read: 41 rows of at least 512 tokens, so both truncate the same 41 samples to 512 tokens.

`default-study`: the default study (`quantbench run` with no flags) with `--jobs 1` and with
the default schedule, from empty output folders; its quality figures (perplexity, KL) and
speed medians side by side, with the thread count of every stage.

Run by hand on a quiet machine (nothing else running: concurrent work ruins the timings);
the results go to benchmarks/results/vs_script.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import cpu_class, widest_isa
from sections import write_section

RESULTS = Path(__file__).parent / "results" / "vs_script.md"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WIKITEXT = DATA / "wikitext2" / "wikitext-2-raw-v1.test.jsonl"
ALPACA = DATA / "alpaca_sample" / "alpaca_data_sample.json"
CALIBRATION_SAMPLES = 41
SEQ_LEN = 512
EVAL_TOKENS = 16384
NEW_TOKENS = 64
PROMPT = "Explain in two sentences why the sky is blue."

SCRIPT = '''"""The plain sequential script: quantize, save, evaluate, one variant after another."""
import json, math, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier
from datasets import Dataset

MODEL, CALIBRATION, CORPUS, PROMPT, OUT = sys.argv[1:6]
SEQ_LEN, EVAL_TOKENS, NEW_TOKENS = {seq_len}, {eval_tokens}, {new_tokens}
started = time.perf_counter()
tokenizer = AutoTokenizer.from_pretrained(MODEL)
rows = [json.loads(line)["text"] for line in open(CALIBRATION)]
ids = [tokenizer(text)["input_ids"][:SEQ_LEN] for text in rows]
calibration = Dataset.from_dict({{"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]}})
text = "\\n\\n".join(json.loads(line)["text"] for line in open(CORPUS))
tokens = tokenizer(text, return_tensors="pt")["input_ids"][0][: EVAL_TOKENS + 1]
windows = [tokens[i : i + SEQ_LEN] for i in range(0, EVAL_TOKENS, SEQ_LEN)]
chat = tokenizer.apply_chat_template(
    [{{"role": "user", "content": PROMPT}}], add_generation_prompt=True, return_tensors="pt",
    return_dict=True,
)

W4A16_G64 = QuantizationScheme(
    targets=["Linear"],
    weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=64
    ),
)
RECIPES = {{
    "fp8-dynamic": [
        QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"])
    ],
    "w4a16-gptq": [GPTQModifier(config_groups={{"group_0": W4A16_G64}}, ignore=["lm_head"])],
    "w8a8-int8": [
        SmoothQuantModifier(smoothing_strength=0.8),
        GPTQModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"]),
    ],
}}


def evaluate(path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for window in windows:
            logits = model(window[None]).logits[0, :-1].float()
            nll += torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum").item()
            count += len(window) - 1
        out = model.generate(**chat, max_new_tokens=NEW_TOKENS, do_sample=False)
    reply = tokenizer.decode(out[0, chat["input_ids"].shape[1]:], skip_special_tokens=True)
    return math.exp(nll / count), reply


results = {{"bf16": evaluate(MODEL)}}
for name, recipe in RECIPES.items():
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.bfloat16)
    kwargs = {{}} if name == "fp8-dynamic" else dict(
        dataset=calibration, max_seq_length=SEQ_LEN, num_calibration_samples=len(ids)
    )
    oneshot(model=model, recipe=recipe, **kwargs)
    model.save_pretrained(f"{{OUT}}/{{name}}", save_compressed=True)
    tokenizer.save_pretrained(f"{{OUT}}/{{name}}")
    del model
    results[name] = evaluate(f"{{OUT}}/{{name}}")
for name, (ppl, reply) in results.items():
    print(json.dumps({{"variant": name, "perplexity": ppl, "reply": reply[:80]}}))
print(json.dumps({{"wall_s": time.perf_counter() - started,
                  "calibration_tokens": sum(len(i) for i in ids)}}))
'''


def builtin_model() -> Path:
    from quantbench.models import resolve_model

    return Path(resolve_model("smollm2-135m-instruct").path)


def write_inputs(folder: Path, model: Path) -> tuple[Path, Path]:
    """The calibration texts (41 rows of at least 512 tokens, from the Alpaca sample) and
    the one-prompt generation suite, both read by the script and by quantbench."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    records = json.loads(ALPACA.read_text())
    texts: list[str] = []
    chunk = ""
    for record in records:
        chunk += "\n\n".join(
            filter(None, (record["instruction"], record["input"], record["output"]))
        )
        chunk += "\n\n"
        if len(tokenizer(chunk)["input_ids"]) >= SEQ_LEN:
            texts.append(chunk.strip())
            chunk = ""
            if len(texts) == CALIBRATION_SAMPLES:
                break
    calibration = folder / "calibration.jsonl"
    calibration.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    prompts = folder / "prompts.jsonl"
    prompts.write_text(
        json.dumps(
            {"id": "sky", "category": "explain", "messages": [{"role": "user", "content": PROMPT}]}
        )
        + "\n"
    )
    return calibration, prompts


def quantbench_command(out: Path, calibration: Path, prompts: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "quantbench", "run",
        "--calibration", str(calibration),
        "--calibration-samples", str(CALIBRATION_SAMPLES),
        "--calibration-seq-len", str(SEQ_LEN),
        "--metrics", "perplexity,generations",
        "--dtype", "bfloat16",
        "--corpus", str(WIKITEXT),
        "--max-tokens", str(EVAL_TOKENS),
        "--prompts", str(prompts),
        "--no-default-constraints",
        "--out", str(out),
        *extra,
    ]  # fmt: skip


def group_size_64(folder: Path) -> Path:
    config = folder / "study.yaml"
    config.write_text(
        "schemes:\n- bf16\n- fp8-dynamic\n- {scheme: w4a16-gptq, group_size: 64}\n- w8a8-int8\n"
    )
    return config


def timed(command: list[str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as handle:
        subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def perplexities(out: Path) -> dict[str, float]:
    results = json.loads((out / "results.json").read_text())
    return {
        v["name"]: v["metrics"]["perplexity"]["perplexity"]["estimate"]
        for v in results["variants"]
        if v["metrics"].get("perplexity")
    }


def run_script(args: argparse.Namespace) -> None:
    model = builtin_model()
    with tempfile.TemporaryDirectory(prefix="vs-script-") as tmp:
        folder = Path(tmp)
        calibration, prompts = write_inputs(folder, model)
        script = folder / "plain_script.py"
        script.write_text(
            SCRIPT.format(seq_len=SEQ_LEN, eval_tokens=EVAL_TOKENS, new_tokens=NEW_TOKENS)
        )
        RESULTS.with_name("vs_script_plain_script.txt").write_text(script.read_text())
        config = group_size_64(folder)
        rounds: list[dict[str, Any]] = []
        for index in range(args.rounds):
            order = ["script", "quantbench"] if index % 2 == 0 else ["quantbench", "script"]
            times: dict[str, float] = {}
            for who in order:
                out = folder / f"{who}-{index}"
                if who == "script":
                    out.mkdir()
                    command = [sys.executable, str(script), str(model), str(calibration),
                               str(WIKITEXT), PROMPT, str(out)]  # fmt: skip
                else:
                    command = quantbench_command(out, calibration, prompts, "--config", str(config))
                times[who] = timed(command, folder / f"{who}-{index}.log")
                print(f"round {index + 1} {who}: {times[who]:.1f} s", flush=True)
            script_lines = (folder / f"script-{index}.log").read_text().splitlines()
            script_ppl = {
                row["variant"]: row["perplexity"]
                for row in map(json.loads, (x for x in script_lines if x.startswith('{"variant"')))
            }
            qb = json.loads((folder / f"quantbench-{index}" / "results.json").read_text())
            rounds.append(
                {
                    **times,
                    "order": " then ".join(order),
                    "script_ppl": script_ppl,
                    "quantbench_ppl": perplexities(folder / f"quantbench-{index}"),
                    "calibration_tokens": qb["calibration"]["total_tokens"],
                    "schedule": qb["provenance"]["schedule"],
                }
            )
            write_script_results(rounds, cpu_class())  # after every round: partial is kept


def write_script_results(rounds: list[dict[str, Any]], machine: str) -> None:
    ratios = [r["quantbench"] / r["script"] for r in rounds]
    script_median = statistics.median(r["script"] for r in rounds)
    qb_median = statistics.median(r["quantbench"] for r in rounds)
    lines = [
        "# quantbench against the plain script, on the same work",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {machine}, Python {platform.python_version()}",
        f"- command: `.venv/bin/python benchmarks/vs_script.py script --rounds {len(rounds)}`",
        "- work: bf16 + fp8-dynamic + w4a16-gptq (group 64) + w8a8-int8 on the built-in model; "
        f"{CALIBRATION_SAMPLES} calibration texts x {SEQ_LEN} tokens "
        f"(quantbench's calibration stage: {rounds[0]['calibration_tokens']} tokens); "
        f"WikiText-2 perplexity on {EVAL_TOKENS} tokens; one {NEW_TOKENS}-token greedy "
        "generation per variant",
        "- the script, as run: [vs_script_plain_script.txt](vs_script_plain_script.txt)",
        "",
        "| round | order | script s | quantbench s | ratio |",
        "|---:|---|---:|---:|---:|",
    ]
    for index, (r, ratio) in enumerate(zip(rounds, ratios, strict=True)):
        lines.append(
            f"| {index + 1} | {r['order']} | {r['script']:.1f} | {r['quantbench']:.1f} | "
            f"{ratio:.3f} |"
        )
    lines += [
        "",
        f"**Median: script {script_median:.1f} s, quantbench {qb_median:.1f} s, ratio of "
        f"medians {qb_median / script_median:.3f}; per-round ratios "
        f"{min(ratios):.3f} to {max(ratios):.3f} (median {statistics.median(ratios):.3f}).**",
        "",
        "Perplexity (last round; the script scores non-overlapping 512-token windows and "
        "quantbench its corpus windows, so the figures agree closely but not exactly):",
        "",
        "| variant | script | quantbench |",
        "|---|---:|---:|",
    ]
    last = rounds[-1]
    for name, ppl in last["script_ppl"].items():
        theirs = next(  # quantbench names the variant by its options too (w4a16-gptq-g64)
            (v for k, v in last["quantbench_ppl"].items() if re.sub(r"-g\d+$", "", k) == name),
            float("nan"),
        )
        lines.append(f"| {name} | {ppl:.3f} | {theirs:.3f} |")
    lines += ["", "quantbench's schedule in the last round (seconds from the first job):", ""]
    lines += ["| job | threads | cores | start | end |", "|---|---:|---:|---:|---:|"]
    for job in last["schedule"]["jobs"]:
        threads = str(job["threads"]) if job["threads"] is not None else "default"
        cores = str(job.get("cores")) if job.get("cores") is not None else "any"
        for at, count in job.get("raised", []):  # cores lent when another job ended
            cores += f", {count} from {at}"
        lines.append(
            f"| {job['job']} | {threads} | {cores} | {job['started_s']} | {job['ended_s']} |"
        )
    section = "\n".join(lines) + "\n"
    write_section(RESULTS, f"script {widest_isa()}", section)


def run_default_study(args: argparse.Namespace) -> None:
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="vs-default-") as tmp:
        for label, extra in (("--jobs 1", ["--jobs", "1"]), ("default schedule", [])):
            out = Path(tmp) / label.replace(" ", "_")
            command = [sys.executable, "-m", "quantbench", "run", "--out", str(out), *extra]
            wall = timed(command, Path(tmp) / f"{out.name}.log")
            print(f"{label}: {wall:.1f} s", flush=True)
            results = json.loads((out / "results.json").read_text())
            threads: dict[tuple[str, str], str] = {}
            for variant in results["variants"]:
                quantization = variant.get("quantization") or {}
                threads[(variant["name"], "quantize")] = (
                    f"{quantization.get('torch_threads')} on {quantization.get('cores') or 'any'}"
                )
            for manifest in out.glob("stages/*/*/manifest.json"):  # stages/<kind>/<key>/
                stage = json.loads(manifest.read_text())
                if "metric" in stage:
                    count = f"{stage.get('threads')} on {stage.get('cores') or 'any'}"
                    if stage.get("cores_raised_to"):
                        count += f"->{stage['cores_raised_to']}"
                    threads[(stage["variant"], stage["metric"])] = count
            rows[label] = {"wall": wall, "results": results, "threads": threads}
    write_default_results(rows, cpu_class())


def _figures(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    figures: dict[str, dict[str, float | None]] = {}
    for v in results["variants"]:
        m = v["metrics"]
        speed = m.get("speed") or {}
        points = {p["batch_size"]: p for p in speed.get("points", [])}
        b1 = points.get(1)
        figures[v["name"]] = {
            "ppl": ((m.get("perplexity") or {}).get("perplexity") or {}).get("estimate"),
            "kl": ((m.get("divergence") or {}).get("kl_mean") or {}).get("estimate"),
            "tpot_b1_ms": b1["tpot_s"]["median"] * 1000 if b1 else None,
            "tok_s_max_b": max(p["throughput_tok_s"]["median"] for p in points.values())
            if points
            else None,
        }
    return figures


def write_default_results(rows: dict[str, dict[str, Any]], machine: str) -> None:
    serial, parallel = rows["--jobs 1"], rows["default schedule"]
    a, b = _figures(serial["results"]), _figures(parallel["results"])
    lines = [
        "# The default study: default schedule against --jobs 1",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {machine}, Python {platform.python_version()}",
        "- command: `.venv/bin/python benchmarks/vs_script.py default-study` "
        "(`quantbench run --out OUT --jobs 1`, then `quantbench run --out OUT`, each from an "
        "empty output folder, the model's conversion cached)",
        "",
        f"Wall time: `--jobs 1` {serial['wall']:.1f} s, default schedule {parallel['wall']:.1f} s "
        f"({parallel['wall'] / serial['wall']:.3f}x).",
        "",
        "| variant | figure | --jobs 1 | default | relative difference "
        "| threads on cores (1 / default) |",
        "|---|---|---:|---:|---:|---|",
    ]
    stage_of = {"ppl": "scores", "kl": "scores", "tpot_b1_ms": "speed", "tok_s_max_b": "speed"}
    for name in a:
        for figure in ("ppl", "kl", "tpot_b1_ms", "tok_s_max_b"):
            x, y = a[name][figure], b[name][figure]
            if x is None or y is None:
                continue
            diff = (y - x) / x if x else 0.0
            stage = stage_of[figure]
            quantize = (
                serial["threads"].get((name, "quantize")),
                parallel["threads"].get((name, "quantize")),
            )
            own = (serial["threads"].get((name, stage)), parallel["threads"].get((name, stage)))
            lines.append(
                f"| {name} | {figure} | {x:.6g} | {y:.6g} | {diff:+.4%} | "
                f"quantize {quantize[0]}/{quantize[1]}, {stage} {own[0]}/{own[1]} |"
            )
    write_section(RESULTS, f"default {widest_isa()}", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    script = sub.add_parser("script")
    script.add_argument("--rounds", type=int, default=3)
    sub.add_parser("default-study")
    args = parser.parse_args()
    if args.mode == "script":
        run_script(args)
    else:
        run_default_study(args)


if __name__ == "__main__":
    main()
