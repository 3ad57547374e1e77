"""The machine a benchmark ran on, as its results name it (imported by the scripts beside
it, which run as `python benchmarks/<name>.py`)."""

from __future__ import annotations

import os
from pathlib import Path


def _cpuinfo() -> tuple[str, set[str]]:
    """The first CPU's model name and flags from /proc/cpuinfo."""
    name, flags = "unknown CPU", set[str]()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        if line.startswith("model name") and name == "unknown CPU":
            name = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    return name, flags


def _isa(flags: set[str]) -> str:
    return "AMX" if "amx_tile" in flags else "AVX-512" if "avx512f" in flags else "AVX2"


def widest_isa() -> str:
    """The widest vector ISA: AMX, AVX-512 or AVX2. The CPU class of this project's machines
    changes between sessions, so results files keep one section per ISA."""
    return _isa(_cpuinfo()[1])


def cpu_class() -> str:
    """The CPU's model name, logical cores and the widest vector ISA (AMX, AVX-512, AVX2),
    with avx512_bf16 named where present: what the figures depend on."""
    name, flags = _cpuinfo()
    bf16 = ", avx512_bf16" if "avx512_bf16" in flags else ""
    return f"{name}, {os.cpu_count()} logical cores, {_isa(flags)}{bf16}"
