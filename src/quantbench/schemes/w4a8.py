"""INT4 weights with 8-bit activations: `w4a8-int` (INT8 activations) and `w4afp8` (FP8).

Weights are INT4 in symmetric groups fitted by GPTQ (as w4a16-gptq); activations are
quantized per token at run time, to INT8 (compressed-tensors' `W4A8` preset) or FP8 E4M3
(`W4AFP8`), so integer or FP8 tensor cores can multiply them. The recipe is a `GPTQModifier`
with the preset (group size fitted by pre-flight), the same algorithm as w4a16-gptq so that
the two differ only in their activations; llm-compressor's own W4AFP8 example
(examples/awq/w4a8_fp8_llama_example.py) fits the weights with AWQ instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.schemes.base import DEFAULT_IGNORE
from quantbench.schemes.gptq import GPTQ_CHOICES, GPTQ_REFUSED, gptq_actorder
from quantbench.schemes.grouped import GroupedScheme
from quantbench.schemes.rotations import TRANSFORM_DEFAULTS, rotation_modifiers


@dataclass(frozen=True)
class W4A8(GroupedScheme):
    preset: str = "W4A8"

    def build_recipe(self, options: dict[str, Any]) -> list[Any]:
        from compressed_tensors.quantization import preset_name_to_scheme
        from llmcompressor.modifiers.quantization import GPTQModifier

        scheme = preset_name_to_scheme(self.preset, ["Linear"])
        assert scheme.weights is not None
        scheme.weights.group_size = int(options["group_size"])
        return [
            *rotation_modifiers(options),
            GPTQModifier(
                config_groups={"group_0": scheme},
                ignore=list(options["ignore"]),
                dampening_frac=float(options["dampening_frac"]),
                block_size=int(options["block_size"]),
                actorder=gptq_actorder(str(options["actorder"])),
            ),
        ]


W4A8_DEFAULTS: dict[str, Any] = {
    "group_size": 128,
    "on_indivisible": "shrink",
    "dampening_frac": 0.01,
    "block_size": 128,
    "actorder": "static",
    **TRANSFORM_DEFAULTS,
    "ignore": list(DEFAULT_IGNORE),
}
W4A8_CHOICES = {k: v for k, v in GPTQ_CHOICES.items() if k != "symmetric"}

W4A8_INT = W4A8(
    name="w4a8-int",
    runtime_family="w4a8",
    description="INT4 weights in symmetric groups fitted by GPTQ; INT8 activations per "
    "token at run time (compressed-tensors W4A8). About 4× smaller linear weights.",
    needs_calibration=True,
    native_hardware="vLLM: W4A8 INT kernels on CPUs (dynamic 4-bit matmul, Arm KleidiAI "
    "first); NVIDIA GPUs have no INT4×INT8 GEMM in vLLM",
    weight_format="int4, grouped",
    activation_format="int8, dynamic per token",
    defaults=dict(W4A8_DEFAULTS),
    choices=W4A8_CHOICES,
    refused=GPTQ_REFUSED,
    preset="W4A8",
)

W4AFP8 = W4A8(
    name="w4afp8",
    runtime_family="w4afp8",
    description="INT4 weights in symmetric groups fitted by GPTQ; FP8 E4M3 activations per "
    "token at run time (compressed-tensors W4AFP8). About 4× smaller linear weights.",
    needs_calibration=True,
    native_hardware="vLLM: NVIDIA Hopper (sm90) mixed INT4×FP8 CUTLASS kernels; not vLLM's "
    "CPU build",
    weight_format="int4, grouped",
    activation_format="fp8 e4m3, dynamic per token",
    defaults=dict(W4A8_DEFAULTS),
    choices=W4A8_CHOICES,
    refused=GPTQ_REFUSED,
    preset="W4AFP8",
)
