"""4-bit floating-point weights (FP4 E2M1): NVIDIA's NVFP4 and the OCP microscaling MXFP4.

NVFP4 gives every 16 weights one FP8 (E4M3) scale under one FP32 global scale per tensor;
`nvfp4` also quantizes activations the same way at run time (their global scale is fitted on
calibration data), `nvfp4a16` leaves them 16-bit. MXFP4 gives every 32 weights one
power-of-two (E8M0) scale. The recipes follow llm-compressor's examples
(quantization_w4a16_fp4/nvfp4 and /mxfp4, quantization_w4a4_fp4): a `QuantizationModifier`
with the compressed-tensors preset of the same name. The group size is the format's, fixed: layers
whose input width it does not divide are left unquantized.

compressed-tensors 0.19 decompresses all three on the CPU, so transformers scores them here;
their speed is emulated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.models import ModelInfo
from quantbench.schemes.base import DEFAULT_IGNORE, Preflight, Scheme
from quantbench.schemes.rotations import (
    TRANSFORM_CHOICES,
    TRANSFORM_DEFAULTS,
    check_transform,
    rotation_modifiers,
)
from quantbench.schemes.shapes import fit_size


@dataclass(frozen=True)
class FP4(Scheme):
    preset: str = "NVFP4A16"
    group_size: int = 16
    """Weights per scale, fixed by the format."""

    def preflight(self, model: ModelInfo, requested: dict[str, Any]) -> Preflight:
        result = super().preflight(model, requested)
        options = result.resolved_options
        widths = {
            layer.name: (layer.in_features,) for layer in self.targeted_layers(model, options)
        }
        fit = fit_size(self.name, f"{self.preset} group size", self.group_size, widths, "fixed")
        if fit.problem:
            result.problems.append(fit.problem)
        if fit.decision:
            result.decisions.append(fit.decision)
        options["ignore"] = [*options["ignore"], *fit.skipped_layers]
        check_transform(self.name, model, options, result)
        return result

    def build_recipe(self, options: dict[str, Any]) -> list[Any]:
        from llmcompressor.modifiers.quantization import QuantizationModifier

        return [
            *rotation_modifiers(options),
            QuantizationModifier(
                targets="Linear", scheme=self.preset, ignore=list(options["ignore"])
            ),
        ]


FP4_DEFAULTS: dict[str, Any] = {**TRANSFORM_DEFAULTS, "ignore": list(DEFAULT_IGNORE)}
FP4_CHOICES: dict[str, tuple[Any, ...]] = {"transform": TRANSFORM_CHOICES}

NVFP4A16 = FP4(
    name="nvfp4a16",
    runtime_family="nvfp4a16",
    description="NVFP4 weights (FP4 E2M1, one FP8 scale per 16 values, one FP32 global "
    "scale per tensor); activations stay 16-bit. No calibration. About 3.6× smaller linear "
    "weights.",
    needs_calibration=False,
    native_hardware="vLLM: NVIDIA Blackwell (sm100+) FP4 kernels; sm80–90 through Marlin "
    "(weight-only); not vLLM's CPU build",
    weight_format="fp4 e2m1, groups of 16 (fp8 scales)",
    activation_format="bf16",
    defaults=dict(FP4_DEFAULTS),
    choices=FP4_CHOICES,
    preset="NVFP4A16",
    group_size=16,
)

NVFP4 = FP4(
    name="nvfp4",
    runtime_family="nvfp4",
    description="NVFP4 weights and activations (FP4 E2M1 in groups of 16 with FP8 scales; "
    "activation global scales fitted on calibration data, group scales at run time).",
    needs_calibration=True,
    native_hardware="vLLM: NVIDIA Blackwell (sm100+) FP4 GEMM; older GPUs fall back to "
    "weight-only Marlin; not vLLM's CPU build",
    weight_format="fp4 e2m1, groups of 16 (fp8 scales)",
    activation_format="fp4 e2m1, dynamic groups of 16 (static global scale)",
    defaults=dict(FP4_DEFAULTS),
    choices=FP4_CHOICES,
    preset="NVFP4",
    group_size=16,
)

MXFP4A16 = FP4(
    name="mxfp4a16",
    runtime_family="mxfp4a16",
    description="MXFP4 weights (FP4 E2M1, one power-of-two E8M0 scale per 32 values); "
    "activations stay 16-bit. No calibration.",
    needs_calibration=False,
    native_hardware="vLLM: MXFP4 weight-only on recent NVIDIA GPUs (Marlin sm80+; native "
    "on Blackwell); not vLLM's CPU build",
    weight_format="fp4 e2m1, groups of 32 (e8m0 scales)",
    activation_format="bf16",
    defaults=dict(FP4_DEFAULTS),
    choices=FP4_CHOICES,
    preset="MXFP4A16",
    group_size=32,
)
