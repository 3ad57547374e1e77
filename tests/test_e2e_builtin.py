"""The default study on the real built-in model (SmolLM2-135M-Instruct): minutes, marked slow."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import run_cli
from quantbench.results import load_results

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("e2e") / "out"
    started = time.perf_counter()
    result = run_cli("run", "--out", str(out), timeout=1200)
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    return out, elapsed


def test_default_study_finishes_in_time_with_four_variants(
    default_study: tuple[Path, float],
) -> None:
    out, elapsed = default_study
    assert elapsed < 600, f"default study took {elapsed:.0f} s"
    results = load_results(out)
    assert [v.name for v in results.variants] == ["bf16", "fp8-dynamic", "w4a16-gptq", "w8a8-int8"]
    assert all(v.status == "ok" for v in results.variants)
    assert results.variant("w4a16-gptq").options["group_size"] == 64
    assert results.model["kind"] == "builtin"


def test_sizes_order_w4_smaller_than_8bit_smaller_than_bf16(
    default_study: tuple[Path, float],
) -> None:
    sizes = {v.name: v.disk_bytes or 0 for v in load_results(default_study[0]).variants}
    assert sizes["w4a16-gptq"] < sizes["w8a8-int8"] < sizes["bf16"]
    assert abs(sizes["w8a8-int8"] - sizes["fp8-dynamic"]) / sizes["bf16"] < 0.05


def test_quantized_artifacts_generate_coherent_text(default_study: tuple[Path, float]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for variant in load_results(default_study[0]).variants:
        path = Path(variant.artifact_path or "")
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is the capital of France?"}],
            add_generation_prompt=True,
            return_tensors="pt",
        )["input_ids"]
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=16, do_sample=False)
        text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert "Paris" in text, f"{variant.name}: {text!r}"


def test_rerun_returns_in_seconds(default_study: tuple[Path, float]) -> None:
    started = time.perf_counter()
    result = run_cli("run", "--out", str(default_study[0]))
    assert result.returncode == 0, result.stderr
    assert time.perf_counter() - started < 10
