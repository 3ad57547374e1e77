"""The quantization worker's pure parts: the calibration dtype it picks per machine, and the
narrowing of a float32-calibrated artifact's floating-point tensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantbench.hardware import Hardware
from quantbench.quantize import resolve_calibration_dtype, store_floats_as

AVX2 = Hardware("cpu", "AMD EPYC", cpu_flags=frozenset({"avx2", "fma"}))
AMX = Hardware("cpu", "Xeon", cpu_flags=frozenset({"avx512f", "avx512_bf16", "amx_bf16"}))
H200 = Hardware("cuda", "NVIDIA H200", (9, 0))


@pytest.mark.parametrize(
    ("requested", "hardware", "dtype", "noted"),
    [
        ("auto", AVX2, "float32", True),
        ("auto", AMX, "bfloat16", False),
        ("auto", H200, "bfloat16", False),
        ("float32", AMX, "float32", True),
        ("bfloat16", AVX2, "bfloat16", False),
    ],
)
def test_calibration_dtype_per_machine(
    requested: str, hardware: Hardware, dtype: str, noted: bool
) -> None:
    resolved, note = resolve_calibration_dtype(requested, hardware)
    assert resolved == dtype
    assert (note is not None) == noted
    if note:
        assert "calibrated in float32" in note and "stored in bfloat16" in note


def test_store_floats_as_narrows_floats_and_keeps_the_rest(tmp_path: Path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = {
        "layer.weight": torch.randint(-128, 127, (4, 8), dtype=torch.int8),
        "layer.weight_scale": torch.rand(4, 1),
        "layer.weight_global_scale": torch.tensor([448.0]),
        "norm.weight": torch.rand(8),
        "embed.weight": torch.rand(16, 8, dtype=torch.bfloat16),
    }
    first = {k: v for k, v in tensors.items() if k.startswith("layer")}
    second = {k: v for k, v in tensors.items() if not k.startswith("layer")}
    save_file(first, str(tmp_path / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file(second, str(tmp_path / "model-00002-of-00002.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 1}, "weight_map": {}})
    )
    (tmp_path / "config.json").write_text(json.dumps({"dtype": "float32", "torch_dtype": "x"}))

    store_floats_as(tmp_path, "bfloat16")

    read: dict[str, torch.Tensor] = {}
    for file in sorted(tmp_path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            read |= {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
            if file.name.startswith("model-00001"):
                assert handle.metadata() == {"format": "pt"}
    assert {k: v.dtype for k, v in read.items()} == {
        "layer.weight": torch.int8,
        "layer.weight_scale": torch.bfloat16,
        "layer.weight_global_scale": torch.float32,
        "norm.weight": torch.bfloat16,
        "embed.weight": torch.bfloat16,
    }
    assert torch.equal(read["layer.weight"], tensors["layer.weight"])
    assert torch.equal(read["norm.weight"], tensors["norm.weight"].to(torch.bfloat16))
    assert torch.equal(read["embed.weight"], tensors["embed.weight"])
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in read.values())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == {"dtype": "bfloat16", "torch_dtype": "bfloat16"}
    assert not list(tmp_path.glob("*.partial"))
