"""Golden values for content keys, group-size rules and the pre-flight memory check.

Added to kill the mutants that survived `benchmarks/mutation.py content_key preflight`
(results/mutation_content_key.md, results/mutation_preflight.md): each expected value here is
worked out by hand in the comment beside it, never by calling the function under test.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tests.records import variant_plan

from quantbench.config import CalibrationConfig
from quantbench.memory import QUANTIZE_RUNTIME_BYTES, QUANTIZE_WEIGHT_FACTOR
from quantbench.models import LinearLayer, ModelInfo
from quantbench.preflight import GIB, available_memory_bytes, preflight_variants
from quantbench.schemes.grouping import (
    MIN_GROUP_SIZE,
    candidate_group_sizes,
    largest_valid_group_size,
)
from quantbench.store import canonical_json, content_key

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


def test_available_memory_is_psutil_available() -> None:
    import psutil

    got = available_memory_bytes()
    assert isinstance(got, int)
    # Other processes move it between the two reads; a tenth of it is far beyond that.
    assert abs(got - psutil.virtual_memory().available) < psutil.virtual_memory().available / 10


# --------------------------------------------------------------------------------------
# pre-flight over variants
# --------------------------------------------------------------------------------------


def test_preflight_reports_memory_per_variant_and_refuses_what_does_not_fit() -> None:
    info = _info(params=1000, widths=(64, 64), hidden=64)
    default = CalibrationConfig(num_samples=2, seq_len=4)
    own = CalibrationConfig(num_samples=4, seq_len=4)
    variants = [
        variant_plan("fp8", "fp8-dynamic"),
        variant_plan("gptq", "w4a16-gptq"),
        variant_plan("gptq-own", "w4a16-gptq", own),
    ]
    # Layers l0 and l1 name no decoder layer, so each is its own: Hessians 64^2 x 4 = 16,384.
    # Cached hidden states: gptq 2 x 2 x 4 x 64 x 2 = 2048, gptq-own 2 x 4 x 4 x 64 x 2 = 4096.
    fp8_total = QUANTIZE_RUNTIME_BYTES + int(QUANTIZE_WEIGHT_FACTOR["data_free"] * 2000)
    calibrating = QUANTIZE_RUNTIME_BYTES + int(QUANTIZE_WEIGHT_FACTOR["calibrate"] * 2000)
    gptq_total = calibrating + 16_384 + 2048
    own_total = calibrating + 16_384 + 4096
    outcomes = preflight_variants(variants, info, default, available_bytes=gptq_total)
    assert list(outcomes) == ["fp8", "gptq", "gptq-own"]
    assert [o.memory_bytes for o in outcomes.values()] == [fp8_total, gptq_total, own_total]
    assert outcomes["fp8"].problems == [] and outcomes["gptq"].problems == []
    (problem,) = outcomes["gptq-own"].problems
    assert problem.startswith(f"gptq-own: quantizing needs about {own_total / GIB:.1f} GiB (")
    assert f"but {gptq_total / GIB:.1f} GiB is available; it would fit with" in problem
    for outcome, total in zip(outcomes.values(), (fp8_total, gptq_total, own_total), strict=True):
        assert outcome.notes[-1] == f"estimated peak memory {total / GIB:.1f} GiB to quantize"


def test_preflight_float32_calibration_is_what_is_checked() -> None:
    info = _info(params=1000, widths=(64,), hidden=64)
    default = CalibrationConfig(num_samples=2, seq_len=4)
    bf16 = preflight_variants([variant_plan("g", "w4a16-gptq")], info, default, 1 << 40)
    f32 = preflight_variants(
        [variant_plan("g", "w4a16-gptq")], info, default, 1 << 40, calibration_dtype="float32"
    )
    # float32: the weights take 2000 more bytes (times the factor), the hidden states 2048.
    factor = QUANTIZE_WEIGHT_FACTOR["calibrate"]
    expected = int(factor * 4000) - int(factor * 2000) + 2048
    assert (f32["g"].memory_bytes or 0) - (bf16["g"].memory_bytes or 0) == expected


@pytest.mark.parametrize("available", [0, 1])
def test_preflight_with_no_memory_refuses_everyvariant_plan(available: int) -> None:
    outcomes = preflight_variants(
        [variant_plan("fp8", "fp8-dynamic")], _info(), CalibrationConfig(), available
    )
    assert len(outcomes["fp8"].problems) == 1
    assert outcomes["fp8"].problems[0].startswith("fp8: quantizing needs about")
