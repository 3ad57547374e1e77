"""Memory estimates (quantbench.memory) and pre-flight's refusal of a study that would not fit.

The factors and floors are measured (benchmarks/results/scaling.md); the shape terms here are
worked out by hand in the comments, never by calling the function under test.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from tests.conftest import tiny_study_yaml
from tests.records import variant_plan

from quantbench.config import CalibrationConfig, load_study_config
from quantbench.errors import UserError
from quantbench.memory import (
    EVALUATION_RUNTIME_BYTES,
    EVALUATION_WEIGHT_FACTOR,
    LOGIT_COPIES,
    QUANTIZE_RUNTIME_BYTES,
    QUANTIZE_WEIGHT_FACTOR,
    VLLM_CLIENT_BYTES,
    VLLM_RUNTIME_BYTES,
    VLLM_WEIGHT_FACTOR,
    MemoryEstimate,
    largest_fitting,
    layer_hessian_bytes,
    quantize_stage_bytes,
    scores_stage_bytes,
    vllm_engine_bytes,
)
from quantbench.models import LinearLayer, ModelInfo
from quantbench.preflight import (
    EvaluationMemory,
    available_memory_bytes,
    preflight_variants,
    vllm_problem,
)
from quantbench.schemes import get_scheme
from quantbench.schemes.base import model_form
from quantbench.study import run_study

GIB = 1 << 30


def _info(params: int = 1_000_000, vocab: int = 1000) -> ModelInfo:
    layers = (
        LinearLayer("model.layers.0.self_attn.q_proj", 64, 64),
        LinearLayer("model.layers.0.mlp.down_proj", 256, 64),
        LinearLayer("model.layers.1.self_attn.q_proj", 64, 64),
        LinearLayer("model.layers.1.mlp.down_proj", 128, 64),
        LinearLayer("lm_head", 64, vocab),
    )
    return ModelInfo("LlamaForCausalLM", params, layers, False, "bfloat16", 64, vocab)


def test_hessians_are_those_of_the_widest_decoder_layer() -> None:
    # layer 0: 4 x (64^2 + 256^2) = 278,528; layer 1: 4 x (64^2 + 128^2) = 81,920;
    # lm_head alone: 4 x 64^2 = 16,384
    assert layer_hessian_bytes(_info()) == 278_528


def test_quantize_estimates_by_hand() -> None:
    info = _info(params=1_000_000)
    save = quantize_stage_bytes(
        info, quantizes=False, calibrates=False, num_samples=8, seq_len=16,
        calibration_dtype="bfloat16",
    )  # fmt: skip
    assert save.work_bytes == 0
    assert save.weights_bytes == int(QUANTIZE_WEIGHT_FACTOR["save"] * 2_000_000)
    assert save.total_bytes == QUANTIZE_RUNTIME_BYTES + save.weights_bytes
    gptq = quantize_stage_bytes(
        info, quantizes=True, calibrates=True, num_samples=8, seq_len=16,
        calibration_dtype="float32",
    )  # fmt: skip
    # Hessians 278,528 + cached hidden states 2 x 8 x 16 x 64 x 4 bytes = 65,536
    assert gptq.work_bytes == 278_528 + 65_536
    assert gptq.weights_bytes == int(QUANTIZE_WEIGHT_FACTOR["calibrate"] * 4_000_000)
    fp8 = quantize_stage_bytes(
        info, quantizes=True, calibrates=False, num_samples=8, seq_len=16,
        calibration_dtype="float32",
    )  # fmt: skip
    # without calibration the model stays in its bf16 form
    assert fp8.weights_bytes == int(QUANTIZE_WEIGHT_FACTOR["data_free"] * 2_000_000)


def test_scoring_estimate_by_hand() -> None:
    info = _info(params=1_000_000, vocab=1000)
    two = scores_stage_bytes(
        info,
        form="activations",
        with_baseline=True,
        compute_dtype="float32",
        window=32,
        batch_windows=4,
    )
    # logits: 2 models x copies x 4 bytes x 4 windows x 32 tokens x 1,000 entries
    assert two.work_bytes == 2 * LOGIT_COPIES * 4 * 4 * 32 * 1000
    # the variant in fake-quant form and the baseline beside it, 4 bytes a parameter
    factors = EVALUATION_WEIGHT_FACTOR["activations"] + EVALUATION_WEIGHT_FACTOR["unquantized"]
    assert two.weights_bytes == int(factors * 4_000_000)
    assert two.total_bytes == EVALUATION_RUNTIME_BYTES + two.weights_bytes + two.work_bytes
    one = scores_stage_bytes(
        info,
        form="weight_only",
        with_baseline=False,
        compute_dtype="bfloat16",
        window=32,
        batch_windows=4,
    )
    assert one.weights_bytes == int(EVALUATION_WEIGHT_FACTOR["weight_only"] * 2_000_000)
    assert one.work_bytes == LOGIT_COPIES * 4 * 4 * 32 * 1000


def test_model_forms() -> None:
    assert model_form(quantizes=False, quantizes_activations=False) == "unquantized"
    assert model_form(quantizes=True, quantizes_activations=False) == "weight_only"
    assert model_form(quantizes=True, quantizes_activations=True) == "activations"
    assert get_scheme("w8a8-int8").quantizes_activations
    assert get_scheme("fp8-dynamic").quantizes_activations
    assert not get_scheme("w4a16-gptq").quantizes_activations
    assert not get_scheme("bf16").quantizes_activations


@pytest.mark.parametrize("limit", [0, 5, 17, 99, 100, 1000])
def test_largest_fitting_is_the_brute_force_answer(limit: int) -> None:
    def estimate(n: int) -> MemoryEstimate:
        return MemoryEstimate(3 * n + 2, 0, 0)

    brute = max((n for n in range(1, 31) if 3 * n + 2 <= limit), default=None)
    assert largest_fitting(limit, estimate, 30) == brute


def test_a_memory_limit_caps_what_is_available() -> None:
    assert available_memory_bytes(0.5) == GIB // 2
    assert available_memory_bytes(None) > 0


def test_refusal_names_the_calibration_setting_that_would_fit() -> None:
    info = _info(params=1_000_000)
    calibration = CalibrationConfig(num_samples=4096, seq_len=512)
    variant = variant_plan("gptq", "w4a16-gptq")
    # cached hidden states: 2 x 4,096 x 512 x 64 x 2 = 512 MiB; allow about half of them
    fits_model = QUANTIZE_RUNTIME_BYTES + int(QUANTIZE_WEIGHT_FACTOR["calibrate"] * 2_000_000)
    available = fits_model + 278_528 + 256 * (1 << 20)
    (problem,) = preflight_variants([variant], info, calibration, available)["gptq"].problems
    assert problem.startswith("gptq: quantizing needs about ")
    assert f"but {available / GIB:.1f} GiB is available" in problem
    samples = int(problem.split("--calibration-samples ")[1].split()[0])
    seq_len = int(problem.split("--calibration-seq-len ")[1].split()[0])
    for n, changed in (
        (samples, {"num_samples": samples}),
        (seq_len, {"seq_len": seq_len}),
    ):
        fitting = calibration.model_copy(update=changed)
        assert preflight_variants([variant], info, fitting, available)["gptq"].problems == []
        bigger = calibration.model_copy(update={k: n + 1 for k in changed})
        assert preflight_variants([variant], info, bigger, available)["gptq"].problems != []


def test_refusal_when_the_model_alone_does_not_fit() -> None:
    (problem,) = preflight_variants(
        [variant_plan("fp8", "fp8-dynamic")], _info(), CalibrationConfig(), 1
    )["fp8"].problems
    assert "the model alone does not fit: use a machine with more memory" in problem


def test_evaluation_refusal_suggests_the_gpu_and_bfloat16() -> None:
    info = _info(params=100_000_000, vocab=1000)
    memory = EvaluationMemory(
        available_bytes=EVALUATION_RUNTIME_BYTES + 300_000_000,
        device="cpu",
        compute_dtype="float32",
        window=32,
        gpu_visible=True,
    )
    outcomes = preflight_variants(
        [variant_plan("bf16", "bf16")], info, CalibrationConfig(), 1 << 40, evaluation=memory
    )
    (problem,) = outcomes["bf16"].problems
    # 100 M parameters in float32 (400 MB) do not fit in 300 MB; in bf16 (200 MB) they do
    assert problem.startswith("bf16: evaluating needs about ")
    assert "in float32" in problem
    assert "it would fit with --device cuda or --dtype bfloat16" in problem


def test_vllm_engine_estimate_by_hand() -> None:
    info = _info(params=100_000_000)
    engine = vllm_engine_bytes(info, "weight_only", kv_cache_bytes=GIB)
    # weights counted by the model's bf16 bytes (200 MB), not the artifact's files
    assert engine.weights_bytes == int(VLLM_WEIGHT_FACTOR["weight_only"] * 200_000_000)
    assert engine.work_bytes == GIB
    assert engine.total_bytes == VLLM_RUNTIME_BYTES["weight_only"] + engine.weights_bytes + GIB


def test_vllm_refusal_suggests_a_kv_cache_that_fits() -> None:
    info = _info(params=100_000_000)
    variants = [variant_plan("bf16", "bf16"), variant_plan("gptq", "w4a16-gptq")]
    # the largest engine of the two forms, beside the evaluation worker driving it
    floor = VLLM_CLIENT_BYTES + max(
        VLLM_RUNTIME_BYTES[form] + int(VLLM_WEIGHT_FACTOR[form] * 200_000_000)
        for form in ("unquantized", "weight_only")
    )
    available = floor + int(1.6 * GIB)
    problem = vllm_problem(info, variants, 4.0, available)
    assert problem is not None and problem.startswith("vLLM's engine needs about ")
    assert problem.endswith("it would fit with --set evaluation.vllm.kv_cache_gib=1.5")
    assert vllm_problem(info, variants, 1.5, available) is None
    no_room = vllm_problem(info, variants, 4.0, floor)
    assert no_room is not None
    assert no_room.endswith("use a machine with more memory or the hf backend")


def test_a_study_over_its_memory_limit_is_refused_before_any_worker(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    path = tiny_study_yaml(
        tmp_path / "study.yaml",
        tiny_model,
        out,
        ["bf16", "w4a16-gptq"],
        calibration={"num_samples": 512, "seq_len": 1024},
    )
    config = load_study_config(path)
    # 0.5 GiB: above a quantization worker's floor (430 MiB) with the tiny model, below it
    # plus the cached hidden states of 512 x 1,024 tokens (2 x 512 x 1,024 x 96 x 2 bytes =
    # 192 MiB in bf16, twice that in float32)
    assert QUANTIZE_RUNTIME_BYTES == 430 << 20
    config = config.model_copy(
        update={"execution": config.execution.model_copy(update={"memory_limit_gib": 0.5})}
    )
    with pytest.raises(UserError) as refused:
        run_study(config, Console(file=io.StringIO()))
    message = str(refused.value)
    assert message.startswith("pre-flight found problems: w4a16-gptq: quantizing needs about")
    assert "but 0.5 GiB is available; it would fit with --calibration-samples" in message
    assert "bf16" not in message.split("pre-flight found problems: ")[1].split(":")[0]
    assert not (out / "stages" / "quantize").exists()  # no worker ran
    assert not (out / "stages" / "calibration").exists()
