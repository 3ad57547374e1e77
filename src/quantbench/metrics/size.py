"""Size on disk (weights and whole artifact, bytes per stored dtype) and resident memory.

Memory is read in the timed worker, which holds only this variant and runs alone on the
machine (its load time is a time): after loading plus a first forward (compressed-tensors
models decompress at the first forward, so memory read right after loading would flatter
them), and the peak through the speed metric's generation when the study times speed.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from quantbench.backends.base import LoadInfo
from quantbench.config import EvaluationConfig
from quantbench.metrics.base import EvalContext
from quantbench.process.child import peak_rss_bytes
from quantbench.report.model_card import CARD_FILE
from quantbench.results import SizeRecord
from quantbench.store import dir_bytes

_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


def safetensors_bytes_by_dtype(folder: Path) -> dict[str, int]:
    """Bytes of stored tensors per dtype, read from the safetensors headers (no weights loaded)."""
    totals: dict[str, int] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            dtype = entry["dtype"]
            totals[dtype] = totals.get(dtype, 0) + (end - begin)
    return totals


def artifact_bytes(folder: Path) -> int:
    """Bytes of the artifact as quantization saved it: the model card the report writes into
    the folder later is not counted, so the figure does not depend on whether a report was
    written before this stage ran (a rerun after a kill, a metric added to a finished study)."""

    card = folder / CARD_FILE
    return dir_bytes(folder) - (card.stat().st_size if card.is_file() else 0)


class SizeMetric:
    name = "size"
    version = 2
    """2: the model card is not part of `artifact_bytes`."""
    needs_model = True
    uses_corpus = False
    own_inputs: tuple[str, ...] = ()
    baseline_inputs: tuple[str, ...] = ()
    reported = True
    timed = True

    def key_config(self, config: EvaluationConfig) -> dict[str, Any]:
        """Its peak is the peak through the timed metrics its worker ran before it."""
        return {"after": [m for m in config.metrics if m == "speed"]}

    def compute(self, ctx: EvalContext) -> SizeRecord:
        _, load = ctx.backend()
        gpu_peak = None
        if load.device.startswith("cuda"):
            import torch

            gpu_peak = int(torch.cuda.max_memory_allocated())
        return SizeRecord(
            weights_bytes=dir_bytes(ctx.artifact, (".safetensors", ".bin")),
            artifact_bytes=artifact_bytes(ctx.artifact),
            param_bytes_by_dtype=safetensors_bytes_by_dtype(ctx.artifact),
            load_s=load.load_s,
            rss_loaded_bytes=_rss_after_load(load),
            rss_peak_generating_bytes=peak_rss_bytes(),
            gpu_peak_bytes=gpu_peak,
            backend=ctx.config.backend,
            device=load.device,
        )


def _rss_after_load(load: LoadInfo) -> int:
    if load.rss_after_load_bytes is None:
        raise RuntimeError("the evaluation worker did not record the memory after loading")
    return load.rss_after_load_bytes
