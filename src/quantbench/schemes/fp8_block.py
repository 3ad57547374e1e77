"""FP8 with 128×128 weight blocks (DeepSeek-V3 style, compressed-tensors' `FP8_BLOCK`).

Each 128×128 tile of a weight matrix gets one FP8 scale; activations are quantized to FP8 at
run time in groups of 128 along the input width. No calibration. The block must divide both
dimensions of a layer: the activation groups tile the input width (compressed-tensors fails
otherwise) and vLLM's block kernels tile the output rows. Pre-flight shrinks the block to the
largest power of two that divides every targeted layer (SmolLM2's 576 = 9 × 64 takes 64), or
leaves the offending layers unquantized (`on_indivisible: skip-layers`). The recipe follows
llm-compressor's examples/quantization_w8a8_fp8/fp8_block_example.py (a QuantizationModifier
with the FP8_BLOCK preset), with the fitted block written into the preset's arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.models import ModelInfo
from quantbench.schemes.base import DEFAULT_IGNORE, Preflight, Scheme
from quantbench.schemes.shapes import fit_size


@dataclass(frozen=True)
class FP8Block(Scheme):
    def preflight(self, model: ModelInfo, requested: dict[str, Any]) -> Preflight:
        result = super().preflight(model, requested)
        options = result.resolved_options
        dims = {
            layer.name: (layer.out_features, layer.in_features)
            for layer in self.targeted_layers(model, options)
        }
        fit = fit_size(
            self.name,
            "weight block",
            int(options["weight_block"]),
            dims,
            str(options["on_indivisible"]),
            dims_label="layer dimension(s)",
        )
        if fit.problem:
            result.problems.append(fit.problem)
        if fit.decision:
            result.decisions.append(fit.decision)
        options["weight_block"] = fit.size
        options["ignore"] = [*options["ignore"], *fit.skipped_layers]
        return result

    def build_recipe(self, options: dict[str, Any]) -> list[Any]:
        from compressed_tensors.quantization import preset_name_to_scheme
        from llmcompressor.modifiers.quantization import QuantizationModifier

        block = int(options["weight_block"])
        scheme = preset_name_to_scheme("FP8_BLOCK", ["Linear"])
        assert scheme.weights is not None and scheme.input_activations is not None
        scheme.weights.block_structure = [block, block]
        scheme.input_activations.group_size = block
        return [
            QuantizationModifier(config_groups={"group_0": scheme}, ignore=list(options["ignore"]))
        ]


FP8_BLOCK = FP8Block(
    name="fp8-block",
    runtime_family="fp8",
    description="FP8 E4M3 weights with one scale per 128×128 block, FP8 activations "
    "quantized at run time per group of 128; no calibration. About 2× smaller linear weights.",
    needs_calibration=False,
    native_hardware="vLLM: NVIDIA GPUs with compute capability ≥ 8.9 (block FP8 GEMM; "
    "DeepGEMM on Hopper); sm80–86 as FP8 weight-only (Marlin); not vLLM's CPU build",
    weight_format="fp8 e4m3, 128×128 blocks",
    activation_format="fp8 e4m3, dynamic per group of 128",
    defaults={
        "weight_block": 128,
        "on_indivisible": "shrink",
        "ignore": list(DEFAULT_IGNORE),
    },
    choices={"on_indivisible": ("shrink", "skip-layers")},
)
