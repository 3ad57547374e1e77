import pytest

from quantbench.errors import UserError
from quantbench.models import LinearLayer, ModelInfo
from quantbench.schemes import REGISTRY, all_schemes, get_scheme
from quantbench.schemes.base import is_ignored
from quantbench.schemes.grouping import candidate_group_sizes, largest_valid_group_size


def smol_like(tied: bool = True) -> ModelInfo:
    """SmolLM2-135M's shapes: hidden 576 (= 9 × 64), MLP 1536, tied embeddings."""
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
    return ModelInfo("LlamaForCausalLM", 134_515_008, tuple(layers), tied, "bfloat16", 576)


def test_registry_has_the_required_schemes() -> None:
    for name in ("bf16", "fp16", "fp8-dynamic", "w4a16-gptq", "w8a8-int8", "w8a16-gptq"):
        assert name in REGISTRY
    for scheme in all_schemes():
        assert scheme.description and scheme.native_hardware
        if scheme.quantizes:
            assert scheme.defaults["ignore"] == ["lm_head"]
    assert get_scheme("fp8-dynamic").needs_calibration is False
    assert get_scheme("w4a16-gptq").needs_calibration is True
    assert get_scheme("w8a8-int8").defaults["smoothing_strength"] == 0.8
    assert "8.9" in get_scheme("fp8-dynamic").native_hardware


def test_unknown_scheme_suggests_a_close_name() -> None:
    with pytest.raises(UserError, match='did you mean "w4a16-gptq"'):
        get_scheme("w4a16-gtpq")


def test_unknown_option_is_refused() -> None:
    with pytest.raises(UserError, match="has no option 'smoothing_strength'"):
        get_scheme("w4a16-gptq").resolve_options({"smoothing_strength": 0.5})


def test_group_size_candidates() -> None:
    assert candidate_group_sizes(128) == [128, 64, 32, 16]
    assert candidate_group_sizes(96) == [96, 64, 32, 16]
    assert largest_valid_group_size(128, [576, 1536]) == 64
    assert largest_valid_group_size(128, [1536]) == 128
    assert largest_valid_group_size(16, [100]) is None


def test_preflight_shrinks_group_size_for_smollm2_widths() -> None:
    outcome = get_scheme("w4a16-gptq").preflight(smol_like(), {})
    assert outcome.resolved_options["group_size"] == 64
    assert not outcome.problems
    assert "does not divide input width(s) [576]" in outcome.decisions[0]
    assert any("tied" in note for note in outcome.notes)


def test_preflight_can_skip_offending_layers_instead() -> None:
    outcome = get_scheme("w4a16-gptq").preflight(smol_like(), {"on_indivisible": "skip-layers"})
    assert outcome.resolved_options["group_size"] == 128
    ignored = outcome.resolved_options["ignore"]
    assert "model.layers.0.mlp.down_proj" not in ignored  # 1536 divides by 128
    assert "model.layers.0.self_attn.q_proj" in ignored
    assert "12 layer(s) left unquantized" in outcome.decisions[0]


def test_preflight_refuses_to_quantize_a_tied_lm_head() -> None:
    outcome = get_scheme("fp8-dynamic").preflight(smol_like(), {"ignore": ()})
    assert any("lm_head shares its weights" in p for p in outcome.problems)


def test_preflight_refuses_when_no_group_size_fits() -> None:
    info = ModelInfo("X", 10, (LinearLayer("a", 100, 10),), False, "bfloat16", 100)
    outcome = get_scheme("w4a16-gptq").preflight(info, {"group_size": 32})
    assert outcome.problems and "no group size ≤ 32" in outcome.problems[0]


def test_ignore_patterns_match_like_llm_compressor() -> None:
    assert is_ignored("lm_head", ["lm_head"])
    assert is_ignored("model.layers.0.mlp.down_proj", ["re:.*down_proj"])
    assert is_ignored("model.layers.0.mlp.down_proj", ["down_proj"])
    assert not is_ignored("model.layers.0.mlp.up_proj", ["re:.*down_proj"])


def test_variant_names_encode_only_options_that_differ() -> None:
    from quantbench.config import SchemeEntry
    from quantbench.plan import variant_name

    defaults = get_scheme("w4a16-gptq").defaults
    assert variant_name(SchemeEntry(scheme="w4a16-gptq", group_size=128), defaults) == "w4a16-gptq"
    assert (
        variant_name(SchemeEntry(scheme="w4a16-gptq", group_size=32), defaults) == "w4a16-gptq-g32"
    )
    skip = SchemeEntry(scheme="w4a16-gptq", on_indivisible="skip-layers")
    assert variant_name(skip, defaults) == "w4a16-gptq-skip-layers"
    assert variant_name(SchemeEntry(scheme="w4a16-gptq", name="mine"), defaults) == "mine"


def test_the_results_baseline_schemes_are_the_catalogues_schemes_that_do_not_quantize() -> None:
    from quantbench.results import BASELINE_SCHEMES
    from quantbench.schemes import REGISTRY, get_scheme

    assert set(BASELINE_SCHEMES) == {n for n in REGISTRY if not get_scheme(n).quantizes}
