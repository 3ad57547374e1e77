"""Quantize one variant in its own process and save a deployable artifact.

llm-compressor keeps global session state, so each scheme runs in a fresh Python process
(`python -m quantbench.quantize REQUEST.json`). The parent streams the child's log to a file,
turns llm-compressor's "(i/N): Calibrating" progress into a progress bar, and kills the whole
process group if the study is interrupted. The child writes `result.json` last; the parent
only commits the stage after checking it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbench.errors import StageFailed

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


def _read_stream(
    stream: Any, log: Any, on_line: Callable[[str], None], lock: threading.Lock
) -> None:
    buffer = ""
    while True:
        chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
        if not chunk:
            break
        text = chunk.decode(errors="replace")
        buffer += text
        parts = re.split(r"[\r\n]", buffer)
        buffer = parts.pop()
        for part in parts:
            if part:
                on_line(part)
        with lock:
            log.write(text)
            log.flush()
    if buffer:
        on_line(buffer)


def run_worker(
    request: dict[str, Any], work: Path, on_progress: Callable[[Progress], None]
) -> dict[str, Any]:
    """Run the quantization worker for `request` with `work` as its folder; return its result."""
    (work / REQUEST_FILE).write_text(json.dumps(request, indent=2))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "quantbench.quantize", str(work / REQUEST_FILE)]
    lock = threading.Lock()

    def on_stderr(line: str) -> None:
        match = _PROGRESS.search(line)
        if match:
            on_progress(Progress("calibrating", int(match[1]) - 1, int(match[2])))

    def on_stdout(line: str) -> None:
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                return
            on_progress(Progress(str(event.get("phase", "")), None, None))

    with open(work / LOG_FILE, "w") as log:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        readers = [
            threading.Thread(target=_read_stream, args=(process.stdout, log, on_stdout, lock)),
            threading.Thread(target=_read_stream, args=(process.stderr, log, on_stderr, lock)),
        ]
        for reader in readers:
            reader.daemon = True
            reader.start()
        try:
            returncode = process.wait()
        except BaseException:
            _kill_group(process)
            raise
        for reader in readers:
            reader.join(timeout=5)
    result_path = work / RESULT_FILE
    if returncode != 0 or not result_path.is_file():
        tail = (work / LOG_FILE).read_text(errors="replace").strip().splitlines()[-15:]
        reason = next(
            (line for line in reversed(tail) if "Error" in line or "error" in line),
            tail[-1] if tail else f"exit code {returncode}",
        )
        raise StageFailed(
            f"quantization failed (exit code {returncode}): {reason.strip()}",
            str(work / LOG_FILE),
        )
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _emit(phase: str, **extra: Any) -> None:
    print(json.dumps({"phase": phase, **extra}), flush=True)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies, so no orphan keeps computing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main(request_path: Path) -> None:
    _die_with_parent()
    request = json.loads(request_path.read_text())
    work = request_path.parent
    started = time.perf_counter()
    phases: dict[str, float] = {}

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantbench.schemes import get_scheme
    from quantbench.schemes.baseline import Baseline

    scheme = get_scheme(request["scheme"])
    _emit("loading")
    mark = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(request["model_path"])
    dtype = getattr(torch, scheme.dtype if isinstance(scheme, Baseline) else "bfloat16")
    model = AutoModelForCausalLM.from_pretrained(request["model_path"], dtype=dtype)
    phases["load_s"] = time.perf_counter() - mark
    artifact = work / ARTIFACT_DIR

    if isinstance(scheme, Baseline):
        _emit("saving")
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
        _emit("quantizing")
        mark = time.perf_counter()
        oneshot(model=model, recipe=recipe, **kwargs)
        phases["quantize_s"] = time.perf_counter() - mark
        _emit("saving")
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
    _emit("done")


if __name__ == "__main__":
    _worker_main(Path(sys.argv[1]))
