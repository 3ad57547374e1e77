"""The pre-flight shared by schemes whose weights are quantized in groups along the input
width (GPTQ / AWQ INT4, W4A8, W4AFP8): fit the group size to every targeted layer, then
check the optional rotation ahead of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.models import ModelInfo
from quantbench.schemes.base import Preflight, Scheme
from quantbench.schemes.rotations import check_transform
from quantbench.schemes.shapes import fit_size


@dataclass(frozen=True)
class GroupedScheme(Scheme):
    grouped: bool = True

    def preflight(self, model: ModelInfo, requested: dict[str, Any]) -> Preflight:
        result = super().preflight(model, requested)
        options = result.resolved_options
        if self.grouped:
            widths = {
                layer.name: (layer.in_features,) for layer in self.targeted_layers(model, options)
            }
            fit = fit_size(
                self.name,
                "group size",
                int(options["group_size"]),
                widths,
                str(options["on_indivisible"]),
            )
            if fit.problem:
                result.problems.append(fit.problem)
            if fit.decision:
                result.decisions.append(fit.decision)
            options["group_size"] = fit.size
            options["ignore"] = [*options["ignore"], *fit.skipped_layers]
        check_transform(self.name, model, options, result)
        return result
