"""What a quantization scheme is, independent of how llm-compressor runs it.

A scheme knows its options and their defaults, whether it needs calibration data, which
hardware runs it with native kernels, what it requires of a model's layer shapes (checked
before any compute), and how to build its llm-compressor recipe. Building the recipe imports
llm-compressor, so it happens only inside the quantization worker process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from quantbench.models import LinearLayer, ModelInfo

DEFAULT_IGNORE: tuple[str, ...] = ("lm_head",)


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

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(self.defaults)

    def resolve_options(self, requested: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with the user's options; unknown options are a user error."""
        from quantbench.errors import UserError, did_you_mean

        for key in requested:
            if key not in self.defaults:
                allowed = ", ".join(self.option_names) or "none"
                raise UserError(
                    f"scheme '{self.name}' has no option '{key}'"
                    f"{did_you_mean(key, self.option_names)}; its options: {allowed}"
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

    def build_recipe(self, options: dict[str, Any]) -> list[Any]:
        """llm-compressor modifiers for `oneshot`; runs inside the worker process only."""
        raise NotImplementedError(f"{self.name} does not quantize")

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
