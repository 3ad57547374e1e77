"""GPTQ weight-only schemes (W4A16 grouped, W8A16 per channel).

GPTQ quantizes one layer at a time and corrects the rounding error of each column with the
inverse Hessian of that layer's calibration inputs, so it needs calibration data. Options
beyond the seed's: `actorder` (the order in which columns are quantized: `static`, alias
`weight`, sorts them by Hessian diagonal before quantizing, llm-compressor's default; `none`
keeps the natural order), `symmetric` (false: an asymmetric grid with a zero point per
group), and for W4A16 an optional rotation ahead of it (`transform`, see rotations.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.models import LinearLayer
from quantbench.schemes.base import DEFAULT_IGNORE
from quantbench.schemes.grouped import GroupedScheme
from quantbench.schemes.rotations import TRANSFORM_CHOICES, TRANSFORM_DEFAULTS, rotation_modifiers

ACTORDER_CHOICES: tuple[str, ...] = ("static", "weight", "none", "group")
ACTORDER_REFUSED = (
    "activation ordering 'group' was removed in compressed-tensors 0.19 (its "
    "QuantizationArgs refuses it); use static / weight (the same ordering) or none"
)
GPTQ_CHOICES: dict[str, tuple[Any, ...]] = {
    "actorder": ACTORDER_CHOICES,
    "symmetric": (True, False),
    "on_indivisible": ("shrink", "skip-layers"),
    "transform": TRANSFORM_CHOICES,
}
GPTQ_REFUSED: dict[tuple[str, Any], str] = {("actorder", "group"): ACTORDER_REFUSED}


def gptq_actorder(value: str) -> str | None:
    """The `actorder` argument of llm-compressor's GPTQModifier for an option value."""
    return None if value == "none" else value


@dataclass(frozen=True)
class GPTQWeightOnly(GroupedScheme):
    num_bits: int = 4

    def weight_args(self, options: dict[str, Any]) -> Any:
        """compressed-tensors' QuantizationArgs of the weights, as GPTQ and the sensitivity
        screen's round-to-nearest both use them."""
        from compressed_tensors.quantization import QuantizationArgs

        return QuantizationArgs(
            num_bits=self.num_bits,
            type="int",
            symmetric=bool(options.get("symmetric", True)),
            strategy="group" if self.grouped else "channel",
            group_size=int(options["group_size"]) if self.grouped else None,
        )

    def linear_bytes(self, layer: LinearLayer, options: dict[str, Any]) -> int | None:
        """Bytes of one Linear's weight as compressed-tensors packs it: the integers packed
        into int32, one bf16 scale per group (per output channel without groups), packed
        zero points when asymmetric, and the int64 shape tensor."""
        groups_per_row = -(-layer.in_features // int(options["group_size"])) if self.grouped else 1
        scales = layer.out_features * groups_per_row
        packed = -(-layer.in_features * self.num_bits // 32) * 4 * layer.out_features
        zero_points = 0
        if not options.get("symmetric", True):
            zero_points = -(-layer.out_features * self.num_bits // 32) * 4 * groups_per_row
        return packed + 2 * scales + zero_points + 16

    def build_recipe(self, options: dict[str, Any]) -> list[Any]:
        from compressed_tensors.quantization import QuantizationScheme
        from llmcompressor.modifiers.quantization import GPTQModifier

        weights = self.weight_args(options)
        return [
            *rotation_modifiers(options),
            GPTQModifier(
                config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
                ignore=list(options["ignore"]),
                dampening_frac=float(options["dampening_frac"]),
                block_size=int(options["block_size"]),
                actorder=gptq_actorder(str(options.get("actorder", "static"))),
            ),
        ]


W4A16_GPTQ = GPTQWeightOnly(
    name="w4a16-gptq",
    runtime_family="w4a16",
    description="INT4 weights in groups (symmetric, one scale per group) fitted by GPTQ; "
    "activations stay 16-bit. About 4× smaller linear weights.",
    needs_calibration=True,
    native_hardware="NVIDIA GPUs sm80+ (Marlin/Machete kernels in vLLM); x86 CPUs in vLLM's "
    "CPU build",
    weight_format="int4, grouped",
    activation_format="bf16",
    defaults={
        "group_size": 128,
        "on_indivisible": "shrink",
        "dampening_frac": 0.01,
        "block_size": 128,
        "actorder": "static",
        "symmetric": True,
        **TRANSFORM_DEFAULTS,
        "ignore": list(DEFAULT_IGNORE),
    },
    choices=GPTQ_CHOICES,
    refused=GPTQ_REFUSED,
    num_bits=4,
    grouped=True,
)

W8A16_GPTQ = GPTQWeightOnly(
    name="w8a16-gptq",
    runtime_family="w8a16",
    description="INT8 weights per output channel fitted by GPTQ; activations stay 16-bit. "
    "About 2× smaller linear weights with little quality loss.",
    needs_calibration=True,
    native_hardware="NVIDIA GPUs sm80+ (Marlin kernels in vLLM)",
    weight_format="int8, per channel",
    activation_format="bf16",
    defaults={
        "dampening_frac": 0.01,
        "block_size": 128,
        "actorder": "static",
        "symmetric": True,
        "ignore": list(DEFAULT_IGNORE),
    },
    choices=GPTQ_CHOICES,
    refused=GPTQ_REFUSED,
    num_bits=8,
    grouped=False,
)
