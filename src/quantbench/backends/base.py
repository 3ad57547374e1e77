"""What an inference backend offers the metrics: scores over token windows, greedy text, timings.

Everything here is plain data (numpy arrays, floats, strings) so that metric code never has to
know which runtime produced it, and importing this module pulls in no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

ExecutionMode = Literal["native", "emulated"]


@dataclass(frozen=True)
class LoadInfo:
    """How an artifact was loaded, and whether its speed means anything for deployment.

    `execution_mode` is "native" when the matmuls run in the artifact's own precision with
    ordinary kernels, and "emulated" when low-precision weights are decompressed and any
    activation quantization is simulated in higher precision: accuracy is still that of the
    scheme, but speed and memory then say nothing about real low-precision kernels.
    """

    load_s: float
    """Seconds to load weights onto the device, excluding the warm-up forward."""
    execution_mode: ExecutionMode
    detail: str
    """One or two sentences explaining `execution_mode` to a person reading a report."""
    device: str
    """Torch device the model runs on, e.g. "cpu" or "cuda"."""
    dtype: str
    """Compute dtype of the loaded weights, e.g. "bfloat16"."""
    warmup_s: float = 0.0
    """Seconds of the one tiny forward run after loading (it includes any lazy decompression)."""
    rss_after_load_bytes: int | None = None
    """Resident memory of the process right after loading, bytes (set by the evaluation
    worker for the metrics' own backend: what the size metric reports)."""


@dataclass(frozen=True)
class WindowScores:
    """Next-token scores for every position of one token window.

    A window of L tokens has L-1 targets: row i scores token i+1 given tokens 0..i. All
    log-probabilities are natural logs computed in float32 from the model's logits.
    """

    token_logprobs: np.ndarray
    """float32 (n_targets,): log p(actual next token)."""
    topk_ids: np.ndarray
    """int32 (n_targets, k): the k most probable next tokens, most probable first."""
    topk_logprobs: np.ndarray
    """float32 (n_targets, k): log-probabilities of `topk_ids`, non-increasing along k."""
    full_logprobs: np.ndarray | None
    """float32 (n_targets, vocab) when requested (exactness checks), else None (it is large)."""
    gathered_logprobs: np.ndarray | None = None
    """float32 (n_targets, g): log-probs at the ids asked for in `gather_ids`, else None."""


def end_of_sequence_ids(
    tokenizer_eos: int | None, configured: int | Sequence[int] | None
) -> frozenset[int]:
    """The ids that end a generated sequence: the tokenizer's eos and the generation config's
    (an int or a list: chat models often add their end-of-turn token there). Both backends
    cut greedy output at the first of them, so their texts compare token for token."""
    ids = {int(tokenizer_eos)} if tokenizer_eos is not None else set()
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    return frozenset(ids)


def cut_at_end_of_sequence(ids: Sequence[int], end_ids: frozenset[int]) -> list[int]:
    """`ids` up to, not including, the first end-of-sequence id."""
    cut = next((i for i, token in enumerate(ids) if token in end_ids), len(ids))
    return [int(t) for t in ids[:cut]]


@dataclass(frozen=True)
class GenerationOutput:
    """One greedy continuation."""

    token_ids: list[int]
    """Generated ids only: no prompt, stopping at (and excluding) the first end-of-sequence."""
    text: str
    """`token_ids` decoded without special tokens."""


@dataclass(frozen=True)
class GenerationTiming:
    """Wall-clock timing of one batched run with a fixed number of new tokens (greedy through
    hf; through vllm sampled at temperature 1.0, as `vllm bench` samples)."""

    ttft_s: float
    """Time to first token in seconds: prefill of the whole prompt batch plus the first token
    (vllm: the mean over the batch's requests)."""
    decode_s_per_token: float
    """Mean seconds per later decode step (one new token for every sequence); 0 if none."""
    total_s: float
    """Seconds for the whole run, prefill included."""
    new_tokens_per_sequence: int
    batch_size: int
    inter_token_s: tuple[float, ...] = ()
    """Every gap between two consecutive tokens of one sequence, seconds, where the backend
    sees tokens arrive one by one (vllm); empty otherwise."""


class Backend(Protocol):
    """An inference runtime that can load one artifact folder at a time."""

    name: str

    def load(self, artifact: Path) -> LoadInfo:
        """Load the model and tokenizer saved in `artifact`, ready for steady measurements."""
        ...

    def score_windows(
        self,
        windows: Sequence[Sequence[int]],
        top_k: int,
        full_vocab_for: int = 0,
        gather_ids: Sequence[np.ndarray] | None = None,
    ) -> Iterator[WindowScores]:
        """One WindowScores per window, in order; full-vocab log-probs for the first
        `full_vocab_for` windows only; with `gather_ids` (one int array of shape
        (n_targets, g) per window), the log-probs at those ids (how a variant is compared
        with the baseline's stored top-k without materializing its full distribution)."""
        ...

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int = 8
    ) -> list[GenerationOutput]:
        """Greedy, deterministic continuations of already-tokenized prompts, in order."""
        ...

    def timed_generate(
        self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int
    ) -> GenerationTiming:
        """Time one batched greedy run of exactly `max_new_tokens` new tokens per prompt
        (end-of-sequence ignored); prompts must all have the same length."""
        ...

    def tokenizer(self) -> Any:
        """The tokenizer saved with the loaded artifact."""
        ...

    def lm_eval_model(self, batch_size: int, progress: Callable[[str, int, int], None]) -> Any:
        """The loaded model as an lm-evaluation-harness `LM`, calling `progress(phase, done,
        total)` as requests finish (task accuracy runs through it)."""
        ...

    def close(self) -> None:
        """Free the model and its device memory."""
        ...
