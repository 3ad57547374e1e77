"""SmoothQuant, then GPTQ INT8 weights with dynamic per-token INT8 activations.

SmoothQuant moves activation outliers into the weights (strength alpha) so that 8-bit
activations lose less; GPTQ then fits per-channel INT8 weights. Both need calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.schemes.base import DEFAULT_IGNORE, Scheme


@dataclass(frozen=True)
class W8A8Int8(Scheme):
    def build_recipe(self, options: dict[str, Any]) -> list[Any]:
        from llmcompressor.modifiers.quantization import GPTQModifier
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        return [
            SmoothQuantModifier(smoothing_strength=float(options["smoothing_strength"])),
            GPTQModifier(
                targets="Linear",
                scheme="W8A8",
                ignore=list(options["ignore"]),
                dampening_frac=float(options["dampening_frac"]),
                block_size=int(options["block_size"]),
            ),
        ]


W8A8_INT8 = W8A8Int8(
    name="w8a8-int8",
    runtime_family="int8",
    description="SmoothQuant (alpha 0.8) then GPTQ INT8 weights per channel; dynamic "
    "per-token INT8 activations. About 2× smaller linear weights, integer matmuls.",
    needs_calibration=True,
    native_hardware="NVIDIA GPUs sm75+ (CUTLASS int8 in vLLM); x86 CPUs with AVX-512 "
    "VNNI/AMX in vLLM's CPU build (oneDNN)",
    weight_format="int8, per channel",
    activation_format="int8, dynamic per token",
    defaults={
        "smoothing_strength": 0.8,
        "dampening_frac": 0.01,
        "block_size": 128,
        "ignore": list(DEFAULT_IGNORE),
    },
)
