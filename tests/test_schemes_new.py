"""The schemes of issue 22, each quantized for real on a tiny random Llama.

One study (the product's own path: planner, pre-flight, quantization workers) builds every
new scheme and option once; each test then reads one artifact: the recipe llm-compressor
saved, the compressed-tensors config, the tensors that were quantized, an untouched
`lm_head`, and a transformers load that computes finite logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import build_tiny_model, run_cli, tiny_study_yaml
from quantbench.results import StudyResults, VariantResult
from quantbench.study_files import load_results

HIDDEN = 128
"""Hidden size of the tiny model here: head dim 32 lets SpinQuant's Hadamard blocks fit."""

GPTQ_OPTIONS = {
    "scheme": "w4a16-gptq",
    "name": "gptq-options",
    "transform_block_size": 32,
    "group_size": 32,
    "actorder": "none",
    "symmetric": False,
    "transform": "spinquant",
}
STUDY: list[Any] = [
    {"scheme": "w4a16-awq", "name": "awq", "group_size": 32, "n_grid": 4},
    "nvfp4a16",
    "nvfp4",
    "mxfp4a16",
    "fp8-block",
    {"scheme": "w4a8-int", "group_size": 32},
    {"scheme": "w4afp8", "group_size": 32},
    GPTQ_OPTIONS,
    {"scheme": "fp8-dynamic", "kv_cache": "fp8"},
]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> StudyResults:
    """Every new scheme and option quantized once (tiny calibration, no metrics)."""
    root = tmp_path_factory.mktemp("zoo")
    model = build_tiny_model(root / "model", hidden_size=HIDDEN)
    study = tiny_study_yaml(
        root / "study.yaml",
        model,
        root / "out",
        STUDY,
        calibration={"num_samples": 4, "seq_len": 32},
    )
    result = run_cli("run", "--config", str(study), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_results(root / "out")


def quantization_config(variant: VariantResult) -> dict[str, Any]:
    config = json.loads((Path(variant.artifact_path or "") / "config.json").read_text())
    quantization: dict[str, Any] = config["quantization_config"]
    return quantization


def tensors(variant: VariantResult) -> dict[str, Any]:
    from safetensors.torch import load_file

    loaded: dict[str, Any] = {}
    for file in sorted(Path(variant.artifact_path or "").glob("*.safetensors")):
        loaded.update(load_file(str(file)))
    return loaded


def recipe_text(variant: VariantResult) -> str:
    return (Path(variant.artifact_path or "") / "recipe.yaml").read_text()


def assert_loads_and_computes(variant: VariantResult) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(Path(variant.artifact_path or ""))
    with torch.no_grad():
        logits = model(torch.tensor([[5, 17, 42, 9, 77]])).logits
    assert torch.isfinite(logits).all()


def assert_lm_head_untouched(variant: VariantResult, weights: dict[str, Any]) -> None:
    """lm_head is left out of every recipe: no quantization tensors, stored in bf16 (or
    shared with the embeddings, as the tiny model ties them)."""
    import torch

    assert not [
        name for name in weights if name.startswith("lm_head.") and name != "lm_head.weight"
    ]
    if "lm_head.weight" in weights:
        assert weights["lm_head.weight"].dtype == torch.bfloat16
    assert "lm_head" in quantization_config(variant)["ignore"]


def group(variant: VariantResult) -> dict[str, Any]:
    groups = quantization_config(variant)["config_groups"]
    assert len(groups) == 1
    only: dict[str, Any] = next(iter(groups.values()))
    return only


# (variant, weight args expected, activation args expected or None, q_proj tensors expected)
EXPECTED: list[tuple[str, dict[str, Any], dict[str, Any] | None, set[str]]] = [
    (
        "awq",
        {"num_bits": 4, "type": "int", "symmetric": False, "group_size": 32},
        None,
        {"weight_packed", "weight_scale", "weight_zero_point"},
    ),
    (
        "nvfp4a16",
        {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16},
        None,
        {"weight_packed", "weight_scale", "weight_global_scale"},
    ),
    (
        "nvfp4",
        {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16},
        {"num_bits": 4, "type": "float", "group_size": 16},
        {"weight_packed", "weight_scale", "weight_global_scale", "input_global_scale"},
    ),
    (
        "mxfp4a16",
        {"num_bits": 4, "type": "float", "strategy": "group", "group_size": 32},
        None,
        {"weight_packed", "weight_scale"},
    ),
    (
        "fp8-block",
        # k_proj / v_proj have 64 output rows: pre-flight shrinks the 128 block to 64.
        {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [64, 64]},
        {"num_bits": 8, "type": "float", "strategy": "group", "group_size": 64, "dynamic": True},
        {"weight", "weight_scale"},
    ),
    (
        "w4a8-int-g32",
        {"num_bits": 4, "type": "int", "symmetric": True, "group_size": 32},
        {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True},
        {"weight", "weight_scale"},
    ),
    (
        "w4afp8-g32",
        {"num_bits": 4, "type": "int", "symmetric": True, "group_size": 32},
        {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True},
        {"weight", "weight_scale"},
    ),
]


@pytest.mark.parametrize(("name", "weights", "activations", "stored"), EXPECTED)
def test_new_scheme_artifact(
    zoo: StudyResults,
    name: str,
    weights: dict[str, Any],
    activations: dict[str, Any] | None,
    stored: set[str],
) -> None:
    variant = zoo.variant(name)
    assert variant.status == "ok"
    settings = group(variant)
    for key, value in weights.items():
        assert settings["weights"][key] == value, (name, key)
    if activations is None:
        assert settings["input_activations"] is None
    else:
        for key, value in activations.items():
            assert settings["input_activations"][key] == value, (name, key)
    loaded = tensors(variant)
    for layer in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        present = {n.removeprefix(layer + ".") for n in loaded if n.startswith(layer + ".")}
        assert stored <= present, (name, layer, present)
    assert_lm_head_untouched(variant, loaded)
    assert_loads_and_computes(variant)


def test_awq_recipe_records_its_settings(zoo: StudyResults) -> None:
    variant = zoo.variant("awq")
    recipe = yaml.safe_load(recipe_text(variant))
    text = json.dumps(recipe)
    assert "AWQModifier" in text and "QuantizationModifier" in text
    assert '"duo_scaling": "both"' in text and '"n_grid": 4' in text
    assert variant.options["duo_scaling"] == "both"


def test_gptq_options_reach_recipe_and_artifact(zoo: StudyResults) -> None:
    variant = zoo.variant("gptq-options")
    assert variant.status == "ok"
    assert variant.options["transform_block_size"] == 32  # R2 rotates each 32-wide head
    recipe = recipe_text(variant)
    assert "SpinQuantModifier" in recipe and "GPTQModifier" in recipe
    assert "R1" in recipe and "R2" in recipe
    settings = group(variant)["weights"]
    assert settings["symmetric"] is False and settings["actorder"] is None
    loaded = tensors(variant)
    assert "model.layers.0.self_attn.q_proj.weight_zero_point" in loaded
    # SpinQuant's R1 rotates the embeddings and lm_head: untied, unquantized, bf16.
    import torch

    assert loaded["lm_head.weight"].dtype == torch.bfloat16
    assert_lm_head_untouched(variant, loaded)
    assert_loads_and_computes(variant)


def test_fp8_kv_cache_is_an_option_of_any_scheme(zoo: StudyResults) -> None:
    variant = zoo.variant("fp8-dynamic-kvcache-fp8")
    assert variant.status == "ok" and variant.needs_calibration
    kv = quantization_config(variant)["kv_cache_scheme"]
    assert kv["num_bits"] == 8 and kv["type"] == "float" and kv["strategy"] == "tensor"
    loaded = tensors(variant)
    assert {"model.layers.0.self_attn.k_scale", "model.layers.0.self_attn.v_scale"} <= set(loaded)
    assert "kv_cache_scheme" in recipe_text(variant)
    assert_lm_head_untouched(variant, loaded)
    assert_loads_and_computes(variant)
