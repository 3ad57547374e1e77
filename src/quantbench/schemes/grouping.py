"""Group-size rules shared by the group-quantized schemes (pure, no torch).

Group quantization gives each run of `group_size` input columns its own scale, so the group
size must divide a layer's input width (llm-compressor refuses otherwise). SmolLM2's width
576 = 9 × 64 does not divide by the common 128, for example.
"""

from __future__ import annotations

from collections.abc import Sequence

MIN_GROUP_SIZE = 16


def candidate_group_sizes(requested: int) -> list[int]:
    """The requested size, then powers of two below it (what GPU kernels support), largest first."""
    sizes = [requested]
    power = 1
    while power * 2 <= requested:
        power *= 2
    while power >= MIN_GROUP_SIZE:
        if power != requested:
            sizes.append(power)
        power //= 2
    return sizes


def largest_valid_group_size(requested: int, widths: Sequence[int]) -> int | None:
    """Largest candidate not above `requested` that divides every width, or None."""
    for size in candidate_group_sizes(requested):
        if all(width % size == 0 for width in widths):
            return size
    return None
