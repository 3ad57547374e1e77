"""Rotations ahead of a 4-bit scheme: llm-compressor 0.14's SpinQuant and QuIP transforms.

A rotation multiplies weights (and, where it cannot be fused, activations at run time) by an
orthogonal Hadamard-type matrix, which spreads outliers over many channels so that 4-bit
grids lose less. llm-compressor applies them as a modifier ahead of the quantizing one
(examples/transform/spinquant_example.py, quip_example.py). `spinquant` is SpinQuant's R1 +
R2 rotations, both fused into the weights, so the artifact is an ordinary model with rotated,
unquantized embeddings and `lm_head` (untied from the embeddings); the example's R4 is left
out because it is an online rotation that transformers 5.17 does not apply when it loads the
artifact (on a tiny Llama: KL 0.47 nats loaded against 0.08 in memory). `quip` is QuIP's
input (v) and output (u) rotations, online ones too, so it is refused in pre-flight here.

Hadamard blocks must divide the widths they rotate: SpinQuant's R1 rotates the hidden size
and R2 each attention head, QuIP every Linear's input and output width; SpinQuant's plain
Hadamard needs a power-of-two block. Pre-flight picks the largest valid block.
"""

from __future__ import annotations

from typing import Any

from quantbench.models import ModelInfo
from quantbench.schemes.base import Preflight
from quantbench.schemes.grouping import candidate_group_sizes

TRANSFORM_CHOICES: tuple[str, ...] = ("none", "spinquant", "quip")
TRANSFORM_DEFAULTS: dict[str, Any] = {"transform": "none", "transform_block_size": 128}
SPINQUANT_ROTATIONS: tuple[Any, ...] = ("R1", "R2")
QUIP_ROTATIONS: tuple[Any, ...] = ("v", "u")
QUIP_UNEVALUABLE = (
    "transform quip leaves online rotations (v_input / u_output tensors) that transformers "
    "5.17 does not apply when it loads the artifact: on a tiny Llama its KL to the baseline "
    "was 2.09 nats loaded against 0.07 in memory, so it cannot be scored here; use spinquant "
    "(its rotations are fused into the weights)"
)


def power_of_two_block(requested: int, widths: list[int]) -> int | None:
    """Largest power of two not above `requested` (≥ 16) that divides every width."""
    for size in candidate_group_sizes(requested):
        if size & (size - 1) == 0 and all(width % size == 0 for width in widths):
            return size
    return None


def rotated_widths(model: ModelInfo, transform: str, targeted_in: list[int]) -> list[int]:
    """The widths a transform's Hadamard blocks tile."""
    hidden = model.hidden_size or max(targeted_in, default=0)
    if transform == "spinquant":
        # R2's per-head block (head_dim) is not in ModelInfo: llm-compressor checks it when
        # the modifier initialises, seconds into the quantize stage.
        return [hidden]
    return sorted(set(targeted_in))


def check_transform(
    scheme: str, model: ModelInfo, options: dict[str, Any], result: Preflight
) -> None:
    """Pre-flight of the `transform` option: fit its block size, or say why it cannot run."""
    transform = options.get("transform", "none")
    if transform == "none":
        return
    if transform == "quip":
        result.problems.append(f"{scheme}: {QUIP_UNEVALUABLE}")
        return
    requested = int(options["transform_block_size"])
    widths = rotated_widths(model, transform, [layer.in_features for layer in model.linear_layers])
    chosen = power_of_two_block(requested, widths)
    if chosen is None:
        result.problems.append(
            f"{scheme}: no power-of-two Hadamard block ≤ {requested} divides the rotated "
            f"widths {widths}"
        )
        return
    if chosen != requested:
        options["transform_block_size"] = chosen
        result.decisions.append(
            f"transform block {requested} does not divide rotated width(s) "
            f"{[w for w in widths if w % requested]}; using {chosen}"
        )
    result.notes.append(
        "spinquant rotates the embeddings and lm_head too: they are untied and stored "
        "unquantized, so the artifact holds a second copy of the embedding matrix"
    )


def rotation_modifiers(options: dict[str, Any]) -> list[Any]:
    """The transform modifier that goes ahead of the quantizing one (none: an empty list)."""
    transform = options.get("transform", "none")
    if transform == "none":
        return []
    block = int(options["transform_block_size"])
    if transform == "spinquant":
        from llmcompressor.modifiers.transform.spinquant import SpinQuantModifier

        return [
            SpinQuantModifier(
                rotations=list(SPINQUANT_ROTATIONS),
                transform_type="hadamard",
                transform_block_size=block,
            )
        ]
    from llmcompressor.modifiers.transform.quip import QuIPModifier

    return [
        QuIPModifier(
            rotations=list(QUIP_ROTATIONS),
            transform_type="random-hadamard",
            transform_block_size=block,
            ignore=list(options["ignore"]),
        )
    ]
