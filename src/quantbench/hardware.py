"""The machine a backend computes on: the first CUDA GPU, or the CPU and its instruction-set
flags. Pre-flight (which kernels vLLM can use) and the hf backend's compute dtype both
depend on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""CPU flags under which bf16 matmuls run in hardware; without them PyTorch's bf16 matmuls
ran 4-5x slower than float32 (an AVX2-only AMD EPYC, SmolLM2-135M, 4x256 tokens)."""


@dataclass(frozen=True)
class Hardware:
    device: Literal["cpu", "cuda"]
    name: str
    capability: tuple[int, int] | None = None
    cpu_flags: frozenset[str] = frozenset()

    def describe(self) -> str:
        if self.device == "cuda" and self.capability:
            return f"{self.name} (compute capability {self.capability[0]}.{self.capability[1]})"
        shown = [
            f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_int8") if f in self.cpu_flags
        ]
        return f"{self.name} ({', '.join(shown) or 'no AVX-512'})"

    def native_bf16(self) -> bool:
        """Whether bf16 matmuls run in hardware here (any CUDA GPU counts: bf16-less ones
        are handled by the caller's dtype rules)."""
        return self.device == "cuda" or bool(self.cpu_flags & NATIVE_BF16_CPU_FLAGS)


def hardware_here(device: str = "auto") -> Hardware:
    """This machine as a backend will use it: the first CUDA GPU unless `device` is
    cpu or none is visible, else the CPU."""
    if device != "cpu":
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return Hardware("cuda", torch.cuda.get_device_name(0), (major, minor))
    return Hardware("cpu", _cpu_name(), cpu_flags=frozenset(_cpu_flags()))


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "x86 CPU"
