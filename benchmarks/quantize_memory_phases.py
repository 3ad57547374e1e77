"""Where a quantization worker's memory goes: peak RSS, anonymous and file-backed memory per
phase (load, llm-compressor's oneshot, save), sampled every 50 ms.

    .venv/bin/python benchmarks/quantize_memory_phases.py MODEL_FOLDER [SCHEME]

Runs what the quantize worker runs (transformers load in bf16, `oneshot` with the scheme's
recipe as pre-flight resolves it on 16 × 256 calibration tokens, `save_pretrained` with
compression) in this process, and prints each phase's peaks in MiB. benchmarks/scaling.py
gives each stage's peak; this says which phase it comes from.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

FIELDS = ("VmRSS", "RssAnon", "RssFile")


def status_mib() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in FIELDS:
                values[name] = int(rest.split()[0]) // 1024
    return values


def main() -> None:
    import torch
    from datasets import Dataset
    from llmcompressor.entrypoints.oneshot import oneshot
    from transformers import AutoModelForCausalLM

    from quantbench.models import inspect_model
    from quantbench.schemes import get_scheme

    folder = Path(sys.argv[1])
    scheme = get_scheme(sys.argv[2] if len(sys.argv) > 2 else "w4a16-gptq")
    phase = ["imports"]
    peaks: dict[str, dict[str, int]] = {}

    def watch() -> None:
        while True:
            now = status_mib()
            peak = peaks.setdefault(phase[0], {})
            for name, value in now.items():
                peak[name] = max(peak.get(name, 0), value)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    options = scheme.preflight(inspect_model(folder), {}).resolved_options
    phase[0] = "load"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    bf16_mib = sum(p.numel() for p in model.parameters()) * 2 / 2**20
    phase[0] = "oneshot"
    ids = [[(i * 7 + j) % 40_000 + 100 for j in range(256)] for i in range(16)]
    kwargs = {}
    if scheme.calibrates(options):
        data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * 256] * 16})
        kwargs = {"dataset": data, "num_calibration_samples": 16, "max_seq_length": 256}
    oneshot(model=model, recipe=scheme.recipe(options), **kwargs)
    phase[0] = "save"
    with tempfile.TemporaryDirectory() as out:
        model.save_pretrained(out, save_compressed=True)
        phase[0] = "done"
        time.sleep(0.2)
    print(f"{scheme.name} on {folder.name}: bf16 parameters {bf16_mib:,.0f} MiB")
    for name, peak in peaks.items():
        print(f"  {name:8} " + "  ".join(f"{k} {v:,} MiB" for k, v in peak.items()))


if __name__ == "__main__":
    main()
