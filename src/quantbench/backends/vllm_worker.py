"""The vLLM side of the vllm backend: a worker run by the vLLM environment's interpreter.

    <vllm env>/bin/python vllm_worker.py

It imports only the standard library and vLLM (never quantbench: the two environments pin
different transformers and compressed-tensors versions), reads one JSON request per line on
stdin and answers each with one JSON line on the protocol channel: the process's original
stdout, which it keeps for itself before pointing fd 1 at stderr, so nothing vLLM or its
child processes print can corrupt the protocol. The first line it writes is a hello with
the protocol version; every answer is {"id", "ok": true, "result"} or {"id", "ok": false,
"error", "kind"}.

Operations: load, score (prompt log-probs over token windows), generate (greedy), timed
(one batched run of a fixed number of tokens, end-of-sequence ignored, sampled as `vllm
bench` samples, with every token's arrival time), close.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

PROTOCOL = 2

# Run as a script, this file's folder comes first on sys.path, and quantbench's own
# `backends/vllm.py` would shadow the vllm package: the folder is taken off.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

_channel = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr


def _send(message: dict[str, Any]) -> None:
    _channel.write(json.dumps(message) + "\n")
    _channel.flush()


class Worker:
    def __init__(self) -> None:
        self.llm: Any = None
        self.runs = 0

    # -- operations -----------------------------------------------------------------

    def load(self, request: dict[str, Any]) -> dict[str, Any]:
        from vllm import LLM

        started = time.perf_counter()
        self.llm = LLM(
            model=request["model"],
            tokenizer=request["model"],
            dtype=request.get("dtype", "auto"),
            max_model_len=int(request["max_model_len"]),
            max_logprobs=int(request.get("max_logprobs", 20)),
            enable_prefix_caching=False,
            seed=int(request.get("seed", 0)),
            enforce_eager=bool(request.get("enforce_eager", False)),
        )
        load_s = time.perf_counter() - started
        config = self.llm.llm_engine.model_config
        return {
            "load_s": load_s,
            "dtype": str(config.dtype).removeprefix("torch."),
            "quantization": config.quantization,
            "kernels": _kernels(self.llm),
            "vllm_version": _vllm_version(),
        }

    def score(self, request: dict[str, Any]) -> dict[str, Any]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        top_k = int(request["top_k"])
        params = SamplingParams(max_tokens=1, prompt_logprobs=top_k, temperature=0.0)
        prompts = [TokensPrompt(prompt_token_ids=list(w)) for w in request["windows"]]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        windows = []
        for window, output in zip(request["windows"], outputs, strict=True):
            actual, ids, logprobs = [], [], []
            for position, entry in enumerate(output.prompt_logprobs[1:], start=1):
                target = window[position]
                ranked = sorted(entry.items(), key=lambda kv: kv[1].rank)
                top = [(token, lp.logprob) for token, lp in ranked if lp.rank <= top_k][:top_k]
                actual.append(entry[target].logprob)
                ids.append([token for token, _ in top])
                logprobs.append([value for _, value in top])
            windows.append({"token_logprobs": actual, "topk_ids": ids, "topk_logprobs": logprobs})
        return {"windows": windows}

    def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            max_tokens=int(request["max_new_tokens"]), temperature=0.0, skip_special_tokens=True
        )
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in request["prompts"]]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return {
            "outputs": [
                {"token_ids": list(o.outputs[0].token_ids), "text": o.outputs[0].text}
                for o in outputs
            ]
        }

    def timed(self, request: dict[str, Any]) -> dict[str, Any]:
        """One batched run of exactly `max_new_tokens` tokens per prompt, sampled as `vllm
        bench latency` samples (temperature 1.0, top-p 1.0, end-of-sequence ignored).

        The worker steps the engine itself, as `LLM.generate` does, but asks for every new
        token as it comes (DELTA outputs) and notes its arrival time: each request's time to
        first token, its inter-token gaps and the wall clock of the whole batch come from
        this one run (seconds)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        engine = self.llm.llm_engine
        new_tokens = int(request["max_new_tokens"])
        params = SamplingParams(
            max_tokens=new_tokens,
            ignore_eos=True,
            temperature=1.0,
            top_p=1.0,
            output_kind=RequestOutputKind.DELTA,
        )
        self.runs += 1
        arrivals: dict[str, list[float]] = {}
        started = time.perf_counter()
        for index, prompt in enumerate(request["prompts"]):
            engine.add_request(
                f"timed-{self.runs}-{index}",
                TokensPrompt(prompt_token_ids=list(prompt)),
                params.clone(),
            )
        while engine.has_unfinished_requests():
            outputs = engine.step()
            now = time.perf_counter()
            for output in outputs:
                got = len(output.outputs[0].token_ids)
                arrivals.setdefault(output.request_id, []).extend([now - started] * got)
        total_s = time.perf_counter() - started
        return {"total_s": total_s, "arrivals_s": list(arrivals.values())}

    def close(self, request: dict[str, Any]) -> dict[str, Any]:
        """Shut the engine down explicitly: an engine left to exit on its own can leave its
        shared-memory segments (/dev/shm/psm_*, 160 MB each) behind."""
        if self.llm is not None:
            shutdown = getattr(getattr(self.llm.llm_engine, "engine_core", None), "shutdown", None)
            if shutdown is not None:
                shutdown()
            self.llm = None
        return {}


def _vllm_version() -> str:
    import vllm

    return str(vllm.__version__)


def _kernels(llm: Any) -> list[str]:
    """The quantized linear method and kernel classes vLLM chose for the model's layers."""

    def collect(model: Any) -> list[str]:
        found: set[str] = set()
        for module in model.modules():
            method = getattr(module, "quant_method", None)
            if method is None:
                continue
            found.add(type(method).__name__)
            scheme = getattr(module, "scheme", None)
            if scheme is not None:
                found.add(type(scheme).__name__)
            kernel = getattr(scheme, "kernel", None)
            if kernel is not None:
                found.add(type(kernel).__name__)
        return sorted(found)

    try:
        results = llm.apply_model(collect)
    except Exception:  # kernel names inform; they are never required
        return []
    return sorted({name for names in results for name in names})


def _die_with_parent() -> None:
    """Kill this worker's process group (it leads one: the engine's children are in it) when
    the evaluation worker that started it dies, even by SIGKILL: PR_SET_PDEATHSIG for this
    process, and a watchdog thread that takes the children too."""
    import contextlib
    import ctypes
    import signal
    import threading

    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def main() -> None:
    _die_with_parent()
    worker = Worker()
    _send({"hello": "quantbench-vllm-worker", "protocol": PROTOCOL, "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        op = request.get("op")
        handler = getattr(worker, str(op), None) if op in OPERATIONS else None
        try:
            if handler is None:
                raise ValueError(f"unknown operation {op!r}")
            result = handler(request)
        except Exception as exc:  # every failure goes back to the caller
            traceback.print_exc()
            _send(
                {
                    "id": request.get("id"),
                    "ok": False,
                    "kind": type(exc).__name__,
                    "error": str(exc) or type(exc).__name__,
                }
            )
            continue
        _send({"id": request.get("id"), "ok": True, "result": result})
        if op == "close":
            break


OPERATIONS = ("load", "score", "generate", "timed", "close")

if __name__ == "__main__":
    main()
