"""The reference backend: plain transformers + PyTorch, on CPU or one CUDA device.

It runs every artifact quantbench writes, but a compressed-tensors artifact runs *emulated*
here: transformers decompresses its low-precision weights to the compute dtype and simulates
activation quantization in fake-quant form. Its scores are therefore the scheme's, while its
speed and memory are not those of real low-precision kernels; `LoadInfo` says which case holds.
"""

from __future__ import annotations

import gc
import inspect
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from quantbench.backends.base import (
    ExecutionMode,
    GenerationOutput,
    GenerationTiming,
    LoadInfo,
    WindowScores,
    cut_at_end_of_sequence,
    end_of_sequence_ids,
)
from quantbench.config import ComputeDtype
from quantbench.errors import UserError
from quantbench.hardware import hardware_here
from quantbench.models import check_loading_info
from quantbench.tasks.harness import in_chunks

COMPUTE_DTYPES: tuple[str, ...] = get_args(ComputeDtype)


def resolve_compute_dtype(requested: str, device_type: str, saved_dtype: str) -> tuple[Any, str]:
    """The dtype to load an artifact saved in `saved_dtype` in, and why when it is not the
    saved one. "auto" keeps the saved dtype, except on a CPU without bf16 matmuls in
    hardware, where float32 computes the same model 4-5x faster (scores move by numerical
    noise: KL about 0.002 nats between the two on the built-in model)."""
    if requested != "auto":
        return getattr(torch, requested), f"computed in {requested} (as configured)"
    if device_type == "cpu" and saved_dtype != "float32" and not hardware_here("cpu").native_bf16():
        return torch.float32, (
            "computed in float32: this CPU has no bf16 matmuls in hardware "
            "(AVX-512 BF16/AMX), where bf16 ran 4-5x slower"
        )
    return "auto", ""


SCORE_CHUNK_POSITIONS = 32
"""Positions per float32 chunk: 32 × vocab × 4 bytes (6 MiB for a 49k vocabulary) stays in
cache, which made scoring 4× faster than whole-window log-softmax on a 2-core CPU."""


def _describe_tensor_args(args: dict[str, Any] | None) -> str:
    """Render one compressed-tensors QuantizationArgs dict, e.g. "8-bit float, per-channel"."""
    if not args:
        return "unquantized"
    text = f"{args.get('num_bits')}-bit {args.get('type')}, per-{args.get('strategy')}"
    if args.get("group_size"):
        text += f" (group {args['group_size']})"
    if args.get("dynamic"):
        text += ", dynamic"
    return str(text)


def describe_emulation(quantization_config: dict[str, Any]) -> str:
    """Explain, for a report, what the transformers path does with a quantized artifact."""
    method = quantization_config.get("quant_method", "unknown")
    if method != "compressed-tensors":
        return (
            f"quantized artifact ({method}) run through transformers' generic integration; "
            "its speed and memory say nothing about optimized low-precision kernels"
        )
    groups = quantization_config.get("config_groups") or {}
    formats = []
    quantizes_activations = False
    for group in groups.values():
        weights = _describe_tensor_args(group.get("weights"))
        activations = group.get("input_activations")
        quantizes_activations = quantizes_activations or bool(activations)
        formats.append(f"weights {weights}; activations {_describe_tensor_args(activations)}")
    scheme = "; ".join(formats) or "no quantization groups"
    activation_note = (
        "and simulates activation quantization in fake-quant form"
        if quantizes_activations
        else "(activations are not quantized)"
    )
    return (
        f"compressed-tensors artifact ({quantization_config.get('format')}: {scheme}). "
        f"transformers decompresses the weights at the first forward {activation_note}, so "
        "accuracy is the scheme's but speed and memory say nothing about real low-precision "
        "kernels (serve with vLLM for those)"
    )


class HFBackend:
    """transformers `AutoModelForCausalLM` in eval mode, one artifact at a time.

    `device` is "auto" (CUDA when available, else CPU), "cpu" or a CUDA device string.
    `threads` sets torch's intra-op CPU thread count; None leaves torch's default.
    `score_batch_size` is how many equal-length windows `score_windows` runs per forward.
    """

    name = "hf"

    def __init__(
        self,
        device: str = "auto",
        threads: int | None = None,
        score_batch_size: int = 4,
        dtype: str = "auto",
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype not in COMPUTE_DTYPES:
            raise UserError(f"dtype must be one of {', '.join(COMPUTE_DTYPES)}, not '{dtype}'")
        self.dtype = dtype
        if score_batch_size < 1:
            raise UserError(f"score_batch_size must be at least 1, got {score_batch_size}")
        if threads is not None:
            if threads < 1:
                raise UserError(f"threads must be at least 1, got {threads}")
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.score_batch_size = score_batch_size
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos_ids: frozenset[int] = frozenset()
        self._pad_id: int = 0

    def _sync(self) -> None:
        """Wait for queued device work, so that the wall clock covers it."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _loaded_model(self) -> Any:
        if self._model is None:
            raise RuntimeError("HFBackend: call load() first")
        return self._model

    def load(self, artifact: Path) -> LoadInfo:
        """Load model and tokenizer from `artifact`, then run one tiny forward.

        The warm-up matters: transformers decompresses a compressed-tensors model lazily at
        its first forward, which would otherwise land inside the first measurement.
        """
        artifact = Path(artifact)
        config_path = artifact / "config.json"
        if not config_path.is_file():
            raise UserError(f"{artifact} is not a model folder (no config.json)")
        self.close()
        model_config = json.loads(config_path.read_text())
        quantization_config = model_config.get("quantization_config")

        saved_dtype = str(model_config.get("torch_dtype") or model_config.get("dtype") or "")
        compute_dtype, why = resolve_compute_dtype(self.dtype, self.device.type, saved_dtype)
        self._sync()
        start = time.perf_counter()
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            artifact, dtype=compute_dtype, device_map=str(self.device), output_loading_info=True
        )
        model, loading = loaded
        check_loading_info(loading, model, str(artifact))  # never measure a partly random model
        model.eval()
        self._sync()
        load_s = time.perf_counter() - start

        tokenizer = AutoTokenizer.from_pretrained(artifact)
        self._model = model
        self._tokenizer = tokenizer
        self._eos_ids = self._collect_eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self._pad_id = int(pad)

        start = time.perf_counter()
        with torch.inference_mode():
            model(torch.tensor([[self._pad_id, self._pad_id]], device=self.device))
        self._sync()
        warmup_s = time.perf_counter() - start

        dtype = str(model.dtype).removeprefix("torch.")
        mode: ExecutionMode
        if quantization_config:
            mode = "emulated"
            detail = describe_emulation(quantization_config)
        else:
            mode = "native"
            detail = f"unquantized {dtype} weights, plain PyTorch matmuls on {self.device}"
        if why:
            detail += f"; {why}"
        return LoadInfo(
            load_s=load_s,
            execution_mode=mode,
            detail=detail,
            device=str(self.device),
            dtype=dtype,
            warmup_s=warmup_s,
        )

    @staticmethod
    def _collect_eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
        generation_config = getattr(model, "generation_config", None)
        return end_of_sequence_ids(
            tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)
        )

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise RuntimeError("HFBackend: call load() first")
        return self._tokenizer

    def score_windows(
        self,
        windows: Sequence[Sequence[int]],
        top_k: int,
        full_vocab_for: int = 0,
        gather_ids: Sequence[np.ndarray] | None = None,
    ) -> Iterator[WindowScores]:
        """Score every next token of every window; consecutive equal-length windows share a
        forward pass (up to `score_batch_size`)."""
        model = self._loaded_model()
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        for i, window in enumerate(windows):
            if len(window) < 2:
                raise ValueError(f"window {i} has {len(window)} tokens; scoring needs at least 2")
        index = 0
        while index < len(windows):
            length = len(windows[index])
            end = index + 1
            while (
                end < len(windows)
                and end - index < self.score_batch_size
                and len(windows[end]) == length
            ):
                end += 1
            batch = torch.tensor(
                [list(w) for w in windows[index:end]], dtype=torch.long, device=self.device
            )
            with torch.inference_mode():
                logits = model(input_ids=batch, use_cache=False).logits
                scores = [
                    self._score_row(
                        logits[row, :-1],
                        batch[row, 1:],
                        top_k,
                        index + row < full_vocab_for,
                        None if gather_ids is None else gather_ids[index + row],
                    )
                    for row in range(end - index)
                ]
                del logits, batch
            yield from scores
            index = end

    @staticmethod
    def _score_row(
        logits: torch.Tensor,
        targets: torch.Tensor,
        top_k: int,
        want_full: bool,
        gather: np.ndarray | None,
    ) -> WindowScores:
        """Log-probs of one window's targets from its (n_targets, vocab) logits, in float32.

        Works on chunks of SCORE_CHUNK_POSITIONS rows that stay in cache: one max (which
        also gives the argmax), one log-sum-exp, then gathers. The full log-softmax is only
        materialized when asked for, which keeps scoring close to the forward's own cost.
        """
        k = min(top_k, logits.shape[-1])
        parts: dict[str, list[torch.Tensor]] = {
            "token": [],
            "ids": [],
            "lp": [],
            "full": [],
            "g": [],
        }
        gather_t = (
            None
            if gather is None
            else torch.as_tensor(gather, dtype=torch.long, device=logits.device)
        )
        for start in range(0, logits.shape[0], SCORE_CHUNK_POSITIONS):
            stop = start + SCORE_CHUNK_POSITIONS
            chunk = logits[start:stop].float()
            max_values, max_ids = chunk.max(dim=-1, keepdim=True)
            lse = (chunk - max_values).exp_().sum(dim=-1, keepdim=True).log_().add_(max_values)
            parts["token"].append((chunk.gather(-1, targets[start:stop, None]) - lse)[:, 0].cpu())
            if k == 1:
                values, ids = max_values, max_ids
            else:
                values, ids = torch.topk(chunk, k, dim=-1, largest=True, sorted=True)
            parts["lp"].append((values - lse).cpu())
            parts["ids"].append(ids.to(torch.int32).cpu())
            if gather_t is not None:
                parts["g"].append((chunk.gather(-1, gather_t[start:stop]) - lse).cpu())
            if want_full:
                parts["full"].append((chunk - lse).cpu())
            del chunk
        return WindowScores(
            token_logprobs=torch.cat(parts["token"]).numpy(),
            topk_ids=torch.cat(parts["ids"]).numpy(),
            topk_logprobs=torch.cat(parts["lp"]).numpy(),
            full_logprobs=torch.cat(parts["full"]).numpy() if want_full else None,
            gathered_logprobs=torch.cat(parts["g"]).numpy() if gather_t is not None else None,
        )

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int = 8
    ) -> list[GenerationOutput]:
        """Greedy continuations, `batch_size` prompts per left-padded batch, each cut at its
        first end-of-sequence token."""
        model = self._loaded_model()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        eos = sorted(self._eos_ids)
        outputs: list[GenerationOutput] = []
        for start in range(0, len(prompts), batch_size):
            chunk = [list(p) for p in prompts[start : start + batch_size]]
            if any(not p for p in chunk):
                raise ValueError("generate: every prompt needs at least one token")
            width = max(len(p) for p in chunk)
            input_ids = torch.tensor(
                [[self._pad_id] * (width - len(p)) + p for p in chunk], device=self.device
            )
            attention_mask = torch.tensor(
                [[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=self.device
            )
            with torch.inference_mode():
                generated = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    eos_token_id=eos or None,
                    pad_token_id=self._pad_id,
                )
            for row in generated[:, width:].tolist():
                ids = cut_at_end_of_sequence(row, self._eos_ids)
                text = self._tokenizer.decode(ids, skip_special_tokens=True)
                outputs.append(GenerationOutput(token_ids=ids, text=text))
        return outputs

    def timed_generate(
        self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int
    ) -> GenerationTiming:
        """Prefill once, then decode step by step with the KV cache, timing each step.

        Prompts must have equal length so no padding (and no attention mask) distorts the
        work being timed. End-of-sequence is ignored: every sequence gets `max_new_tokens`.
        Prefill computes logits for the last position only, as a serving engine would.
        """
        model = self._loaded_model()
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if not prompt_ids or not prompt_ids[0]:
            raise ValueError("timed_generate needs at least one non-empty prompt")
        if len({len(p) for p in prompt_ids}) != 1:
            raise ValueError("timed_generate needs prompts of equal length (no padding)")
        input_ids = torch.tensor([list(p) for p in prompt_ids], device=self.device)
        prefill_kwargs: dict[str, Any] = {}
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            prefill_kwargs["logits_to_keep"] = 1
        step_s: list[float] = []
        with torch.inference_mode():
            self._sync()
            start = time.perf_counter()
            out = model(input_ids=input_ids, use_cache=True, **prefill_kwargs)
            next_ids = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
            cache = out.past_key_values
            self._sync()
            ttft_s = time.perf_counter() - start
            del out
            for _ in range(max_new_tokens - 1):
                step_start = time.perf_counter()
                out = model(input_ids=next_ids, past_key_values=cache, use_cache=True)
                next_ids = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
                cache = out.past_key_values
                self._sync()
                step_s.append(time.perf_counter() - step_start)
                del out
        del cache
        return GenerationTiming(
            ttft_s=ttft_s,
            decode_s_per_token=sum(step_s) / len(step_s) if step_s else 0.0,
            total_s=ttft_s + sum(step_s),
            new_tokens_per_sequence=max_new_tokens,
            batch_size=len(prompt_ids),
        )

    def lm_eval_model(self, batch_size: int, progress: Callable[[str, int, int], None]) -> Any:
        """The loaded model as an lm-eval `HFLM` (same weights, no second load) that reports
        progress every few batches."""
        from lm_eval.models.huggingface import HFLM

        chunk = batch_size * 4  # batches stay those of every other variant: same sort, same cuts

        class ReportingHFLM(HFLM):  # type: ignore[misc]
            def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
                return in_chunks(super().generate_until, requests, chunk, progress, "generating")

            def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
                return in_chunks(super().loglikelihood, requests, chunk, progress, "scoring")

        return ReportingHFLM(
            pretrained=self._loaded_model(),
            tokenizer=self.tokenizer(),
            batch_size=batch_size,
            device=str(self.device),
        )

    def close(self) -> None:
        """Drop the model and tokenizer and return device memory to the allocator."""
        self._model = None
        self._tokenizer = None
        gc.collect()
        if self.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()
