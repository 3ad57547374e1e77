"""Where GPTQ's dependence on torch's thread count comes from.

    .venv/bin/python benchmarks/gptq_threads.py --model STUDY/artifacts/bf16 [--dtype bfloat16]

The same GPTQ (llm-compressor's GPTQModifier, INT4 weights in groups of 64, `lm_head` kept)
on the same 8 calibration sequences of 128 token ids, in a fresh process per run:

- 1 thread, twice: does a fixed thread count repeat bit for bit?
- 2 threads: does the thread count change the weights?
- 2 threads with the Cholesky factorizations and inverse of the Hessians
  (`torch.linalg.cholesky_ex`, `torch.cholesky_inverse`, `torch.linalg.cholesky`, as
  llm-compressor's `modifiers/gptq/helpers.py` calls them; MKL's LAPACK computes them) held
  to one thread, as quantbench's quantization worker holds them
  (`quantbench.process.child.factorizations_on_one_thread`): is that where the difference
  enters, and does the hold remove it?

Each run hashes every tensor of the quantized model's state dict; the table gives the hash,
how many tensors differ from the first run, and the largest difference. Bitwise identity is
not a timing, so a busy machine does not change the answer, only how long it takes. The
calibration ids are drawn from a seeded generator: the question is determinism, not quality.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import cpu_class

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gptq_threads.md"
RUNS = [("1 thread", 1, False), ("1 thread, again", 1, False), ("2 threads", 2, False)]
RUNS += [("2 threads, factorizations held to 1 thread as quantbench holds them", 2, True)]


def quantize(model_dir: str, dtype: str, threads: int, pin_cholesky: bool, out: str) -> None:
    """One GPTQ run in this process; the state dict goes to `out`."""
    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM

    from quantbench.process.child import factorizations_on_one_thread

    torch.set_num_threads(threads)
    held = factorizations_on_one_thread() if pin_cholesky else contextlib.nullcontext()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    ids = torch.randint(100, 40000, (8, 128), generator=torch.Generator().manual_seed(0))
    dataset = Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()}
    )
    weights = QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=64
    )
    recipe = GPTQModifier(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
        ignore=["lm_head"],
    )
    with held:
        oneshot(
            model=model,
            dataset=dataset,
            recipe=recipe,
            max_seq_length=128,
            num_calibration_samples=8,
            shuffle_calibration_samples=False,
        )
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)


def digest(state: dict) -> str:  # type: ignore[type-arg]
    """The first 16 hex digits of a SHA-256 over every tensor's name and raw bytes."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].contiguous().view(-1).view(dtype=torch.uint8).numpy())
    return h.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a bf16 model folder")
    parser.add_argument("--dtype", default="bfloat16", help="the dtype GPTQ computes in")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # threads pin out
    args = parser.parse_args()
    if args.one:
        threads, pin, out = args.one
        quantize(args.model, args.dtype, int(threads), pin == "pin", out)
        return
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        states = []
        for label, threads, pin in RUNS:
            out = str(Path(scratch) / f"{len(states)}.pt")
            command = [sys.executable, __file__, "--model", args.model, "--dtype", args.dtype]
            command += ["--one", str(threads), "pin" if pin else "plain", out]
            subprocess.run(command, check=True, capture_output=True)
            states.append(torch.load(out))
            first, state = states[0], states[-1]
            differ = [k for k in first if not torch.equal(first[k], state[k])]
            largest = max(
                ((first[k].float() - state[k].float()).abs().max().item() for k in differ),
                default=0.0,
            )
            rows.append(
                f"| {label} | {digest(state)} | {len(differ)} of {len(state)} | {largest:.4g} |"
            )
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# GPTQ and torch's thread count",
            "",
            f"Command: `.venv/bin/python benchmarks/gptq_threads.py --model STUDY/artifacts/bf16 "
            f"--dtype {args.dtype}` (the built-in model's bf16 baseline)",
            "",
            f"Machine: {cpu_class()}; {dt.date.today().isoformat()}; torch {torch.__version__}",
            "",
            "| run | state-dict hash | tensors differing from the first run | largest difference |",
            "|---|---|---:|---:|",
            *rows,
            "",
        ]
    )
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
