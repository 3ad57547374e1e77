"""The unquantized baselines: the model saved as-is in BF16 or FP16.

They are variants like any other so that every metric runs on them by the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.models import LinearLayer
from quantbench.schemes.base import Scheme


@dataclass(frozen=True)
class Baseline(Scheme):
    dtype: str = "bfloat16"

    def linear_bytes(self, layer: LinearLayer, options: dict[str, Any]) -> int | None:
        """Two bytes per weight (bf16 and fp16 alike)."""
        return 2 * layer.in_features * layer.out_features


BF16 = Baseline(
    name="bf16",
    runtime_family="bf16",
    description="Unquantized baseline in bfloat16: the reference every variant is compared to.",
    needs_calibration=False,
    native_hardware="any (CPU with AVX-512 BF16/AMX, GPUs from Ampere)",
    weight_format="bf16",
    activation_format="bf16",
    defaults={},
    quantizes=False,
    dtype="bfloat16",
)

FP16 = Baseline(
    name="fp16",
    runtime_family="fp16",
    description="Unquantized baseline in float16, for models and GPUs that prefer it.",
    needs_calibration=False,
    native_hardware="any GPU; slow on most CPUs",
    weight_format="fp16",
    activation_format="fp16",
    defaults={},
    quantizes=False,
    dtype="float16",
)
