"""Evaluation throughput (perplexity + divergence) against the raw forward pass, in one run.

    .venv/bin/python benchmarks/eval_throughput.py [--model M] [--tokens N] [--out FILE]

Both figures come from the same process, model and windows, so their ratio is meaningful on
a shared, noisy machine; each is the median of several repeats after a warm-up. The
evaluation path is quantbench's own scores stage (full-vocabulary log-softmax, top-k
reference lookup, KL, top-1 agreement, reference-token probability change) as a non-baseline
variant runs it, so it includes reading the stored reference. Target: ≥ 80% of raw.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from quantbench.backends.hf import HFBackend
from quantbench.config import EvaluationConfig
from quantbench.corpus import builtin_eval_text, make_windows
from quantbench.metrics.base import EvalContext
from quantbench.metrics.scores import ScoresStage
from quantbench.models import resolve_model


def raw_forward_tok_s(model: torch.nn.Module, windows: list[list[int]], batch: int) -> float:
    """Tokens per second of plain batched forwards, logits materialized, nothing else."""
    started = time.perf_counter()
    tokens = 0
    with torch.inference_mode():
        for start in range(0, len(windows), batch):
            ids = torch.tensor(windows[start : start + batch])
            model(ids).logits.float()
            tokens += ids.numel()
    return tokens / (time.perf_counter() - started)


def _joined(values: list[float]) -> str:
    return ", ".join(f"{x:,.0f}" for x in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=8192, help="scored-token budget")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "eval_throughput.md"
    )
    args = parser.parse_args()

    model = resolve_model(args.model)
    config = EvaluationConfig()
    backend = HFBackend(device="cpu", score_batch_size=4)
    load = backend.load(model.path)
    tokenizer = backend.tokenizer()
    ids = list(tokenizer(builtin_eval_text(), add_special_tokens=False)["input_ids"])
    windows = make_windows(ids, config.corpus.window, config.corpus.stride, args.tokens)
    hf_model = backend._loaded_model()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reference_dir = root / "reference"
        reference_dir.mkdir()

        def context(work: Path, is_baseline: bool) -> EvalContext:
            return EvalContext(
                variant="bench",
                is_baseline=is_baseline,
                artifact=model.path,
                config=config,
                work=work,
                own={},
                baseline={"scores": reference_dir},
                windows=windows,
                progress=lambda *_: None,
                backend_factory=lambda: (backend, load),
                divergence_method="topk_tail",  # one forward per variant: the top-k method
            )

        ScoresStage().compute(context(reference_dir, True))  # builds the reference (and warms up)
        raw_forward_tok_s(hf_model, windows.windows[:4], 4)  # warm-up
        raw, evaluated = [], []
        for repeat in range(args.repeats):
            raw.append(raw_forward_tok_s(hf_model, windows.windows, 4))
            work = root / f"variant-{repeat}"
            work.mkdir()
            summary = ScoresStage().compute(context(work, False))
            evaluated.append(summary.tokens_per_s)  # type: ignore[attr-defined]
    raw_median = statistics.median(raw)
    eval_median = statistics.median(evaluated)
    ratio = eval_median / raw_median
    machine = platform.processor() or platform.machine()
    lines = [
        "# Evaluation throughput vs raw forward",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- model: {args.model} ({load.dtype}, {load.device}, {torch.get_num_threads()} threads)",
        f"- machine: {machine}, Python {platform.python_version()}, torch {torch.__version__}",
        f"- windows: {len(windows.windows)} × {config.corpus.window} tokens, "
        f"{windows.n_targets} scored targets, top_k {config.corpus.top_k}",
        f"- repeats: {args.repeats} (median), raw and evaluation interleaved in one process",
        "",
        "| path | tokens/s (median) | all repeats |",
        "|---|---:|---|",
        f"| raw forward (logits only) | {raw_median:,.0f} | {_joined(raw)} |",
        f"| perplexity + divergence pass | {eval_median:,.0f} | {_joined(evaluated)} |",
        "",
        f"**Ratio: {ratio:.0%}** of the raw forward throughput (target ≥ 80%).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
