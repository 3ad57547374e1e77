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
bench` samples, with every token's arrival time), complete and loglikelihood (lm-eval's two
request types, for task accuracy), close.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

PROTOCOL = 3

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
            kv_cache_dtype=str(request.get("kv_cache_dtype", "auto")),
        )
        load_s = time.perf_counter() - started
        config = self.llm.llm_engine.model_config
        cache = getattr(getattr(self.llm.llm_engine, "vllm_config", None), "cache_config", None)
        return {
            "kv_cache_dtype": str(getattr(cache, "cache_dtype", "")) or None,
            "kv_cache_tokens": getattr(cache, "kv_cache_size_tokens", None),
            "load_s": load_s,
            "dtype": str(config.dtype).removeprefix("torch."),
            "quantization": config.quantization,
            "kernels": _kernels(self.llm),
            "vllm_version": _vllm_version(),
        }

    def score(self, request: dict[str, Any]) -> dict[str, Any]:
        """Score token windows through vLLM's own forward pass.

        vLLM hands out prompt log-probs only as its top-k plus the actual token, but a
        variant's divergence needs its log-probs at the *baseline's* top-k ids, and the
        exactness check needs whole rows. So the worker installs a tap in the engine process
        on the one function every prompt log-prob passes through (the sampler's
        `gather_logprobs`, which receives the float32 log-softmax rows and the prompt's
        next tokens), plans what to take from each window, runs the windows as ordinary
        requests for prompt log-probs, and collects what the tap took. Every row is checked
        against the log-prob vLLM itself returns for the window's next token.

        Request: windows (token id lists), top_k, full (a bool per window), inputs (an .npz
        with `gather_<i>` int64 (targets, g) arrays, or null), output (the .npz to write).
        Arrays written: `token_<i>`, `topk_ids_<i>`, `topk_logprobs_<i>`, and `gathered_<i>`
        and `full_<i>` where asked."""
        import numpy as np
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        windows = [list(w) for w in request["windows"]]
        gathers = {}
        if request.get("inputs"):
            with np.load(request["inputs"]) as inputs:
                gathers = {int(k.split("_")[1]): inputs[k] for k in inputs.files}
        plans = [
            {
                "window": window,
                "top_k": int(request["top_k"]),
                "full": bool(request["full"][index]),
                "gather": _packed(gathers[index].astype(np.int64)) if index in gathers else None,
            }
            for index, window in enumerate(windows)
        ]
        self.llm.collective_rpc(_tap_install)
        self.llm.collective_rpc(_tap_plan, args=(plans,))
        params = SamplingParams(max_tokens=1, prompt_logprobs=1, temperature=0.0)
        prompts = [TokensPrompt(prompt_token_ids=w) for w in windows]
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        finally:
            taken = self.llm.collective_rpc(_tap_collect)[0]
        arrays: dict[str, Any] = {}
        for index, (window, output, parts) in enumerate(zip(windows, outputs, taken, strict=True)):
            if parts is None:
                raise RuntimeError(f"window {index}: the tap saw no prompt log-probs")
            for name, value in parts.items():
                arrays[f"{name}_{index}"] = _unpacked(value)
            vllm_says = [
                entry[window[position]].logprob
                for position, entry in enumerate(output.prompt_logprobs[1:], start=1)
            ]
            tapped = arrays[f"token_{index}"]
            if len(vllm_says) != len(tapped) or not np.allclose(
                vllm_says, tapped, atol=1e-3, rtol=0
            ):
                raise RuntimeError(
                    f"window {index}: the tapped log-probs are not the ones vLLM returned"
                )
        np.savez(request["output"], **arrays)
        return {"windows": len(windows), "output": request["output"]}

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

    def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        """lm-eval's generation requests: token prompts, each with its token cap, stop
        strings and temperature (0: greedy); the texts end before the stop string."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                max_tokens=int(p["max_tokens"]),
                stop=list(p["stop"]) or None,
                temperature=float(p.get("temperature", 0.0)),
                skip_special_tokens=True,
                seed=int(request.get("seed", 0)),
            )
            for p in request["params"]
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in request["prompts"]]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return {"texts": [o.outputs[0].text for o in outputs]}

    def loglikelihood(self, request: dict[str, Any]) -> dict[str, Any]:
        """lm-eval's log-likelihood requests: for each token sequence, the summed prompt
        log-prob of its tokens after `context_lengths[i]` and whether each is the most
        likely token there (vLLM returns the actual token and its top-1 per position)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        sequences = [list(s) for s in request["sequences"]]
        params = SamplingParams(max_tokens=1, prompt_logprobs=1, temperature=0.0, detokenize=False)
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=s) for s in sequences], params, use_tqdm=False
        )
        answers = []
        for tokens, context, output in zip(
            sequences, request["context_lengths"], outputs, strict=True
        ):
            total, greedy = 0.0, True
            for position in range(max(1, int(context)), len(tokens)):
                entry = output.prompt_logprobs[position]
                token = tokens[position]
                total += float(entry[token].logprob)
                best = max(entry, key=lambda t: entry[t].logprob)
                greedy = greedy and best == token
            answers.append([total, greedy])
        return {"answers": answers}

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


# -- the scoring tap: these run inside vLLM's engine process (sent by collective_rpc) -------


def _tap_install(worker: Any) -> bool:
    """Wrap the sampler's `gather_logprobs` so that planned windows' rows are kept."""
    runner = getattr(worker, "worker", worker).model_runner
    sampler = runner.sampler
    if getattr(sampler, "quantbench_tap", None) is None:
        import torch

        tap: dict[str, Any] = {"plans": []}
        original = sampler.gather_logprobs

        def gather_logprobs(logprobs: Any, num_logprobs: int, token_ids: Any) -> Any:
            with torch.no_grad():
                _tap_take(tap, logprobs, token_ids)
            return original(logprobs, num_logprobs, token_ids)

        sampler.gather_logprobs = gather_logprobs
        sampler.quantbench_tap = tap
    return True


def _tap_plan(worker: Any, plans: list[dict[str, Any]]) -> bool:
    import torch

    tap = getattr(worker, "worker", worker).model_runner.sampler.quantbench_tap
    tap["plans"] = [
        {
            **plan,
            "gather": None
            if plan["gather"] is None
            else torch.from_numpy(_unpacked(plan["gather"])),
            "done": 0,
            "parts": {},
        }
        for plan in plans
    ]
    return True


def _tap_take(tap: dict[str, Any], logprobs: Any, token_ids: Any) -> None:
    """Keep what the plan asks of these rows: they score `token_ids`, the next tokens of
    one window from some position on (a chunk, when vLLM prefills a window in pieces), so
    the window is the planned one whose next tokens, from where it stopped, are these."""
    import torch

    targets = token_ids.tolist()
    count = len(targets)
    for plan in tap["plans"]:
        done, window = plan["done"], plan["window"]
        if window[done + 1 : done + 1 + count] != targets:
            continue
        rows = logprobs.float()
        take = {"token": rows.gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1)}
        values, ids = torch.topk(rows, plan["top_k"], dim=-1)
        take["topk_ids"], take["topk_logprobs"] = ids.to(torch.int32), values
        if plan["gather"] is not None:
            wanted = plan["gather"][done : done + count].to(rows.device)
            take["gathered"] = rows.gather(-1, wanted)
        if plan["full"]:
            take["full"] = rows.clone()
        for name, value in take.items():
            plan["parts"].setdefault(name, []).append(value.cpu())
        plan["done"] = done + count
        return


def _tap_collect(worker: Any) -> list[dict[str, Any] | None]:
    """The planned windows' arrays, each row of every window scored once, as numpy."""
    import torch

    tap = getattr(worker, "worker", worker).model_runner.sampler.quantbench_tap
    plans, tap["plans"] = tap["plans"], []
    collected: list[dict[str, Any] | None] = []
    for plan in plans:
        if plan["done"] != len(plan["window"]) - 1:
            collected.append(None)
            continue
        collected.append({n: _packed(torch.cat(v).numpy()) for n, v in plan["parts"].items()})
    return collected


def _packed(array: Any) -> list[Any]:
    """An array as vLLM's RPC carries it intact: dtype, shape and raw bytes."""
    return [array.dtype.str, list(array.shape), array.tobytes()]


def _unpacked(packed: Any) -> Any:
    import numpy as np

    dtype, shape, data = packed
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()


def _vllm_version() -> str:
    import vllm

    return str(vllm.__version__)


def _kernels(llm: Any) -> list[str]:
    """The quantized linear method and kernel classes vLLM chose for the model's layers."""
    try:
        results = llm.collective_rpc(_kernel_names)
    except Exception:  # kernel names inform; they are never required
        return []
    return sorted({name for names in results for name in names})


def _kernel_names(worker: Any) -> list[str]:
    """Runs in the engine process: the classes behind every quantized layer."""
    model = getattr(worker, "worker", worker).model_runner.model
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


OPERATIONS = ("load", "score", "generate", "timed", "complete", "loglikelihood", "close")

if __name__ == "__main__":
    main()
