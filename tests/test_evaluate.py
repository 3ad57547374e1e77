"""Evaluation on a tiny random model: every metric, checked against independent float64 math."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from quantbench.config import load_study_config
from quantbench.corpus import read_windows
from quantbench.executors import local as local_executor
from quantbench.schedule import JobRun, overlapping
from quantbench.study import run_study
from quantbench.study_files import load_results


def _float64_logprobs(artifact: Path, windows: list[list[int]]) -> list[np.ndarray]:
    import torch
    from transformers import AutoModelForCausalLM

    from quantbench.backends.hf import resolve_compute_dtype

    dtype, _ = resolve_compute_dtype("auto", "cpu", "bfloat16")  # what the study used here
    model = AutoModelForCausalLM.from_pretrained(artifact, dtype=dtype).eval()
    out = []
    with torch.inference_mode():
        for window in windows:
            logits = model(torch.tensor([window])).logits[0].double()
            out.append(torch.log_softmax(logits, dim=-1)[:-1].numpy())
    return out


def test_every_metric_is_recorded_for_every_variant(evaluated: Path) -> None:
    results = load_results(evaluated / "out")
    for variant in results.variants:
        metrics = variant.metrics
        assert not metrics.errors, metrics.errors
        assert metrics.size and metrics.perplexity and metrics.divergence
        assert metrics.speed and metrics.generations
        assert metrics.generations.n_prompts == 48
        assert [p.batch_size for p in metrics.speed.points] == [1, 2]
        assert all(p.ttft_s.n == 5 for p in metrics.speed.points)
    hashes = {v.metrics.perplexity.tokens_sha256 for v in results.variants if v.metrics.perplexity}
    assert len(hashes) == 1


def test_baseline_is_zero_divergence_and_native(evaluated: Path) -> None:
    baseline = load_results(evaluated / "out").variant("bf16").metrics
    assert baseline.divergence and baseline.divergence.kl_mean.estimate == 0.0
    assert baseline.divergence.top1_agreement.estimate == 1.0
    assert baseline.speed and baseline.speed.execution_mode == "native"
    assert baseline.generations and baseline.generations.exact_match_rate == 1.0


def test_quantized_speed_is_labelled_emulated(evaluated: Path) -> None:
    for name in ("fp8-dynamic", "w4a16-gptq-g32"):
        speed = load_results(evaluated / "out").variant(name).metrics.speed
        assert speed and speed.execution_mode == "emulated"
        assert "emulat" in speed.detail or "decompress" in speed.detail


def test_perplexity_and_kl_match_an_independent_float64_reference(evaluated: Path) -> None:
    results = load_results(evaluated / "out")
    corpus_key = results.variant("bf16").metrics.perplexity.corpus_key  # type: ignore[union-attr]
    windows = read_windows(evaluated / "out" / "stages" / "corpus" / corpus_key)
    assert windows.score_from[1] == 64 - 1 - 48  # overlapping windows skip their context
    reference: dict[str, Any] = {}
    for variant in results.variants:
        logprobs = _float64_logprobs(Path(variant.artifact_path or ""), windows.windows)
        reference[variant.name] = logprobs
        nll = []
        for lp, window, skip in zip(logprobs, windows.windows, windows.score_from, strict=True):
            targets = np.array(window[1:])
            nll.append(-lp[np.arange(len(targets)), targets][skip:])
        expected_nll = float(np.concatenate(nll).mean())
        record = variant.metrics.perplexity
        assert record and record.n_tokens == 400
        assert record.nll_mean == pytest.approx(expected_nll, rel=2e-4)
        assert record.perplexity.estimate == pytest.approx(np.exp(expected_nll), rel=2e-4)
        assert record.perplexity.low < record.perplexity.estimate < record.perplexity.high
    base = reference["bf16"]
    for name in ("fp8-dynamic", "w4a16-gptq-g32"):
        kls, agree = [], []
        for p, q, skip in zip(base, reference[name], windows.score_from, strict=True):
            p, q = p[skip:], q[skip:]
            kls.append((np.exp(p) * (p - q)).sum(axis=1))
            agree.append(p.argmax(axis=1) == q.argmax(axis=1))
        record = results.variant(name).metrics.divergence
        assert record is not None
        assert record.kl_mean.estimate == pytest.approx(
            float(np.concatenate(kls).mean()), rel=0.02, abs=1e-6
        )
        assert record.top1_agreement.estimate == pytest.approx(
            float(np.concatenate(agree).mean()), abs=0.01
        )
        assert record.approximation["check_tokens"] == 40
        assert record.approximation["max_abs_error"] < 1e-4  # top_k = vocab: exact


def test_rerun_evaluates_nothing(evaluated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_worker(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("a finished evaluation must not start a worker")

    def no_server(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished evaluation must not start the fork server")

    monkeypatch.setattr(local_executor, "run_python_worker", no_worker)
    monkeypatch.setattr(local_executor.forkserver.ForkServer, "start", no_server)
    config = load_study_config(evaluated / "study.yaml")
    results = run_study(config, Console(file=io.StringIO()))
    assert results.variant("fp8-dynamic").metrics.divergence is not None


def test_results_json_keeps_per_prompt_generations(evaluated: Path) -> None:
    data = json.loads((evaluated / "out" / "results.json").read_text())
    items = data["variants"][1]["metrics"]["generations"]["items"]
    assert {"id", "category", "text", "exact_match", "rouge_l", "first_diff"} <= set(items[0])


def test_a_study_times_its_variants_alone_and_records_each_stages_threads(
    evaluated: Path,
) -> None:
    """The shared study ran with the default schedule: no timed job overlapped another, the
    speed records say so, and every metric stage records the threads that computed it."""
    out = evaluated / "out"
    schedule = json.loads((evaluated / "first-run-results.json").read_text())["provenance"][
        "schedule"
    ]
    runs = [JobRun.from_record(job) for job in schedule["jobs"]]
    ended = {r.name: r.ended_s for r in runs}
    for run in runs:  # a variant's evaluation starts after its quantization and the baseline's
        variant = run.name.split(" ", 1)[1]
        if not run.name.startswith("quantize"):
            assert run.started_s >= ended[f"quantize {variant}"]  # type: ignore[operator]
        if run.name.startswith("evaluate") and variant != "bf16":
            assert run.started_s >= ended["evaluate bf16"]  # type: ignore[operator]
    timed = {r.name for r in runs if r.alone}
    assert timed == {f"time {v}" for v in ("bf16", "fp8-dynamic", "w4a16-gptq-g32")}
    assert not [pair for pair in overlapping(runs) if timed & set(pair)]
    if schedule["cores"] >= 2:  # on two cores the untimed jobs share the machine
        assert [pair for pair in overlapping(runs) if not timed & set(pair)]
    results = load_results(out)
    for variant in results.variants:
        assert variant.metrics.speed is not None and variant.metrics.speed.ran_alone is True
    metric_stages = 0
    for manifest in out.glob("stages/*/*/manifest.json"):  # stages/<kind>/<key>/
        stage = json.loads(manifest.read_text())
        if "metric" in stage:
            metric_stages += 1
            assert stage["threads"] >= 1
            assert stage["ran_alone"] is (stage["metric"] in ("speed", "size"))
            if stage["metric"] not in ("speed", "size"):  # the study's count, any cores
                assert stage["threads"] == schedule["cores"]
            if stage.get("cores_raised_to") is not None:  # lent cores while it ran
                (job,) = [r for r in runs if r.name == f"evaluate {stage['variant']}"]
                assert stage["cores_raised_to"] in [n for _, n in job.raised]
                assert stage["cores_raised_to"] > stage["cores"]
    assert metric_stages >= 3 * 4  # scores, perplexity, generations, speed... per variant
    for run in runs:  # only untimed evaluations are lent cores, and only up to the machine's
        assert not run.raised or run.name.startswith("evaluate")
        assert all(n <= schedule["cores"] for _, n in run.raised)
