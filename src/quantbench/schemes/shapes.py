"""Shape rules shared by the schemes that quantize in groups or blocks (pure, no torch).

A group (or block) size must divide the dimensions it tiles: llm-compressor refuses a group
size that does not divide a layer's input width, FP8 block activations are grouped along the
input width too, and vLLM's block kernels tile the output rows as well. `fit_size` applies
one rule to every targeted layer before any compute and says what it decided.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from quantbench.schemes.grouping import largest_valid_group_size


@dataclass(frozen=True)
class SizeFit:
    """What pre-flight decided for one size option."""

    size: int
    skipped_layers: list[str] = field(default_factory=list)
    decision: str | None = None
    problem: str | None = None


def fit_size(
    scheme: str,
    label: str,
    requested: int,
    dims_by_layer: Mapping[str, tuple[int, ...]],
    on_indivisible: str,
    dims_label: str = "input width(s)",
) -> SizeFit:
    """Fit `requested` (a group or block size) to every dimension in `dims_by_layer`.

    `on_indivisible` "shrink" picks the largest candidate not above `requested` (the size
    itself, then powers of two down to 16) that divides every dimension; "skip-layers" keeps
    the size and leaves the offending layers unquantized; "fixed" (a format with one size,
    e.g. NVFP4's 16) skips those layers too, and it is a problem when none is left.
    """
    bad = [name for name, dims in dims_by_layer.items() if any(d % requested for d in dims)]
    if not bad:
        return SizeFit(requested)
    bad_dims = sorted({d for name in bad for d in dims_by_layer[name] if d % requested})
    if on_indivisible in ("skip-layers", "fixed"):
        if len(bad) == len(dims_by_layer):
            return SizeFit(
                requested,
                problem=f"{scheme}: {label} {requested} divides none of the targeted layers "
                f"({dims_label} {bad_dims}), so nothing would be quantized",
            )
        return SizeFit(
            requested,
            skipped_layers=bad,
            decision=f"{label} {requested} does not divide {dims_label} {bad_dims}: "
            f"{len(bad)} layer(s) left unquantized",
        )
    every_dim = sorted({d for dims in dims_by_layer.values() for d in dims})
    chosen = largest_valid_group_size(requested, every_dim)
    if chosen is None:
        return SizeFit(
            requested,
            problem=f"{scheme}: no {label} ≤ {requested} divides {dims_label} {every_dim}; "
            "set on_indivisible: skip-layers",
        )
    return SizeFit(
        chosen,
        decision=f"{label} {requested} does not divide {dims_label} {bad_dims}; "
        f"using {chosen}, the largest valid size not above it",
    )
