"""Golden values for content keys, group-size rules and the pre-flight memory check.

Added to kill the mutants that survived `benchmarks/mutation.py content_key preflight`
(results/mutation_content_key.md, results/mutation_preflight.md): each expected value here is
worked out by hand in the comment beside it, never by calling the function under test.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from quantbench.config import CalibrationConfig
from quantbench.models import LinearLayer, ModelInfo
from quantbench.plan import VariantPlan
from quantbench.preflight import (
    GIB,
    RUNTIME_OVERHEAD_BYTES,
    available_memory_bytes,
    estimate_memory,
    preflight_variants,
)
from quantbench.schemes import get_scheme
from quantbench.schemes.grouping import (
    MIN_GROUP_SIZE,
    candidate_group_sizes,
    largest_valid_group_size,
)
from quantbench.store import StageRef, canonical_json, content_key

# --------------------------------------------------------------------------------------
# content keys
# --------------------------------------------------------------------------------------


def test_canonical_json_is_compact_sorted_and_stringifies_the_rest() -> None:
    # No space after "," or ":", keys sorted at every depth, a Path written as its text.
    value = {"b": [1, 2], "a": {"z": 1, "y": Path("/x")}}
    assert canonical_json(value) == '{"a":{"y":"/x","z":1},"b":[1,2]}'


def test_content_key_is_the_first_16_hex_digits_of_sha256() -> None:
    text = '{"a":1,"b":[1,2]}'
    expected = hashlib.sha256(text.encode()).hexdigest()[:16]
    assert content_key({"b": [1, 2], "a": 1}) == expected
    # `printf "{}" | sha256sum` starts 44136fa355b3678a.
    assert content_key({}) == "44136fa355b3678a"


# --------------------------------------------------------------------------------------
# group sizes
# --------------------------------------------------------------------------------------


def test_candidate_group_sizes_stop_at_the_minimum() -> None:
    assert MIN_GROUP_SIZE == 16
    assert candidate_group_sizes(16) == [16]
    assert candidate_group_sizes(32) == [32, 16]
    assert candidate_group_sizes(17) == [17, 16]
    assert candidate_group_sizes(8) == [8]  # below the minimum: only what was asked
    assert all(type(size) is int for size in candidate_group_sizes(100))  # never 64.0


def test_largest_valid_group_size_checks_every_width() -> None:
    assert largest_valid_group_size(128, [128, 64]) == 64
    assert largest_valid_group_size(128, [256, 256]) == 128
    assert largest_valid_group_size(64, []) == 64
    assert largest_valid_group_size(32, [48]) == 16


def _info(
    params: int = 1000, widths: tuple[int, ...] = (8, 32), hidden: int | None = 16
) -> ModelInfo:
    layers = tuple(LinearLayer(f"l{i}", w, 4) for i, w in enumerate(widths))
    return ModelInfo("LlamaForCausalLM", params, layers, False, "bfloat16", hidden)


def test_memory_without_calibration_is_two_copies_plus_runtime() -> None:
    estimate = estimate_memory(_info(), False, CalibrationConfig(num_samples=3, seq_len=5))
    # bf16 weights: 2 bytes x 1000 parameters; held twice while saving.
    assert estimate.weights_bytes == 2000
    assert estimate.calibration_bytes == 0
    assert estimate.total_bytes == 2 * 2000 + RUNTIME_OVERHEAD_BYTES
    assert RUNTIME_OVERHEAD_BYTES == 1 << 30


def test_memory_with_calibration_counts_hessians_and_activations() -> None:
    calibration = CalibrationConfig(num_samples=3, seq_len=5)
    estimate = estimate_memory(_info(), True, calibration)
    # Hessians: 7 linears x widest 32^2 x 4 bytes = 28,672.
    # Activations: 2 x 3 samples x 5 tokens x hidden 16 x 2 bytes (bf16) = 960.
    assert estimate.weights_bytes == 2000
    assert type(estimate.weights_bytes) is int and type(estimate.total_bytes) is int
    assert estimate.calibration_bytes == 28_672 + 960
    assert estimate.total_bytes == 4000 + 29_632 + RUNTIME_OVERHEAD_BYTES


def test_memory_in_float32_doubles_weights_and_activations() -> None:
    calibration = CalibrationConfig(num_samples=3, seq_len=5)
    estimate = estimate_memory(_info(), True, calibration, calibration_dtype="float32")
    # Weights 2000 x 4 // 2 = 4000; activations 2 x 3 x 5 x 16 x 4 = 1,920.
    assert estimate.weights_bytes == 4000
    assert estimate.calibration_bytes == 28_672 + 1920


def test_memory_without_hidden_size_uses_the_widest_layer() -> None:
    calibration = CalibrationConfig(num_samples=1, seq_len=1)
    estimate = estimate_memory(_info(hidden=None), True, calibration)
    # hidden falls back to 32: activations 2 x 1 x 1 x 32 x 2 = 128.
    assert estimate.calibration_bytes == 28_672 + 128


def test_memory_of_a_model_without_linear_layers() -> None:
    calibration = CalibrationConfig(num_samples=1, seq_len=1)
    estimate = estimate_memory(_info(widths=(), hidden=None), True, calibration)
    assert estimate.calibration_bytes == 0


def test_available_memory_is_psutil_available() -> None:
    import psutil

    got = available_memory_bytes()
    assert isinstance(got, int)
    # Other processes move it between the two reads; a tenth of it is far beyond that.
    assert abs(got - psutil.virtual_memory().available) < psutil.virtual_memory().available / 10


# --------------------------------------------------------------------------------------
# pre-flight over variants
# --------------------------------------------------------------------------------------


def _variant(name: str, scheme: str, calibration: CalibrationConfig | None = None) -> VariantPlan:
    return VariantPlan(
        name=name,
        scheme=get_scheme(scheme),
        requested={},
        options={},
        quantize=StageRef("quantize", name),
        calibration_config=calibration,
    )


def test_preflight_reports_memory_per_variant_and_refuses_what_does_not_fit() -> None:
    info = _info(params=1000, widths=(64, 64), hidden=64)
    default = CalibrationConfig(num_samples=2, seq_len=4)
    own = CalibrationConfig(num_samples=4, seq_len=4)
    variants = [
        _variant("fp8", "fp8-dynamic"),
        _variant("gptq", "w4a16-gptq"),
        _variant("gptq-own", "w4a16-gptq", own),
    ]
    # fp8: 4000 + overhead. gptq: hessians 7 x 64^2 x 4 = 114,688, activations
    # 2 x 2 x 4 x 64 x 2 = 2048. gptq-own: activations 2 x 4 x 4 x 64 x 2 = 4096.
    fp8_total = 4000 + RUNTIME_OVERHEAD_BYTES
    gptq_total = fp8_total + 114_688 + 2048
    own_total = fp8_total + 114_688 + 4096
    outcomes = preflight_variants(variants, info, default, available_bytes=gptq_total)
    assert list(outcomes) == ["fp8", "gptq", "gptq-own"]
    assert [o.memory_bytes for o in outcomes.values()] == [fp8_total, gptq_total, own_total]
    assert outcomes["fp8"].problems == [] and outcomes["gptq"].problems == []
    assert outcomes["gptq-own"].problems == [
        f"gptq-own: needs about {own_total / GIB:.1f} GiB to quantize but "
        f"{gptq_total / GIB:.1f} GiB is available; free memory, lower "
        "calibration.num_samples / seq_len, or use a bigger machine"
    ]
    for outcome in outcomes.values():
        assert outcome.notes[-1] == "estimated peak memory 1.0 GiB"


def test_preflight_float32_calibration_is_what_is_checked() -> None:
    info = _info(params=1000, widths=(64,), hidden=64)
    default = CalibrationConfig(num_samples=2, seq_len=4)
    bf16 = preflight_variants([_variant("g", "w4a16-gptq")], info, default, 1 << 40)
    f32 = preflight_variants(
        [_variant("g", "w4a16-gptq")], info, default, 1 << 40, calibration_dtype="float32"
    )
    # float32: weights 2000 more bytes held twice, activations 2048 more.
    assert (f32["g"].memory_bytes or 0) - (bf16["g"].memory_bytes or 0) == 2 * 2000 + 2048


@pytest.mark.parametrize("available", [0, 1])
def test_preflight_with_no_memory_refuses_every_variant(available: int) -> None:
    outcomes = preflight_variants(
        [_variant("fp8", "fp8-dynamic")], _info(), CalibrationConfig(), available
    )
    assert len(outcomes["fp8"].problems) == 1
    assert outcomes["fp8"].problems[0].startswith("fp8: needs about 1.0 GiB to quantize")
