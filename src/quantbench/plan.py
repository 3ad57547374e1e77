"""From a study config to the stages it needs, with their content keys, and nothing run.

Keys depend on what the user asked for (options with defaults filled in), the model's
content fingerprint, upstream stage keys and the versions of the libraries that shape the
output, never on wall-clock time or paths. Pre-flight decisions (e.g. a smaller group size)
are a deterministic function of these, so they need no place in the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantbench.calibration import calibration_ref
from quantbench.config import CalibrationConfig, SchemeEntry, StudyConfig
from quantbench.errors import UserError
from quantbench.hardware import installed_version
from quantbench.models import ResolvedModel
from quantbench.schemes import Scheme, get_scheme
from quantbench.store import StageRef, content_key

QUANTIZE_STAGE_VERSION = 1
SENSITIVITY_STAGE_VERSION = 1
_KEY_LIBRARIES = ("torch", "transformers", "llmcompressor", "compressed-tensors")
_NAME_TAGS = {
    "group_size": "g",
    "smoothing_strength": "sq",
    "dampening_frac": "d",
    "block_size": "b",
}


def library_versions(names: tuple[str, ...] = _KEY_LIBRARIES) -> dict[str, str]:
    return {name: installed_version(name) or "absent" for name in names}


def variant_name(entry: SchemeEntry, defaults: dict[str, Any] | None = None) -> str:
    """A readable name that encodes the options that differ from the scheme's defaults."""
    if entry.name:
        return entry.name
    parts = [entry.scheme]
    defaults = defaults or {}
    for option, value in entry.options().items():
        default = defaults.get(option)
        if value == default or (option == "ignore" and list(value) == list(default or [])):
            continue
        if option in _NAME_TAGS:
            parts.append(
                f"{_NAME_TAGS[option]}{value:g}"
                if isinstance(value, float)
                else f"{_NAME_TAGS[option]}{value}"
            )
        elif option == "on_indivisible":
            parts.append(str(value))
        elif option == "ignore":
            parts.append("ign" + content_key({"ignore": list(value)})[:4])
        else:  # a scheme's own option, e.g. actorder-none, kvcache-fp8
            parts.append(f"{option.replace('_', '')}-{str(value).lower()}")
    return "-".join(parts)


_CALIBRATION_TAGS = {"num_samples": "n", "seq_len": "len", "seed": "seed"}


def calibration_suffix(axes: dict[str, Any]) -> str:
    """'n16', 'len256-seed1', 'src-alpaca' for the calibration settings a variant was made with."""
    parts = []
    for key, value in axes.items():
        name = key.removeprefix("calibration.")
        if name in _CALIBRATION_TAGS:
            parts.append(f"{_CALIBRATION_TAGS[name]}{value}")
        elif name == "source":
            parts.append("src-" + (Path(str(value)).stem or str(value))[:16])
    return "-".join(parts)


@dataclass(frozen=True)
class VariantPlan:
    name: str
    scheme: Scheme
    requested: dict[str, Any]
    options: dict[str, Any]
    quantize: StageRef
    calibration: StageRef | None = None
    calibration_config: CalibrationConfig | None = None
    sensitivity: StageRef | None = None
    """The sensitivity stage a mixed-precision variant's allocation is searched from."""
    axes: dict[str, Any] = field(default_factory=dict)
    """The study-matrix coordinates of this variant, e.g. {'group_size': 32,
    'calibration.num_samples': 16}; empty outside a matrix."""

    @property
    def needs_calibration(self) -> bool:
        return self.scheme.calibrates(self.options)


@dataclass(frozen=True)
class StudyPlan:
    config: StudyConfig
    model: ResolvedModel
    calibrations: dict[str, tuple[StageRef, CalibrationConfig]]
    """Calibration stages by key, each with its (scalar) settings."""
    variants: tuple[VariantPlan, ...]

    @property
    def calibration(self) -> StageRef | None:
        """The first calibration stage (the only one outside a calibration matrix)."""
        return next((ref for ref, _ in self.calibrations.values()), None)


def build_plan(config: StudyConfig, model: ResolvedModel) -> StudyPlan:
    """Expand the study matrix, resolve schemes and options and compute every stage key;
    report all problems at once."""
    problems: list[str] = []
    settings = config.calibration.settings()
    resolved: list[tuple[str, Scheme, dict[str, Any], dict[str, Any], dict[str, Any]]] = []
    for grid_entry in config.scheme_entries():
        for entry, axes in grid_entry.expand():
            try:
                scheme = get_scheme(entry.scheme)
                requested = entry.options()
                options = scheme.resolve_options(requested)
            except UserError as exc:
                problems.append(str(exc))
                continue
            resolved.append(
                (variant_name(entry, scheme.defaults), scheme, requested, options, axes)
            )
    if problems:
        raise UserError("; ".join(sorted(set(problems))))

    calibrations: dict[str, tuple[StageRef, CalibrationConfig]] = {}
    versions = library_versions()
    variants = []
    for name, scheme, requested, options, axes in resolved:
        calibrates = scheme.calibrates(options)
        choices = settings if calibrates else [(settings[0][0], {})]
        for calibration_config, calibration_axes in choices:
            ref = None
            variant = name
            if calibrates:
                ref = calibration_ref(calibration_config, model)
                calibrations.setdefault(ref.key, (ref, calibration_config))
                if len(settings) > 1:
                    variant = f"{name}-{calibration_suffix(calibration_axes)}"
            payload = {
                "stage": "quantize",
                "v": QUANTIZE_STAGE_VERSION,
                "model": model.fingerprint,
                "scheme": scheme.name,
                "options": options,
                "calibration": ref.key if ref else None,
                "versions": versions,
            }
            if ref:
                payload["compute_dtype"] = config.calibration.compute_dtype
            screen = scheme.sensitivity_settings(options)
            sensitivity = None
            if screen is not None and ref is not None:
                sensitivity = StageRef(
                    "sensitivity",
                    content_key(
                        {
                            "stage": "sensitivity",
                            "v": SENSITIVITY_STAGE_VERSION,
                            "model": model.fingerprint,
                            "calibration": ref.key,
                            "versions": versions,
                            **screen,
                        }
                    ),
                )
                payload["sensitivity"] = sensitivity.key
            variants.append(
                VariantPlan(
                    variant,
                    scheme,
                    requested,
                    options,
                    StageRef("quantize", content_key(payload)),
                    calibration=ref,
                    calibration_config=calibration_config if ref else None,
                    sensitivity=sensitivity,
                    axes={**axes, **calibration_axes},
                )
            )
    names = [v.name for v in variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(
            f"variant name(s) {', '.join(duplicates)} appear twice; give each a distinct 'name'"
        )
    return StudyPlan(config, model, calibrations, tuple(variants))
