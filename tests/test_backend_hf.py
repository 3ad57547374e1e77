"""The transformers backend against independent computations on a tiny random Llama."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quantbench.backends import REGISTRY, get_backend
from quantbench.errors import UserError
from quantbench.hardware import Hardware

FP8_SCRIPT = textwrap.dedent(
    """
    import sys
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, dest = sys.argv[1], sys.argv[2]
    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    oneshot(
        model=model,
        recipe=[QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"])],
    )
    model.save_pretrained(dest, save_compressed=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(dest)
    """
)


@pytest.fixture(scope="module")
def sharp_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny Llama re-initialised with larger weights.

    With the default init (std 0.02) a random model's next-token distribution is nearly
    uniform and greedy decoding repeats one token, which would make the generation tests
    vacuous and full of near-ties; std 0.2 gives varied, well-separated greedy choices.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dest = tmp_path_factory.mktemp("sharp") / "model"
    config = AutoConfig.from_pretrained(tiny_model)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def backend(sharp_model: Path) -> Iterator[Any]:
    """bf16, as saved, whatever this CPU's default (auto) would pick: compared with
    `reference` below."""
    backend = get_backend("hf", device="cpu", dtype="bfloat16")
    backend.load(sharp_model)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def reference(sharp_model: Path) -> Any:
    """The same artifact loaded directly with transformers, independent of the backend."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(sharp_model, dtype="auto").eval()


@pytest.fixture(scope="module")
def token_ids(backend: Any) -> list[int]:
    from pydoc_data.topics import topics

    ids: list[int] = backend.tokenizer()(topics["if"])["input_ids"]
    assert len(ids) > 120
    return ids


def reference_logprobs(model: Any, window: list[int]) -> np.ndarray:
    """float64 log-softmax over the logits of one unbatched forward: (len(window), vocab)."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([window])).logits[0]
    return torch.log_softmax(logits.double(), dim=-1).numpy()


@pytest.mark.parametrize("cpu_flags", [{"avx512f", "amx_bf16"}, {"avx2"}])
def test_native_load_info(
    sharp_model: Path, cpu_flags: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default bf16 stays bf16 where the CPU computes it in hardware, and runs in float32
    (saying so) where it does not."""
    cpu = Hardware("cpu", "test CPU", cpu_flags=frozenset(cpu_flags))
    monkeypatch.setattr("quantbench.backends.hf.hardware_here", lambda device: cpu)
    backend = get_backend("hf", device="cpu", threads=2)
    info = backend.load(sharp_model)
    assert info.execution_mode == "native"
    assert info.device == "cpu"
    assert info.dtype == ("bfloat16" if cpu.native_bf16() else "float32")
    assert ("computed in float32" in info.detail) == (not cpu.native_bf16())
    assert info.load_s > 0
    assert "unquantized" in info.detail
    backend.close()
    with pytest.raises(RuntimeError, match="load"):
        backend.tokenizer()


def test_compute_dtype_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from quantbench.backends.hf import resolve_compute_dtype

    avx2 = Hardware("cpu", "test CPU", cpu_flags=frozenset({"avx2"}))
    monkeypatch.setattr("quantbench.backends.hf.hardware_here", lambda device: avx2)
    assert resolve_compute_dtype("auto", "cpu", "bfloat16")[0] == torch.float32
    assert resolve_compute_dtype("auto", "cpu", "float32") == ("auto", "")
    assert resolve_compute_dtype("auto", "cuda", "bfloat16") == ("auto", "")
    assert resolve_compute_dtype("bfloat16", "cpu", "bfloat16")[0] == torch.bfloat16
    with pytest.raises(UserError, match="dtype must be one of"):
        get_backend("hf", device="cpu", dtype="int4")


def test_token_logprobs_match_float64_reference(
    backend: Any, reference: Any, token_ids: list[int]
) -> None:
    windows = [token_ids[:40], token_ids[10:50], token_ids[20:60], token_ids[:17], token_ids[:2]]
    scores = list(backend.score_windows(windows, top_k=5))
    assert len(scores) == len(windows)
    for window, score in zip(windows, scores, strict=True):
        expected = reference_logprobs(reference, window)
        targets = np.asarray(window[1:])
        expected_tokens = expected[np.arange(len(targets)), targets]
        assert score.token_logprobs.shape == (len(window) - 1,)
        assert score.token_logprobs.dtype == np.float32
        np.testing.assert_allclose(score.token_logprobs, expected_tokens, atol=1e-4, rtol=0)
        assert score.full_logprobs is None


def test_gathered_logprobs_are_the_full_rows_at_the_ids_asked_for(
    backend: Any, token_ids: list[int]
) -> None:
    """How a variant is compared with the baseline's stored top-k (the top-k + tail method):
    its log-probs at those ids, bit for bit what its full rows hold there, and its top-1 id,
    the full row's argmax."""
    windows = [token_ids[:30], token_ids[30:60]]
    rng = np.random.default_rng(3)
    vocab = len(backend.tokenizer())
    gather = [
        np.stack([rng.choice(vocab, size=5, replace=False) for _ in range(len(w) - 1)])
        for w in windows
    ]
    gathered = list(backend.score_windows(windows, 1, full_vocab_for=0, gather_ids=gather))
    full = list(backend.score_windows(windows, 1, full_vocab_for=len(windows)))
    for ids, with_gather, with_full in zip(gather, gathered, full, strict=True):
        assert with_gather.full_logprobs is None and with_full.full_logprobs is not None
        assert with_gather.gathered_logprobs is not None
        np.testing.assert_array_equal(
            with_gather.gathered_logprobs, np.take_along_axis(with_full.full_logprobs, ids, 1)
        )
        np.testing.assert_array_equal(
            with_gather.topk_ids[:, 0], np.argmax(with_full.full_logprobs, axis=1)
        )


def test_topk_sorted_and_consistent_with_full_vocab(
    backend: Any, reference: Any, token_ids: list[int]
) -> None:
    import torch

    windows = [token_ids[:30], token_ids[30:60], token_ids[60:90]]
    scores = []
    for score in backend.score_windows(windows, top_k=7, full_vocab_for=2):
        assert not torch.is_inference_mode_enabled(), "grad mode leaked into the caller"
        scores.append(score)
    vocab = len(backend.tokenizer())
    assert [s.full_logprobs is not None for s in scores] == [True, True, False]
    for window, score in zip(windows, scores, strict=True):
        n = len(window) - 1
        assert score.topk_ids.shape == (n, 7) and score.topk_ids.dtype == np.int32
        assert score.topk_logprobs.shape == (n, 7) and score.topk_logprobs.dtype == np.float32
        assert np.all(np.diff(score.topk_logprobs, axis=1) <= 0)
        expected = reference_logprobs(reference, window)[:-1]
        np.testing.assert_allclose(
            np.sort(expected, axis=1)[:, ::-1][:, :7], score.topk_logprobs, atol=1e-4, rtol=0
        )
        if score.full_logprobs is None:
            continue
        full = score.full_logprobs
        assert full.shape == (n, vocab) and full.dtype == np.float32
        np.testing.assert_allclose(full, expected, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(
            np.take_along_axis(full, score.topk_ids.astype(np.int64), axis=1),
            score.topk_logprobs,
        )
        np.testing.assert_array_equal(full[np.arange(n), window[1:]], score.token_logprobs)
        np.testing.assert_allclose(np.exp(full.astype(np.float64)).sum(axis=1), 1.0, atol=1e-5)


def test_score_windows_rejects_window_without_targets(backend: Any) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        list(backend.score_windows([[1, 2, 3], [4]], top_k=3))


def test_generate_matches_model_generate_and_is_deterministic(
    backend: Any, reference: Any, token_ids: list[int]
) -> None:
    import torch

    prompt = token_ids[:25]
    first = backend.generate([prompt], max_new_tokens=16)
    again = backend.generate([prompt], max_new_tokens=16)
    assert first == again
    with torch.inference_mode():
        expected = reference.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)[
            0, len(prompt) :
        ].tolist()
    eos = backend.tokenizer().eos_token_id
    if eos in expected:
        expected = expected[: expected.index(eos)]
    assert first[0].token_ids == expected
    assert len(set(expected)) > 3, "greedy output of the test model should not be degenerate"
    assert first[0].text == backend.tokenizer().decode(expected, skip_special_tokens=True)


def test_batched_generate_matches_one_at_a_time(backend: Any, token_ids: list[int]) -> None:
    prompts = [token_ids[:25], token_ids[40:51]]
    batched = backend.generate(prompts, max_new_tokens=12, batch_size=2)
    single = [backend.generate([p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all(len(out.token_ids) > 0 for out in batched)


def test_generate_stops_at_generation_config_eos_list(
    backend: Any, sharp_model: Path, token_ids: list[int], tmp_path: Path
) -> None:
    """An id listed only in generation_config.eos_token_id (a list) also ends the output."""
    prompt = token_ids[:25]
    full = backend.generate([prompt], max_new_tokens=12)[0].token_ids
    stop = full[4]
    artifact = tmp_path / "eos"
    shutil.copytree(sharp_model, artifact)
    generation_config = json.loads((artifact / "generation_config.json").read_text())
    generation_config["eos_token_id"] = [backend.tokenizer().eos_token_id, stop]
    (artifact / "generation_config.json").write_text(json.dumps(generation_config))

    other = get_backend("hf", device="cpu", dtype="bfloat16")
    other.load(artifact)
    cut = other.generate([prompt], max_new_tokens=12)[0].token_ids
    other.close()
    assert cut == full[: full.index(stop)]


def test_timed_generate(backend: Any, token_ids: list[int]) -> None:
    timing = backend.timed_generate([token_ids[:20], token_ids[20:40]], max_new_tokens=6)
    assert timing.new_tokens_per_sequence == 6
    assert timing.batch_size == 2
    assert timing.ttft_s > 0 and timing.decode_s_per_token > 0
    assert timing.total_s == pytest.approx(timing.ttft_s + 5 * timing.decode_s_per_token)
    with pytest.raises(ValueError, match="equal length"):
        backend.timed_generate([token_ids[:20], token_ids[:21]], max_new_tokens=2)


def test_compressed_tensors_artifact_runs_emulated(
    tiny_model: Path, tmp_path: Path, token_ids: list[int]
) -> None:
    artifact = tmp_path / "fp8"
    result = subprocess.run(
        [sys.executable, "-c", FP8_SCRIPT, str(tiny_model), str(artifact)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "quantization_config" in json.loads((artifact / "config.json").read_text())

    backend = get_backend("hf", device="cpu")
    info = backend.load(artifact)
    assert info.execution_mode == "emulated"
    assert "compressed-tensors" in info.detail and "fake-quant" in info.detail
    assert info.warmup_s > 0
    [score] = backend.score_windows([token_ids[:30]], top_k=4, full_vocab_for=1)
    assert score.token_logprobs.shape == (29,)
    assert np.all(np.isfinite(score.token_logprobs)) and np.all(score.token_logprobs <= 0)
    assert score.full_logprobs is not None
    np.testing.assert_allclose(np.exp(score.full_logprobs).sum(axis=1), 1.0, atol=1e-4)
    backend.close()


def test_importing_backends_does_not_import_torch() -> None:
    code = "import quantbench.backends, sys; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unknown_backend_suggests_closest() -> None:
    assert "hf" in REGISTRY
    with pytest.raises(UserError, match='did you mean "hf"') as raised:
        get_backend("hff")
    assert "known backends: hf" in str(raised.value)
