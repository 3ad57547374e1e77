"""Mixed precision: one weight format per group of layers, chosen under a budget.

The study's sensitivity stage (`quantbench.sensitivity`) measures, for every group of
Linear layers and every candidate scheme, how much KL to the baseline quantizing only that
group adds; the search (`quantbench.stats.knapsack`) picks one candidate per group to
minimize the predicted KL under a size budget (`target_size`) or the size under a KL budget
(`max_kl`). Under a KL budget the quantization worker then measures the GPTQ-quantized
allocation on the search sample and, the screen's round-to-nearest figures being larger than
GPTQ's, searches once more with the screen rescaled by that measured ratio, keeping the new
allocation only if its measured KL is within `kl_headroom` × `max_kl` (headroom for the
difference between the search sample and the evaluation windows). This scheme turns the
allocation into one llm-compressor recipe: one GPTQ
modifier whose `config_groups` target exactly the allocated layers (bf16 layers are left
unquantized), so the artifact is one compressed-tensors checkpoint.

Groups follow how serving runtimes fuse layers: by default (`granularity: fused`) a decoder
layer's q/k/v projections form one group and its gate/up projections another, since vLLM
runs each fused set as one Linear and refuses shards of it in different formats; `linear`
makes every Linear its own group (finer, but such a mix is for transformers only).

Candidates are weight-only GPTQ schemes (and bf16, "leave it unquantized"): weight-only
formats can be screened by round-to-nearest in memory, and one GPTQ pass then serves every
group. Their GPTQ settings (dampening, block size, activation order) must agree, since one
modifier runs them all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quantbench.errors import UserError
from quantbench.models import LinearLayer, ModelInfo
from quantbench.schemes import get_scheme
from quantbench.schemes.base import DEFAULT_IGNORE, Preflight, Scheme, is_ignored
from quantbench.schemes.baseline import Baseline
from quantbench.schemes.gptq import GPTQWeightOnly, gptq_actorder
from quantbench.units import MIB, parse_size

FUSED_KINDS = {
    "q_proj": "qkv",
    "k_proj": "qkv",
    "v_proj": "qkv",
    "gate_proj": "gate_up",
    "up_proj": "gate_up",
}
"""Linear layers a serving runtime fuses into one (vLLM's qkv_proj and gate_up_proj)."""
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")
GPTQ_SHARED_OPTIONS = ("dampening_frac", "block_size", "actorder")
DEFAULT_CANDIDATES = ("w4a16-gptq", "w8a16-gptq")


@dataclass(frozen=True)
class LayerGroup:
    """Linear layers that always share one format: a decoder layer's kind of projection."""

    name: str
    layer: int | None
    kind: str
    linears: tuple[LinearLayer, ...]


def layer_groups(layers: Sequence[LinearLayer], granularity: str) -> list[LayerGroup]:
    """The groups of `layers`, in model order: `layers.<i>.<kind>` for a decoder layer's
    projections (q/k/v as `qkv`, gate/up as `gate_up` when fused; `o`, `down`), or the
    layer's own name outside the decoder layers or with `linear` granularity."""
    grouped: dict[str, list[LinearLayer]] = {}
    places: dict[str, tuple[int | None, str]] = {}
    for linear in layers:
        match = _LAYER_INDEX.search(linear.name)
        leaf = linear.name.rsplit(".", 1)[-1]
        place: tuple[int | None, str]
        if match is None:
            key, place = linear.name, (None, leaf)
        else:
            index = int(match[1])
            kind = FUSED_KINDS.get(leaf, leaf) if granularity == "fused" else leaf
            kind = {"o_proj": "o", "down_proj": "down"}.get(kind, kind)
            key, place = f"layers.{index}.{kind}", (index, kind)
        grouped.setdefault(key, []).append(linear)
        places[key] = place
    return [
        LayerGroup(key, places[key][0], places[key][1], tuple(members))
        for key, members in grouped.items()
    ]


@dataclass(frozen=True)
class GroupTable:
    """Every group's bytes under every candidate, and the bytes that no choice changes
    (embeddings, norms, layers left out), all as the artifact stores them."""

    groups: tuple[LayerGroup, ...]
    candidates: tuple[str, ...]
    sizes: tuple[tuple[int, ...], ...]
    fixed_bytes: int

    @property
    def smallest_bytes(self) -> int:
        return self.fixed_bytes + sum(min(row) for row in self.sizes)

    @property
    def largest_bytes(self) -> int:
        return self.fixed_bytes + sum(max(row) for row in self.sizes)


def _candidate_schemes(names: Sequence[str]) -> list[Scheme]:
    return [get_scheme(name) for name in names]


@dataclass(frozen=True)
class MixedPrecision(Scheme):
    def resolve_options(self, requested: dict[str, Any]) -> dict[str, Any]:
        options = super().resolve_options(requested)
        budgets = [k for k in ("target_size", "max_kl") if options.get(k) is not None]
        if len(budgets) != 1:
            raise UserError(
                f"scheme '{self.name}' needs exactly one budget: target_size (e.g. 119MiB) or "
                f"max_kl (nats per token), not {' and '.join(budgets) or 'none'}"
            )
        if options.get("target_size") is not None:
            try:
                parse_size(options["target_size"])
            except ValueError as exc:
                raise UserError(f"scheme '{self.name}' option target_size: {exc}") from None
        if options.get("max_kl") is not None:
            value = options["max_kl"]
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise UserError(
                    f"scheme '{self.name}' option max_kl must be a positive number of nats "
                    f"per token, not {value!r}"
                )
            options["max_kl"] = float(value)
        candidates = options["candidates"]
        if isinstance(candidates, str):
            candidates = [c.strip() for c in candidates.split(",") if c.strip()]
        options["candidates"] = list(candidates)
        if len(set(options["candidates"])) < 2 or len(set(candidates)) != len(candidates):
            raise UserError(
                f"scheme '{self.name}' needs at least two distinct candidates, not "
                f"{', '.join(candidates) or 'none'}"
            )
        for scheme in _candidate_schemes(options["candidates"]):
            if not _is_candidate(scheme):
                raise UserError(
                    f"scheme '{self.name}': '{scheme.name}' cannot be a candidate; candidates "
                    "are weight-only GPTQ schemes (w4a16-gptq, w8a16-gptq) and bf16"
                )
        headroom = options["kl_headroom"]
        if isinstance(headroom, bool) or not isinstance(headroom, int | float):
            headroom = -1.0
        if not 0 < headroom <= 1:
            raise UserError(
                f"scheme '{self.name}' option kl_headroom must be in (0, 1], not "
                f"{options['kl_headroom']!r}"
            )
        options["kl_headroom"] = float(headroom)
        if not isinstance(options["search_tokens"], int) or options["search_tokens"] < 16:
            raise UserError(f"scheme '{self.name}' option search_tokens must be at least 16")
        return options

    def candidate_options(self, model: ModelInfo, options: dict[str, Any]) -> Preflight:
        """Every candidate's own pre-flight on `model` (its group size fitted, say), merged:
        `resolved_options` maps each candidate to its resolved options."""
        resolved: dict[str, Any] = {}
        merged = Preflight(resolved_options=resolved)
        for scheme in _candidate_schemes(options["candidates"]):
            own = scheme.preflight(
                model, {"ignore": tuple(options["ignore"])} if scheme.quantizes else {}
            )
            resolved[scheme.name] = own.resolved_options
            merged.problems.extend(own.problems)
            merged.decisions.extend(f"{scheme.name}: {d}" for d in own.decisions)
        gptq = [
            n
            for n, s in zip(
                options["candidates"], _candidate_schemes(options["candidates"]), strict=True
            )
            if s.quantizes
        ]
        for option in GPTQ_SHARED_OPTIONS:
            values = {str(resolved[n].get(option)) for n in gptq}
            if len(values) > 1:
                merged.problems.append(
                    f"{self.name}: the candidates' {option} differ ({', '.join(sorted(values))}); "
                    "one GPTQ pass quantizes every group, so they must agree"
                )
        return merged

    def group_table(self, model: ModelInfo, options: dict[str, Any]) -> GroupTable:
        """Groups of the targeted Linear layers with their bytes under each candidate."""
        candidates = _candidate_schemes(options["candidates"])
        own = self.candidate_options(model, options).resolved_options
        targeted = self.targeted_layers(model, options)
        skipped = {
            name
            for scheme in candidates
            for name in own[scheme.name].get("ignore", [])
            if scheme.quantizes
        }
        kept = [layer for layer in targeted if not is_ignored(layer.name, sorted(skipped))]
        groups = layer_groups(kept, str(options["granularity"]))
        sizes = []
        for group in groups:
            row = []
            for scheme in candidates:
                total = 0
                for linear in group.linears:
                    size = scheme.linear_bytes(linear, own[scheme.name])
                    assert size is not None  # _is_candidate
                    total += size
                row.append(total)
            sizes.append(tuple(row))
        chosen = sum(
            2 * linear.in_features * linear.out_features for g in groups for linear in g.linears
        )
        return GroupTable(
            tuple(groups), tuple(options["candidates"]), tuple(sizes), model.bf16_bytes - chosen
        )

    def preflight(self, model: ModelInfo, requested: dict[str, Any]) -> Preflight:
        result = super().preflight(model, requested)
        options = result.resolved_options
        merged = self.candidate_options(model, options)
        result.problems.extend(merged.problems)
        result.decisions.extend(merged.decisions)
        if result.problems:
            return result
        table = self.group_table(model, options)
        smallest, largest = table.smallest_bytes, table.largest_bytes
        if options.get("target_size") is not None:
            budget = parse_size(options["target_size"])
            if budget < smallest:
                result.problems.append(
                    f"{self.name}: target_size {options['target_size']} ({budget / MIB:.1f} MiB) "
                    f"is below the smallest allocation of these candidates, "
                    f"{smallest / MIB:.1f} MiB ({table.candidates[0]} and the like everywhere); "
                    f"raise it or add a smaller candidate"
                )
            elif budget >= largest:
                result.notes.append(
                    f"target_size {budget / MIB:.1f} MiB holds even the largest allocation "
                    f"({largest / MIB:.1f} MiB): every group takes its most accurate candidate"
                )
        result.notes.append(
            f"{len(table.groups)} groups × {len(table.candidates)} candidates "
            f"({', '.join(table.candidates)}); sizes from {smallest / MIB:.1f} to "
            f"{largest / MIB:.1f} MiB"
        )
        return result

    def calibrates(self, options: dict[str, Any]) -> bool:
        return True

    def sensitivity_settings(self, options: dict[str, Any]) -> dict[str, Any] | None:
        return {
            key: options[key] for key in ("candidates", "granularity", "search_tokens", "ignore")
        }

    def build_recipe(self, options: dict[str, Any]) -> list[Any]:
        """One GPTQ modifier whose config groups target exactly the allocated layers; the
        driver adds `allocation` (candidate -> Linear names) and `candidate_options` to the
        options once the search has run."""
        from compressed_tensors.quantization import QuantizationScheme
        from llmcompressor.modifiers.quantization import GPTQModifier

        allocation: dict[str, list[str]] = options["allocation"]
        own: dict[str, dict[str, Any]] = options["candidate_options"]
        ignore = list(options["ignore"])
        config_groups: dict[str, Any] = {}
        shared: dict[str, Any] | None = None
        for scheme in _candidate_schemes(list(allocation)):
            names = allocation[scheme.name]
            if not names:
                continue
            if not isinstance(scheme, GPTQWeightOnly):
                ignore += names
                continue
            shared = own[scheme.name]
            config_groups[f"group_{len(config_groups)}"] = QuantizationScheme(
                targets=sorted(names), weights=scheme.weight_args(own[scheme.name])
            )
        if shared is None:
            raise UserError(f"{self.name}: the allocation quantizes no layer")
        return [
            GPTQModifier(
                config_groups=config_groups,
                ignore=ignore,
                dampening_frac=float(shared["dampening_frac"]),
                block_size=int(shared["block_size"]),
                actorder=gptq_actorder(str(shared.get("actorder", "static"))),
            )
        ]


def _is_candidate(scheme: Scheme) -> bool:
    return isinstance(scheme, GPTQWeightOnly) or (
        isinstance(scheme, Baseline) and scheme.dtype == "bfloat16"
    )


def budget_bytes(options: dict[str, Any]) -> int | None:
    """The size budget in bytes, or None for a KL budget."""
    value = options.get("target_size")
    return None if value is None else parse_size(value)


MIXED = MixedPrecision(
    name="mixed",
    runtime_family="unknown",  # its allocation's formats: see backends.vllm_support
    description="Per-layer mixed precision: each group of layers (a decoder layer's q/k/v, "
    "o, gate/up, down) takes one candidate format (default w4a16-gptq or w8a16-gptq), "
    "chosen from measured per-group sensitivity to meet target_size or max_kl.",
    needs_calibration=True,
    native_hardware="as its candidates (W4A16/W8A16: NVIDIA sm80+ Marlin; vLLM's AVX-512 CPU "
    "kernel)",
    weight_format="int4 grouped / int8 per channel, per layer group",
    activation_format="bf16",
    defaults={
        "target_size": None,
        "max_kl": None,
        "candidates": list(DEFAULT_CANDIDATES),
        "granularity": "fused",
        "search_tokens": 512,
        "kl_headroom": 0.9,
        "ignore": list(DEFAULT_IGNORE),
    },
    choices={"granularity": ("fused", "linear")},
)
