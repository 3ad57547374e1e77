"""Quantize one variant in its own process and save a deployable artifact.

llm-compressor keeps global session state, so each scheme runs in a fresh Python process
(`python -m quantbench.quantize REQUEST.json`), possibly on another node (the executor's
`launch`). The child opens the study's stage store itself, quantizes into a private build
folder and commits the stage (manifest last; uploaded when the output folder is a URL), so
a stage is done exactly when its manifest exists, wherever it ran. The parent streams the
child's log to `logs/quantize-<variant>.log`, turns llm-compressor's "(i/N): Calibrating"
lines into a progress bar, and kills the whole process group if the study is interrupted.
"""

from __future__ import annotations

import json
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbench.executors.base import Launch, Resources
from quantbench.store import StageRef, StageStore, dir_bytes
from quantbench.workers import die_with_parent, emit, failure, run_python_worker

ARTIFACT_DIR = "artifact"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
_PROGRESS = re.compile(r"\((\d+)/(\d+)\): Calibrating")


@dataclass(frozen=True)
class Progress:
    phase: str
    done: int | None = None
    total: int | None = None


def run_worker(
    request: dict[str, Any],
    logs: Path,
    on_progress: Callable[[Progress], None],
    launch: Launch = run_python_worker,
    resources: Resources | None = None,
) -> None:
    """Run the quantization worker for `request` (through `launch`, which may run it on
    another node); raise StageFailed, naming its log, unless it committed the stage."""

    def on_stderr(line: str) -> None:
        match = _PROGRESS.search(line)
        if match:
            on_progress(Progress("calibrating", int(match[1]) - 1, int(match[2])))

    finished: list[bool] = []

    def on_event(event: dict[str, Any]) -> None:
        phase = str(event.get("phase", ""))
        finished.append(phase == "committed")
        on_progress(Progress(phase))

    logs.mkdir(parents=True, exist_ok=True)
    name = request["variant"]
    log_path = logs / f"quantize-{name}.log"
    returncode = launch(
        "quantbench.quantize",
        request,
        logs / f"quantize-{name}.request.json",
        log_path,
        on_event,
        on_stderr,
        resources=resources,
    )
    if returncode != 0 or not any(finished):
        raise failure("quantization", returncode, log_path)


def _worker_main(request_path: Path) -> None:
    die_with_parent()
    request = json.loads(request_path.read_text())
    from quantbench.output import OutputFolder

    store = OutputFolder.open(request["output"]).stages()
    ref = StageRef(*request["stage"])
    if store.is_done(ref):  # an earlier attempt, killed after committing, finished it
        emit("committed")
        return
    with store.build(ref) as work:
        artifact = work / ARTIFACT_DIR
        result = _quantize(request, store, artifact)
        manifest = {
            **request["manifest"],
            "quantization": result,
            "disk_bytes": dir_bytes(artifact, WEIGHT_SUFFIXES),
            "artifact_bytes": dir_bytes(artifact),
        }
        emit("uploading" if store.remote is not None else "saving")
        store.commit(ref, work, manifest)
    emit("committed")


def _quantize(request: dict[str, Any], store: StageStore, artifact: Path) -> dict[str, Any]:
    """Quantize (or, for a baseline, just save) the model into `artifact`; timings and peak
    memory of this process."""
    started = time.perf_counter()
    phases: dict[str, float] = {}

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantbench.models import locate_model
    from quantbench.schemes import get_scheme
    from quantbench.schemes.baseline import Baseline

    scheme = get_scheme(request["scheme"])
    emit("loading")
    mark = time.perf_counter()
    model_path = locate_model(request["model"])
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dtype = getattr(torch, scheme.dtype if isinstance(scheme, Baseline) else "bfloat16")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    phases["load_s"] = time.perf_counter() - mark

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

            from quantbench.calibration import SAMPLES_FILE, read_samples

            calibration = store.path(StageRef(*request["calibration"]))
            samples = read_samples(calibration / SAMPLES_FILE)
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
    return {
        "wall_s": time.perf_counter() - started,
        "phases": phases,
        # ru_maxrss is in KiB on Linux.
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "torch_threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    _worker_main(Path(sys.argv[1]))
