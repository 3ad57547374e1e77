"""Quantize one variant in its own process and save a deployable artifact.

llm-compressor keeps global session state, so each scheme runs in a fresh Python process
(`python -m quantbench.quantize REQUEST.json`). The parent streams the child's log to a file,
turns llm-compressor's "(i/N): Calibrating" progress into a progress bar, and kills the whole
process group if the study is interrupted. The child writes `result.json` last; the parent
only commits the stage after checking it.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbench.executors.base import Launch, Resources
from quantbench.workers import die_with_parent, emit, failure, run_python_worker

ARTIFACT_DIR = "artifact"
LOG_FILE = "quantize.log"
REQUEST_FILE = "request.json"
RESULT_FILE = "result.json"
_PROGRESS = re.compile(r"\((\d+)/(\d+)\): Calibrating")


@dataclass(frozen=True)
class Progress:
    phase: str
    done: int | None = None
    total: int | None = None


def run_worker(
    request: dict[str, Any],
    work: Path,
    on_progress: Callable[[Progress], None],
    launch: Launch = run_python_worker,
    resources: Resources | None = None,
) -> dict[str, Any]:
    """Run the quantization worker for `request` with `work` as its folder (through `launch`,
    which may run it on another node); return its result."""

    def on_stderr(line: str) -> None:
        match = _PROGRESS.search(line)
        if match:
            on_progress(Progress("calibrating", int(match[1]) - 1, int(match[2])))

    def on_event(event: dict[str, Any]) -> None:
        on_progress(Progress(str(event.get("phase", ""))))

    returncode = launch(
        "quantbench.quantize",
        request,
        work / REQUEST_FILE,
        work / LOG_FILE,
        on_event,
        on_stderr,
        resources=resources,
    )
    result_path = work / RESULT_FILE
    if returncode != 0 or not result_path.is_file():
        raise failure("quantization", returncode, work / LOG_FILE)
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result


def _worker_main(request_path: Path) -> None:
    die_with_parent()
    request = json.loads(request_path.read_text())
    work = request_path.parent
    started = time.perf_counter()
    phases: dict[str, float] = {}

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantbench.schemes import get_scheme
    from quantbench.schemes.baseline import Baseline

    scheme = get_scheme(request["scheme"])
    emit("loading")
    mark = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(request["model_path"])
    dtype = getattr(torch, scheme.dtype if isinstance(scheme, Baseline) else "bfloat16")
    model = AutoModelForCausalLM.from_pretrained(request["model_path"], dtype=dtype)
    phases["load_s"] = time.perf_counter() - mark
    artifact = work / ARTIFACT_DIR
    shutil.rmtree(artifact, ignore_errors=True)  # a retried attempt starts from nothing
    (work / RESULT_FILE).unlink(missing_ok=True)

    if isinstance(scheme, Baseline):
        emit("saving")
        mark = time.perf_counter()
        model.save_pretrained(artifact)
    else:
        from llmcompressor.entrypoints.oneshot import oneshot

        recipe = scheme.build_recipe(request["options"])
        kwargs: dict[str, Any] = {}
        if scheme.needs_calibration:
            from datasets import Dataset

            from quantbench.calibration import read_samples

            samples = read_samples(Path(request["calibration_samples"]))
            kwargs = {
                "dataset": Dataset.from_dict(
                    {
                        "input_ids": samples,
                        "attention_mask": [[1] * len(ids) for ids in samples],
                    }
                ),
                "num_calibration_samples": len(samples),
                "max_seq_length": int(request["seq_len"]),
                "shuffle_calibration_samples": False,
            }
        emit("quantizing")
        mark = time.perf_counter()
        oneshot(model=model, recipe=recipe, **kwargs)
        phases["quantize_s"] = time.perf_counter() - mark
        emit("saving")
        mark = time.perf_counter()
        model.save_pretrained(artifact, save_compressed=True)
    tokenizer.save_pretrained(artifact)
    phases["save_s"] = time.perf_counter() - mark
    result = {
        "wall_s": time.perf_counter() - started,
        "phases": phases,
        # ru_maxrss is in KiB on Linux.
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "torch_threads": torch.get_num_threads(),
    }
    tmp = work / f".{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, work / RESULT_FILE)
    emit("done")


if __name__ == "__main__":
    _worker_main(Path(sys.argv[1]))
