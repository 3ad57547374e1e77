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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbench.calibration import SAMPLES_FILE, read_samples
from quantbench.executors.base import Launch, Resources
from quantbench.hardware import Hardware, hardware_here
from quantbench.models import check_loading_info, locate_model, locate_tokenizer
from quantbench.output import OutputFolder
from quantbench.process.child import (
    AnonymousPeak,
    die_with_parent,
    emit,
    limit_threads,
    peak_rss_bytes,
    run_on_cpus,
)
from quantbench.process.requests import (
    QuantizedStage,
    QuantizeRequest,
    WorkerRequestError,
    read_request,
    request_json,
)
from quantbench.process.workers import failure, run_python_worker
from quantbench.results import MixedSearchRecord, QuantizationRecord
from quantbench.schemes import get_scheme
from quantbench.schemes.baseline import Baseline
from quantbench.sensitivity import refine_mixed
from quantbench.store import StageStore, dir_bytes

ARTIFACT_DIR = "artifact"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
STORED_FLOAT_DTYPE = "bfloat16"
"""The dtype of a quantized artifact's floating-point tensors (scales, unquantized layers,
norms), whatever the model computed in while it was calibrated: what vLLM's kernels take."""
KEPT_FLOAT32_SUFFIXES = ("_global_scale",)
"""Tensors compressed-tensors itself makes float32 (NVFP4's global scales): never narrowed."""
_PROGRESS = re.compile(r"\((\d+)/(\d+)\): Calibrating")


@dataclass(frozen=True)
class Progress:
    phase: str
    done: int | None = None
    total: int | None = None


def run_worker(
    request: QuantizeRequest,
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
    name = request.variant
    log_path = logs / f"quantize-{name}.log"
    returncode = launch(
        "quantbench.quantize",
        request_json(request),
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
    request = read_request(request_path, QuantizeRequest)
    limit_threads(request.threads)
    run_on_cpus(request.cpus)

    store = OutputFolder.open(request.output).stages()
    ref = request.stage
    if store.is_done(ref):  # an earlier attempt, killed after committing, finished it
        emit("committed")
        return
    with store.build(ref) as work:
        artifact = work / ARTIFACT_DIR
        with AnonymousPeak() as anonymous:
            result, mixed = _quantize(request, store, artifact)
        result = result.model_copy(update={"peak_anonymous_bytes": anonymous.peak_bytes})
        manifest = QuantizedStage(
            **{**request.manifest.model_dump(), "mixed": mixed},
            quantization=result,
            disk_bytes=dir_bytes(artifact, WEIGHT_SUFFIXES),
            artifact_bytes=dir_bytes(artifact),
        )
        emit("uploading" if store.remote is not None else "saving")
        store.commit(ref, work, manifest.model_dump(mode="json"))
    emit("committed")


def _quantize(
    request: QuantizeRequest, store: StageStore, artifact: Path
) -> tuple[QuantizationRecord, MixedSearchRecord | None]:
    """Quantize (or, for a baseline, just save) the model into `artifact`; timings and peak
    memory of this process, and a mixed variant's search as the worker completed it
    (`sensitivity.refine_mixed`)."""
    started = time.perf_counter()
    phases: dict[str, float] = {}

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scheme = get_scheme(request.scheme)
    mixed = request.manifest.mixed
    emit("loading")
    mark = time.perf_counter()
    model_path = locate_model(request.model)
    tokenizer = AutoTokenizer.from_pretrained(locate_tokenizer(request.model))
    compute_dtype = scheme.dtype if isinstance(scheme, Baseline) else STORED_FLOAT_DTYPE
    notes: list[str] = []
    calibrates = scheme.calibrates(request.options)
    if calibrates:
        compute_dtype, note = resolve_calibration_dtype(request.compute_dtype, hardware_here())
        if note:
            notes.append(note)
    loaded: Any = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=getattr(torch, compute_dtype), output_loading_info=True
    )
    model, loading = loaded
    # Pre-flight compared the weight files with the architecture; this is transformers'
    # own account of what it loaded, in case the two disagree.
    notes += check_loading_info(loading, model, str(model_path))
    phases["load_s"] = time.perf_counter() - mark

    if isinstance(scheme, Baseline):
        emit("saving")
        mark = time.perf_counter()
        model.save_pretrained(artifact)
    else:
        from llmcompressor.entrypoints.oneshot import oneshot

        recipe = scheme.recipe(request.options)
        kwargs: dict[str, Any] = {}
        if calibrates:
            if request.calibration is None:
                raise WorkerRequestError(
                    f"{request.scheme} calibrates; the request names no samples"
                )
            from datasets import Dataset

            calibration = store.path(request.calibration)
            samples = read_samples(calibration / SAMPLES_FILE)
            kwargs = {
                "dataset": Dataset.from_dict(
                    {
                        "input_ids": samples,
                        "attention_mask": [[1] * len(ids) for ids in samples],
                    }
                ),
                "num_calibration_samples": len(samples),
                "max_seq_length": request.seq_len,
                "shuffle_calibration_samples": False,
            }
        emit("quantizing")
        mark = time.perf_counter()
        oneshot(model=model, recipe=recipe, **kwargs)
        phases["quantize_s"] = time.perf_counter() - mark
        if mixed is not None and request.calibration is not None:
            mark = time.perf_counter()

            def fresh() -> Any:
                return AutoModelForCausalLM.from_pretrained(
                    model_path, dtype=getattr(torch, compute_dtype)
                )

            def requantize(layers: dict[str, list[str]]) -> Any:
                again = fresh()
                oneshot(
                    model=again,
                    recipe=scheme.recipe({**request.options, "allocation": layers}),
                    **kwargs,
                )
                return again

            model, mixed = refine_mixed(
                mixed, request.options, model, fresh, requantize, store, request.calibration
            )
            phases["refine_s"] = time.perf_counter() - mark
        emit("saving")
        mark = time.perf_counter()
        # Compressed from the float32 weights, so the integers are exact; only the
        # floating-point tensors are narrowed afterwards.
        model.save_pretrained(artifact, save_compressed=True)
        if compute_dtype != STORED_FLOAT_DTYPE:
            store_floats_as(artifact, STORED_FLOAT_DTYPE)
    tokenizer.save_pretrained(artifact)
    phases["save_s"] = time.perf_counter() - mark
    return QuantizationRecord(
        wall_s=time.perf_counter() - started,
        phases=phases,
        peak_rss_bytes=peak_rss_bytes(),
        torch_threads=torch.get_num_threads(),
        cores=None if request.cpus is None else len(request.cpus),
        compute_dtype=compute_dtype,
        notes=notes,
    ), mixed


def resolve_calibration_dtype(requested: str, hardware: Hardware) -> tuple[str, str | None]:
    """The dtype a model computes in while it is calibrated, and a note when that is not the
    dtype its artifact stores. auto: bfloat16 where bf16 matmuls run in hardware (GPUs,
    AVX-512 BF16 / AMX), else float32: on an AVX2-only CPU, GPTQ on the built-in model (8 x 128
    tokens) took 81 s in bfloat16 and 46 s in float32, SmoothQuant + GPTQ 108 s and 46 s, with
    the same KL to the baseline (0.274 vs 0.277, 0.0137 vs 0.0138 nats)."""
    stored = f"floating-point tensors stored in {STORED_FLOAT_DTYPE}"
    if requested != "auto":
        note = f"calibrated in {requested} (as configured); {stored}"
        return requested, None if requested == STORED_FLOAT_DTYPE else note
    if hardware.native_bf16():
        return STORED_FLOAT_DTYPE, None
    return "float32", (
        "calibrated in float32: this CPU has no bf16 matmuls in hardware (AVX-512 BF16 / "
        f"AMX), where bfloat16 calibration ran about 2x slower; {stored}"
    )


def calibration_dtype_here(requested: str) -> str:
    """What `requested` resolves to on this machine (its first GPU, else its CPU)."""
    return resolve_calibration_dtype(requested, hardware_here())[0]


def store_floats_as(artifact: Path, dtype_name: str) -> None:
    """Rewrite the float32 tensors of a saved artifact in `dtype_name` and record that dtype
    in its config (and the new total size in a shard index). Integer weights are untouched,
    and tensors compressed-tensors keeps in float32 on purpose stay so."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    target = getattr(torch, dtype_name)
    total_bytes = 0
    for file in sorted(artifact.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(str(file))
        for name, tensor in tensors.items():
            if tensor.dtype == torch.float32 and not name.endswith(KEPT_FLOAT32_SUFFIXES):
                tensors[name] = tensor.to(target)
            total_bytes += tensors[name].nbytes
        partial = file.with_name(file.name + ".partial")
        save_file(tensors, str(partial), metadata=metadata)
        partial.replace(file)
    index_path = artifact / "model.safetensors.index.json"
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        index.setdefault("metadata", {})["total_size"] = total_bytes
        index_path.write_text(json.dumps(index, indent=2) + "\n")
    config_path = artifact / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = dtype_name
    if "torch_dtype" in config:  # written by transformers before 4.56
        config["torch_dtype"] = dtype_name
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    _worker_main(Path(sys.argv[1]))
