"""The machine, probed in one place: the CPU (its model name and instruction-set flags, from
/proc/cpuinfo), whether a GPU is visible, the first CUDA GPU, installed package versions.
Pre-flight (which kernels vLLM can use), the hf backend's compute dtype, stage keys (library
versions), cluster resources and the study's provenance all read them from here.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

CPUINFO = Path("/proc/cpuinfo")
GPU_DEVICE_NODES = ("nvidia*", "kfd", "dxg")
"""Device files of NVIDIA's driver, AMD's (ROCm) and WSL's GPU paravirtualization in /dev."""

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
    if device != "cpu" and gpus_visible():
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return Hardware("cuda", torch.cuda.get_device_name(0), (major, minor))
    return Hardware("cpu", _cpu_name(), cpu_flags=frozenset(_cpu_flags()))


@dataclass(frozen=True)
class Cpu:
    model: str
    """The first CPU's model name, e.g. "AMD EPYC 9B14"."""
    flags: frozenset[str]
    """Its instruction-set flags, e.g. avx512_bf16."""


@cache
def cpu_here(cpuinfo: Path = CPUINFO) -> Cpu:
    """The first CPU listed in `cpuinfo` (read once per process)."""
    model = ""
    flags: frozenset[str] = frozenset()
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip() and not model:
                model = value.strip()
            elif key.strip() == "flags":
                flags = frozenset(value.split())
                break
    except OSError:
        pass
    return Cpu(model or platform.processor() or platform.machine() or "unknown CPU", flags)


def _cpu_flags() -> frozenset[str]:
    return cpu_here().flags


def _cpu_name() -> str:
    return cpu_here().model


def gpus_visible() -> bool:
    """Whether torch sees a CUDA (or ROCm) device here. On Linux without any GPU device file
    it cannot, and the answer spares importing torch (3-7 s on 2-core CPUs) in a process
    that may not need it."""
    if (
        sys.platform.startswith("linux")
        and "torch" not in sys.modules
        and not any(node for pattern in GPU_DEVICE_NODES for node in Path("/dev").glob(pattern))
    ):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def installed_version(name: str) -> str | None:
    """The installed version of the distribution `name`, or None when it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None
