"""GPTQ weight-only schemes (W4A16 grouped, W8A16 per channel).

GPTQ quantizes one layer at a time and corrects the rounding error of each column with the
inverse Hessian of that layer's calibration inputs, so it needs calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.models import ModelInfo
from quantbench.schemes.base import DEFAULT_IGNORE, Preflight, Scheme
from quantbench.schemes.grouping import indivisible, largest_valid_group_size


@dataclass(frozen=True)
class GPTQWeightOnly(Scheme):
    num_bits: int = 4
    grouped: bool = True

    def preflight(self, model: ModelInfo, requested: dict[str, Any]) -> Preflight:
        result = super().preflight(model, requested)
        if not self.grouped:
            return result
        options = result.resolved_options
        requested_size = int(options["group_size"])
        widths = {layer.name: layer.in_features for layer in self.targeted_layers(model, options)}
        bad = indivisible(widths, requested_size)
        if not bad:
            return result
        bad_widths = sorted({widths[name] for name in bad})
        if options["on_indivisible"] == "skip-layers":
            options["ignore"] = [*options["ignore"], *bad]
            result.decisions.append(
                f"group size {requested_size} does not divide input width(s) {bad_widths}: "
                f"{len(bad)} layer(s) left unquantized"
            )
            return result
        chosen = largest_valid_group_size(requested_size, list(widths.values()))
        if chosen is None:
            result.problems.append(
                f"{self.name}: no group size ≤ {requested_size} divides input widths "
                f"{sorted(set(widths.values()))}; set on_indivisible: skip-layers"
            )
            return result
        options["group_size"] = chosen
        result.decisions.append(
            f"group size {requested_size} does not divide input width(s) {bad_widths}; "
            f"using {chosen}, the largest valid size not above it"
        )
        return result

    def build_recipe(self, options: dict[str, Any]) -> list[Any]:
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
        from llmcompressor.modifiers.quantization import GPTQModifier

        weights = QuantizationArgs(
            num_bits=self.num_bits,
            type="int",
            symmetric=True,
            strategy="group" if self.grouped else "channel",
            group_size=int(options["group_size"]) if self.grouped else None,
        )
        return [
            GPTQModifier(
                config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
                ignore=list(options["ignore"]),
                dampening_frac=float(options["dampening_frac"]),
                block_size=int(options["block_size"]),
            )
        ]


W4A16_GPTQ = GPTQWeightOnly(
    name="w4a16-gptq",
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
        "ignore": list(DEFAULT_IGNORE),
    },
    num_bits=4,
    grouped=True,
)

W8A16_GPTQ = GPTQWeightOnly(
    name="w8a16-gptq",
    description="INT8 weights per output channel fitted by GPTQ; activations stay 16-bit. "
    "About 2× smaller linear weights with little quality loss.",
    needs_calibration=True,
    native_hardware="NVIDIA GPUs sm80+ (Marlin kernels in vLLM)",
    weight_format="int8, per channel",
    activation_format="bf16",
    defaults={"dampening_frac": 0.01, "block_size": 128, "ignore": list(DEFAULT_IGNORE)},
    num_bits=8,
    grouped=False,
)
