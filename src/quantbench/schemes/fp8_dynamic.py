"""FP8 (E4M3) weights per output channel with dynamic per-token FP8 activations.

Round-to-nearest with per-channel scales needs no calibration data: activation scales are
computed per token at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.schemes.base import DEFAULT_IGNORE, Scheme


@dataclass(frozen=True)
class FP8Dynamic(Scheme):
    def build_recipe(self, options: dict[str, Any]) -> list[Any]:
        from llmcompressor.modifiers.quantization import QuantizationModifier

        return [
            QuantizationModifier(
                targets="Linear", scheme="FP8_DYNAMIC", ignore=list(options["ignore"])
            )
        ]


FP8_DYNAMIC = FP8Dynamic(
    name="fp8-dynamic",
    runtime_family="fp8",
    description="FP8 E4M3 weights per channel, dynamic per-token FP8 activations; no "
    "calibration. About 2× smaller linear weights.",
    needs_calibration=False,
    native_hardware="NVIDIA GPUs with compute capability ≥ 8.9 (Ada, Hopper) in vLLM; "
    "sm80–86 run it as FP8 weight-only (Marlin); not vLLM's CPU build",
    weight_format="fp8 e4m3, per channel",
    activation_format="fp8 e4m3, dynamic per token",
    defaults={"ignore": list(DEFAULT_IGNORE)},
)
