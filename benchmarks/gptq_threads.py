"""Where GPTQ's dependence on torch's thread count comes from.

    .venv/bin/python benchmarks/gptq_threads.py --model STUDY/artifacts/bf16 [--dtype bfloat16]
        [--samples 8 --seq-len 128]

The same GPTQ (llm-compressor's GPTQModifier, INT4 weights in groups of 64, `lm_head` kept)
on the same calibration sequences (8 of 128 token ids unless told), in a fresh process per run:

- 1 thread, twice: does a fixed thread count repeat bit for bit?
- 2 threads: does the thread count change the weights?
- 2 threads with the Cholesky factorizations and inverse of the Hessians
  (`torch.linalg.cholesky_ex`, `torch.cholesky_inverse`, `torch.linalg.cholesky`, as
  llm-compressor's `modifiers/gptq/helpers.py` calls them; MKL's LAPACK computes them) held
  to one thread by `torch.set_num_threads` around each call (`factorizations_on_one_thread`
  below): is that where the difference enters, does the hold remove it, and what does it
  cost?

Each run hashes every tensor of the quantized model's state dict; the table gives the hash,
how many tensors differ from the first run, the largest difference, and the seconds
`oneshot` took. Bitwise identity is not a timing, so a busy machine does not change the
hashes, only the seconds; compare seconds only within one run of this benchmark. The
calibration ids are drawn from a seeded generator: the question is determinism, not quality.
Results keep one section per CPU class (widest vector ISA).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from machine import cpu_class, widest_isa
from sections import write_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gptq_threads.md"
RUNS = [("1 thread", 1, False), ("1 thread, again", 1, False), ("2 threads", 2, False)]
RUNS += [("2 threads, factorizations held to 1 thread", 2, True)]
FACTORIZATIONS = (("linalg", "cholesky"), ("linalg", "cholesky_ex"), ("", "cholesky_inverse"))
"""The LAPACK calls of llm-compressor's GPTQ (module of `torch`, name)."""


@contextlib.contextmanager
def factorizations_on_one_thread() -> Iterator[None]:
    """torch's Cholesky factorization and inverse on one thread while the block runs, every
    other operation on the threads the process has. `torch.set_num_threads` also clears
    oneDNN's primitive cache, so the products after each factorization rebuild theirs: the
    seconds column shows what that costs."""
    import torch

    originals: list[tuple[Any, str, Callable[..., Any]]] = []

    def on_one_thread(function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return function(*args, **kwargs)
            finally:
                torch.set_num_threads(before)

        return wrapped

    for module_name, name in FACTORIZATIONS:
        module = getattr(torch, module_name) if module_name else torch
        originals.append((module, name, getattr(module, name)))
        setattr(module, name, on_one_thread(getattr(module, name)))
    try:
        yield
    finally:
        for module, name, original in reversed(originals):
            setattr(module, name, original)


def quantize(
    model_dir: str, dtype: str, shape: tuple[int, int], threads: int, pin_cholesky: bool, out: str
) -> None:
    """One GPTQ run in this process; the state dict goes to `out`, oneshot's seconds to
    `out`.s."""
    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    held = factorizations_on_one_thread() if pin_cholesky else contextlib.nullcontext()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    ids = torch.randint(100, 40000, shape, generator=torch.Generator().manual_seed(0))
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
    started = time.perf_counter()
    with held:
        oneshot(
            model=model,
            dataset=dataset,
            recipe=recipe,
            max_seq_length=shape[1],
            num_calibration_samples=shape[0],
            shuffle_calibration_samples=False,
        )
    Path(f"{out}.s").write_text(f"{time.perf_counter() - started:.2f}")
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
    parser.add_argument("--samples", type=int, default=8, help="calibration sequences")
    parser.add_argument("--seq-len", type=int, default=128, help="token ids per sequence")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # threads pin out
    args = parser.parse_args()
    if args.one:
        threads, pin, out = args.one
        shape = (args.samples, args.seq_len)
        quantize(args.model, args.dtype, shape, int(threads), pin == "pin", out)
        return
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        states = []
        for label, threads, pin in RUNS:
            out = str(Path(scratch) / f"{len(states)}.pt")
            command = [sys.executable, __file__, "--model", args.model, "--dtype", args.dtype]
            command += ["--samples", str(args.samples), "--seq-len", str(args.seq_len)]
            command += ["--one", str(threads), "pin" if pin else "plain", out]
            subprocess.run(command, check=True, capture_output=True)
            states.append(torch.load(out))
            first, state = states[0], states[-1]
            differ = [k for k in first if not torch.equal(first[k], state[k])]
            largest = max(
                ((first[k].float() - state[k].float()).abs().max().item() for k in differ),
                default=0.0,
            )
            seconds = Path(f"{out}.s").read_text()
            rows.append(
                f"| {label} | {digest(state)} | {len(differ)} of {len(state)} | "
                f"{largest:.4g} | {seconds} |"
            )
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            f"Command: `.venv/bin/python benchmarks/gptq_threads.py --model STUDY/artifacts/bf16 "
            f"--dtype {args.dtype} --samples {args.samples} --seq-len {args.seq_len}` (the "
            "built-in model's bf16 baseline)",
            "",
            f"Machine: {cpu_class()}; {dt.date.today().isoformat()}; torch {torch.__version__}",
            "",
            "| run | state-dict hash | tensors differing from the first run | largest "
            "difference | oneshot s |",
            "|---|---|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    section = f"{widest_isa()} {args.samples}x{args.seq_len}"
    write_section(RESULTS, section, text, heading="# GPTQ and torch's thread count\n\n")


if __name__ == "__main__":
    main()
