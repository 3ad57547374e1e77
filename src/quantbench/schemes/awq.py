"""AWQ: activation-aware scaling, then asymmetric INT4 weights in groups (W4A16_ASYM).

AWQ looks at calibration activations to find the input channels that matter most, scales
them up (and the preceding norm or layer down, so the model computes the same function)
before rounding, then quantizes round-to-nearest with one scale and zero point per group.
The recipe follows llm-compressor's examples/awq/llama_example.py (W4A16_ASYM,
duo_scaling "both") in 0.14's form: `AWQModifier` (now a transform) ahead of a
`QuantizationModifier` with the `W4A16_ASYM` preset, its group size fitted by pre-flight.
`duo_scaling` is the modifier's own option: true scales by activations and weights, false by
activations only, "both" searches half its grid each way; `n_grid` is its grid size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.schemes.base import DEFAULT_IGNORE
from quantbench.schemes.grouped import GroupedScheme
from quantbench.schemes.rotations import TRANSFORM_CHOICES, TRANSFORM_DEFAULTS, rotation_modifiers


def allow_awq_without_accelerator() -> None:
    """Let AWQ run on a CPU-only torch build.

    llm-compressor 0.14's AWQ pins its cached activations in page-locked memory before each
    grid search (`IntermediatesCache.pin_memory`), which only speeds up copies to a GPU and
    raises "Cannot access accelerator device when none is available" on a CPU-only torch.
    Without an accelerator the pinning has nothing to speed up, so it is skipped.
    """
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        return

    def keep_unpinned(self: Any, batch_index: int, input_names: Any = None) -> None:
        return None

    IntermediatesCache.pin_memory = keep_unpinned  # type: ignore[method-assign]


@dataclass(frozen=True)
class W4A16AWQ(GroupedScheme):
    def build_recipe(self, options: dict[str, Any]) -> list[Any]:
        from compressed_tensors.quantization import preset_name_to_scheme
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform import AWQModifier

        allow_awq_without_accelerator()
        scheme = preset_name_to_scheme("W4A16_ASYM", ["Linear"])
        assert scheme.weights is not None
        scheme.weights.group_size = int(options["group_size"])
        return [
            *rotation_modifiers(options),
            AWQModifier(duo_scaling=options["duo_scaling"], n_grid=int(options["n_grid"])),
            QuantizationModifier(config_groups={"group_0": scheme}, ignore=list(options["ignore"])),
        ]


W4A16_AWQ = W4A16AWQ(
    name="w4a16-awq",
    runtime_family="w4a16-asym",
    description="AWQ activation-aware channel scaling, then INT4 weights in groups "
    "(asymmetric: a scale and a zero point per group, W4A16_ASYM); activations stay 16-bit. "
    "About 4× smaller linear weights.",
    needs_calibration=True,
    native_hardware="vLLM: NVIDIA GPUs sm80+ (Marlin with zero points); vLLM's CPU build: not "
    "shown to serve it here",
    weight_format="int4, grouped, asymmetric",
    activation_format="bf16",
    defaults={
        "group_size": 128,
        "on_indivisible": "shrink",
        "duo_scaling": "both",
        "n_grid": 20,
        **TRANSFORM_DEFAULTS,
        "ignore": list(DEFAULT_IGNORE),
    },
    choices={
        "duo_scaling": (True, False, "both"),
        "on_indivisible": ("shrink", "skip-layers"),
        "transform": TRANSFORM_CHOICES,
    },
)
