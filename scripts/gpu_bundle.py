"""Build the wheels quantbench needs on an air-gapped GPU machine beyond what its image has.

    .venv/bin/python scripts/gpu_bundle.py [--out gpu-bundle] [--python-version 3.12]
        [--max-mib 60]

The GPU machine this project can be lent (benchmarks/gpu_check.sh) has Python 3.12 with
torch 2.11 (CUDA), transformers 5.17 and the common scientific packages (`IMAGE_PACKAGES`,
its package list as read on 2026-11-17), no network, and takes at most 64 MiB of files per
call. This walks quantbench's runtime requirements (as installed in this environment, at
these versions), leaves out what the image has, downloads the rest as wheels for that
Python and x86-64 Linux (building pure-Python ones that PyPI has only as source), adds
quantbench's own wheel and the built-in model's config and tokenizer (`model-shape/`, for a
random-weight model of its shape there), writes `MANIFEST.txt` (file, bytes) and fails if the
folder is over `--max-mib`. Install there with

    python3 -m pip install --no-deps --no-index --target TARGET gpu-bundle/*.whl
    PYTHONPATH=TARGET python3 -m quantbench schemes

vLLM is not in the bundle: its wheel alone is over 200 MiB.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]

IMAGE_PACKAGES = frozenset(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
    diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
    frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
    hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
    jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
    linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl
    meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
    narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
    nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
    nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
    nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
    onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
    prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
    pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
    pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
    sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
    sentencepiece sentence-transformers setuptools shellingham simplejson six
    sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
    tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
    torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
    typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt
    xarray xxhash yarl zipp""".split()  # noqa: SIM905
)
"""The GPU image's Python packages (the device's package list, 2026-11-17)."""

NOT_CARRIED = frozenset({"quantbench", "nvidia-*", "triton", "torch"})
"""Never downloaded: quantbench is built from this checkout; CUDA and torch come with the
image."""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(root: str) -> dict[str, str]:
    """Every distribution `root` needs at runtime (no extras), name -> installed version,
    as this environment resolved it."""
    marker_env = {"extra": ""}
    found: dict[str, str] = {}
    todo = [root]
    while todo:
        name = normalize(todo.pop())
        if name in found:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        found[name] = dist.version
        for requirement in dist.requires or []:
            parsed = Requirement(requirement)
            if parsed.marker is not None and not parsed.marker.evaluate(marker_env):
                continue
            todo.append(parsed.name)
    return found


def carried(closure: dict[str, str]) -> dict[str, str]:
    """What the image lacks, quantbench itself and torch's own stack left out."""
    image = {normalize(n) for n in IMAGE_PACKAGES}
    return {
        name: version
        for name, version in sorted(closure.items())
        if name not in image and name not in NOT_CARRIED and not name.startswith("nvidia-")
    }


def download(name: str, version: str, python_version: str, out: Path) -> None:
    """The wheel of name==version for CPython `python_version` on x86-64 Linux, or a wheel
    built here from its source (pure-Python packages published only as sdists)."""
    tag = python_version.replace(".", "")
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--python-version", python_version, "--implementation", "cp", "--abi", f"cp{tag}",
        "--abi", "abi3", "--abi", "none",
        "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
        "--platform", "manylinux2014_x86_64", "--platform", "any",
        "--dest", str(out), f"{name}=={version}",
    ]  # fmt: skip
    if subprocess.run(command, check=False).returncode == 0:
        return
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-binary", name,
         "--wheel-dir", str(out), f"{name}=={version}"],
        check=False,
    )  # fmt: skip
    if built.returncode != 0:
        raise SystemExit(f"gpu_bundle: no wheel for {name}=={version} (Python {python_version})")
    wheel = max(out.glob(f"{name.replace('-', '_')}-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheel.name.endswith("-none-any.whl"):
        raise SystemExit(f"gpu_bundle: {name} built a platform wheel here ({wheel.name})")


MODEL_SHAPE = "model-shape"
SHAPE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


def _model_shape(dest: Path) -> None:
    """The built-in model's config and tokenizer, without its weights (94 MiB as a GGUF):
    gpu_check.sh builds a random-weight model of that shape on the GPU machine."""
    from quantbench.models import resolve_model

    model = resolve_model("smollm2-135m-instruct")
    dest.mkdir()
    for name in SHAPE_FILES:
        shutil.copy(model.path / name, dest / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "gpu-bundle")
    parser.add_argument("--python-version", default="3.12")
    parser.add_argument("--max-mib", type=float, default=60.0)
    args = parser.parse_args()

    wanted = carried(requirement_closure("quantbench"))
    with tempfile.TemporaryDirectory() as scratch:
        staging = Path(scratch) / "bundle"
        staging.mkdir()
        for name, version in wanted.items():
            download(name, version, args.python_version, staging)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
             "--wheel-dir", str(staging), str(ROOT)],
            check=True,
        )  # fmt: skip
        _model_shape(staging / MODEL_SHAPE)
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        wheels = [f for f in files if f.suffix == ".whl"]
        total = sum(f.stat().st_size for f in files)
        lines = [f"{f.relative_to(staging)}\t{f.stat().st_size}" for f in files]
        lines.append(f"total\t{total}\t({total / 2**20:.1f} MiB, {len(wheels)} wheels)")
        (staging / "MANIFEST.txt").write_text("\n".join(lines) + "\n")
        if args.out.exists():
            shutil.rmtree(args.out)
        shutil.copytree(staging, args.out)
    print("\n".join(lines))
    if total > args.max_mib * 2**20:
        raise SystemExit(f"gpu_bundle: {total / 2**20:.1f} MiB is over {args.max_mib:g} MiB")


if __name__ == "__main__":
    main()
