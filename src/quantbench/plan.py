"""From a study config to the stages it needs, with their content keys, and nothing run.

Keys depend on what the user asked for (options with defaults filled in), the model's
content fingerprint, upstream stage keys and the versions of the libraries that shape the
output, never on wall-clock time or paths. Pre-flight decisions (e.g. a smaller group size)
are a deterministic function of these, so they need no place in the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from quantbench.calibration import calibration_ref
from quantbench.config import SchemeEntry, StudyConfig
from quantbench.errors import UserError
from quantbench.models import ResolvedModel
from quantbench.schemes import Scheme, get_scheme
from quantbench.store import StageRef, content_key

QUANTIZE_STAGE_VERSION = 1
_KEY_LIBRARIES = ("torch", "transformers", "llmcompressor", "compressed-tensors")
_NAME_TAGS = {
    "group_size": "g",
    "smoothing_strength": "sq",
    "dampening_frac": "d",
    "block_size": "b",
}


def library_versions(names: tuple[str, ...] = _KEY_LIBRARIES) -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


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
    return "-".join(parts)


@dataclass(frozen=True)
class VariantPlan:
    name: str
    scheme: Scheme
    requested: dict[str, Any]
    options: dict[str, Any]
    quantize: StageRef

    @property
    def needs_calibration(self) -> bool:
        return self.scheme.needs_calibration


@dataclass(frozen=True)
class StudyPlan:
    config: StudyConfig
    model: ResolvedModel
    calibration: StageRef | None
    variants: tuple[VariantPlan, ...]


def build_plan(config: StudyConfig, model: ResolvedModel) -> StudyPlan:
    """Resolve schemes and options and compute every stage key; report all problems at once."""
    problems: list[str] = []
    resolved: list[tuple[str, Scheme, dict[str, Any], dict[str, Any]]] = []
    for entry in config.schemes:
        try:
            scheme = get_scheme(entry.scheme)
            requested = entry.options()
            options = scheme.resolve_options(requested)
        except UserError as exc:
            problems.append(str(exc))
            continue
        resolved.append((variant_name(entry, scheme.defaults), scheme, requested, options))
    names = [name for name, *_ in resolved]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(
            f"variant name(s) {', '.join(duplicates)} appear twice; give each a distinct 'name'"
        )
    if problems:
        raise UserError("; ".join(problems))

    calibration = (
        calibration_ref(config.calibration, model)
        if any(scheme.needs_calibration for _, scheme, _, _ in resolved)
        else None
    )
    versions = library_versions()
    variants = []
    for name, scheme, requested, options in resolved:
        payload = {
            "stage": "quantize",
            "v": QUANTIZE_STAGE_VERSION,
            "model": model.fingerprint,
            "scheme": scheme.name,
            "options": options,
            "calibration": calibration.key if scheme.needs_calibration and calibration else None,
            "versions": versions,
        }
        variants.append(
            VariantPlan(
                name, scheme, requested, options, StageRef("quantize", content_key(payload))
            )
        )
    return StudyPlan(config, model, calibration, tuple(variants))
