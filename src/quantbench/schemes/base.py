"""What a quantization scheme is, independent of how llm-compressor runs it.

A scheme knows its options and their defaults, whether it needs calibration data, which
hardware runs it with native kernels, what it requires of a model's layer shapes (checked
before any compute), and how to build its llm-compressor recipe. Building the recipe imports
llm-compressor, so it happens only inside the quantization worker process.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

from quantbench.errors import UserError, did_you_mean
from quantbench.models import LinearLayer, ModelInfo

ModelForm = Literal["unquantized", "weight_only", "activations"]
"""How a variant's model is held in memory: quantbench.memory's estimates scale with it."""


def model_form(quantizes: bool, quantizes_activations: bool) -> ModelForm:
    """The form a scheme holds its model in: unquantized, decompressed weight-only, or
    fake-quantized with activation quantization (the largest in transformers)."""
    if not quantizes:
        return "unquantized"
    return "activations" if quantizes_activations else "weight_only"


DEFAULT_IGNORE: tuple[str, ...] = ("lm_head",)
KV_CACHE_OPTION = "kv_cache"
KV_CACHE_CHOICES: tuple[str, ...] = ("none", "fp8")
"""`kv_cache` is an option of every quantizing scheme, left out of its options unless set
(so variants made before it existed keep their stage keys): fp8 stores the attention keys and
values in FP8 E4M3 with one static scale per tensor per layer, fitted on calibration data,
following llm-compressor's KV-cache example."""


RuntimeFamily = Literal[
    "bf16",
    "fp16",
    "fp8",
    "int8",
    "w4a16",
    "w4a16-asym",
    "w8a16",
    "nvfp4a16",
    "nvfp4",
    "mxfp4a16",
    "w4a8",
    "w4afp8",
    "unknown",
]
"""The precision family a serving runtime picks its kernels by (what vLLM reads from a
compressed-tensors config): schemes that save the same format share one."""


@dataclass(frozen=True)
class Preflight:
    """The outcome of checking a scheme against a model before any compute."""

    resolved_options: dict[str, Any]
    decisions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    memory_bytes: int | None = None
    """Estimated peak resident memory to quantize, bytes (what a cluster task asks for)."""


def is_ignored(layer_name: str, ignore: tuple[str, ...] | list[str]) -> bool:
    """Match llm-compressor's ignore semantics: exact/suffix names or 're:' regexes."""
    for pattern in ignore:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], layer_name):
                return True
        elif layer_name == pattern or layer_name.endswith("." + pattern):
            return True
    return False


@dataclass(frozen=True)
class Scheme:
    """Base for all schemes. Subclasses override `preflight` and `build_recipe`."""

    name: str
    description: str
    needs_calibration: bool
    native_hardware: str
    weight_format: str
    activation_format: str
    defaults: dict[str, Any]
    quantizes: bool = True
    choices: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    """Allowed values of the options that take one of a few (e.g. `actorder`)."""
    refused: dict[tuple[str, Any], str] = field(default_factory=dict)
    """(option, value) pairs refused with a reason: values a library no longer offers."""
    runtime_family: RuntimeFamily = "unknown"
    """Which runtime kernels serve the saved format (backends/vllm_support.py reads it; an
    unknown family is never started on vLLM)."""

    @property
    def quantizes_activations(self) -> bool:
        """Whether the saved model quantizes activations too (transformers then runs it in
        fake-quant form, which holds more memory than a weight-only one)."""
        return self.quantizes and self.activation_format not in ("bf16", "fp16")

    @property
    def model_form(self) -> ModelForm:
        """How a model of this scheme is held in memory (`quantbench.memory`)."""
        return model_form(self.quantizes, self.quantizes_activations)

    @property
    def option_names(self) -> tuple[str, ...]:
        if self.quantizes and KV_CACHE_OPTION not in self.defaults:
            return (*self.defaults, KV_CACHE_OPTION)
        return tuple(self.defaults)

    def listed_options(self) -> dict[str, Any]:
        """The options with their defaults, as `quantbench schemes` shows them."""
        listed = dict(self.defaults)
        if self.quantizes:
            listed.setdefault(KV_CACHE_OPTION, "none")
        return listed

    def allowed_values(self, option: str) -> tuple[Any, ...] | None:
        if option == KV_CACHE_OPTION and self.quantizes:
            return KV_CACHE_CHOICES
        return self.choices.get(option)

    def resolve_options(self, requested: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with the user's options; unknown options are a user error."""

        for key in requested:
            if key not in self.option_names:
                known = ", ".join(self.option_names) or "none"
                raise UserError(
                    f"scheme '{self.name}' has no option '{key}'"
                    f"{did_you_mean(key, self.option_names)}; its options: {known}"
                )
        for key, value in requested.items():
            reason = self.refused.get((key, value)) if isinstance(value, Hashable) else None
            if reason:
                raise UserError(f"scheme '{self.name}' option {key}={value!r}: {reason}")
            allowed = self.allowed_values(key)
            if allowed is not None and value not in allowed:
                raise UserError(
                    f"scheme '{self.name}' option '{key}' must be one of "
                    f"{', '.join(map(str, allowed))}, not {value!r}"
                )
        options = {**self.defaults, **requested}
        if "ignore" in options:
            options["ignore"] = list(options["ignore"])
        return options

    def targeted_layers(self, model: ModelInfo, options: dict[str, Any]) -> list[LinearLayer]:
        ignore = options.get("ignore", list(DEFAULT_IGNORE))
        return [layer for layer in model.linear_layers if not is_ignored(layer.name, ignore)]

    def preflight(self, model: ModelInfo, requested: dict[str, Any]) -> Preflight:
        options = self.resolve_options(requested)
        result = Preflight(resolved_options=options)
        if (
            self.quantizes
            and model.tied_embeddings
            and not is_ignored("lm_head", options.get("ignore", []))
        ):
            result.problems.append(
                f"{self.name}: lm_head shares its weights with the input embeddings (tied); "
                "quantizing it would also change the embeddings. Keep 'lm_head' in 'ignore'"
            )
        elif self.quantizes and model.tied_embeddings:
            result.notes.append("embeddings are tied to lm_head, which stays unquantized (BF16)")
        if self.quantizes and not self.targeted_layers(model, options):
            result.problems.append(
                f"{self.name}: the ignore list leaves no Linear layer to quantize"
            )
        return result

    def linear_bytes(self, layer: LinearLayer, options: dict[str, Any]) -> int | None:
        """Bytes one Linear layer's weight takes in this scheme's artifact, where the scheme
        can say (a mixed-precision candidate must); None otherwise."""
        return None

    def sensitivity_settings(self, options: dict[str, Any]) -> dict[str, Any] | None:
        """What a variant of this scheme needs screened by the study's sensitivity stage
        (its key's inputs), or None when it reads no sensitivity table."""
        return None

    def calibrates(self, options: dict[str, Any]) -> bool:
        """Whether a variant made with `options` needs calibration data: the scheme's own
        need, or an option that does (static FP8 KV-cache scales are fitted on samples)."""
        return self.needs_calibration or options.get("kv_cache", "none") != "none"

    def build_recipe(self, options: dict[str, Any]) -> list[Any]:
        """llm-compressor modifiers for `oneshot`; runs inside the worker process only."""
        raise NotImplementedError(f"{self.name} does not quantize")

    def recipe(self, options: dict[str, Any]) -> list[Any]:
        """The scheme's recipe plus what every scheme offers (an FP8 KV cache), as the
        quantization worker runs it; llm-compressor saves it as the artifact's recipe.yaml."""
        modifiers = self.build_recipe(options)
        if options.get(KV_CACHE_OPTION, "none") == "fp8":
            attach_fp8_kv_cache(modifiers)
        return modifiers

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "needs_calibration": self.needs_calibration,
            "native_hardware": self.native_hardware,
            "weights": self.weight_format,
            "activations": self.activation_format,
            "options": self.defaults,
        }


def attach_fp8_kv_cache(modifiers: list[Any]) -> None:
    """Give the last quantizing modifier of a recipe llm-compressor's FP8 KV-cache scheme
    (examples/quantization_kv_cache: 8-bit float, per tensor, static, symmetric)."""
    from compressed_tensors.quantization import QuantizationArgs
    from llmcompressor.modifiers.quantization.quantization.mixin import QuantizationMixin

    positions = [i for i, m in enumerate(modifiers) if isinstance(m, QuantizationMixin)]
    if not positions:
        raise ValueError("kv_cache: fp8 needs a quantizing modifier in the recipe")
    last = modifiers[positions[-1]]
    # Built anew with the same explicit arguments: the modifier resolves its quantization
    # config while it is validated, so setting the field afterwards would be ignored.
    given = {name: getattr(last, name) for name in last.model_fields_set}
    modifiers[positions[-1]] = type(last)(
        **given,
        kv_cache_scheme=QuantizationArgs(
            num_bits=8, type="float", strategy="tensor", dynamic=False, symmetric=True
        ),
    )
