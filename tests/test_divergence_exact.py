"""Exact divergence: quantbench's figures held to plain-numpy float64 from the full logits.

The reference runs the same artifacts (the tiny random model and its fp8-dynamic and
w4a16-gptq variants from the shared `evaluated` study), with the windows batched as the hf
backend batches them so that the logits are the same, and reduces them here in float64 with
numpy alone: log-softmax, KL(baseline ‖ variant), argmax agreement, Δp of the next token.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from rich.console import Console

from quantbench import evaluate
from quantbench.config import load_study_config
from quantbench.corpus import read_windows
from quantbench.evaluate import plan_divergence
from quantbench.memory import scores_stage_bytes
from quantbench.models import inspect_model
from quantbench.study import run_study
from quantbench.study_files import load_results

GIB = 1 << 30


def _float64_logprobs(artifact: Path, windows: list[list[int]]) -> list[np.ndarray]:
    """Full log-softmax per window, float64, from the model's logits (numpy reduction)."""
    import torch
    from transformers import AutoModelForCausalLM

    from quantbench.backends.hf import resolve_compute_dtype

    dtype, _ = resolve_compute_dtype("auto", "cpu", "bfloat16")  # what the study used here
    model = AutoModelForCausalLM.from_pretrained(artifact, dtype=dtype).eval()
    out: list[np.ndarray] = []
    index = 0
    with torch.inference_mode():
        while index < len(windows):  # the hf backend's batches: up to 4 equal-length windows
            end = index + 1
            while (
                end < len(windows) and end - index < 4 and len(windows[end]) == len(windows[index])
            ):
                end += 1
            logits = model(input_ids=torch.tensor(windows[index:end])).logits
            for row in logits.float().numpy().astype(np.float64):
                shifted = row[:-1] - row[:-1].max(axis=1, keepdims=True)
                out.append(shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))
            index = end
    return out


def _reference(evaluated: Path) -> tuple[Any, dict[str, list[np.ndarray]], Any]:
    results = load_results(evaluated / "out")
    corpus_key = results.variant("bf16").metrics.perplexity.corpus_key  # type: ignore[union-attr]
    windows = read_windows(evaluated / "out" / "stages" / "corpus" / corpus_key)
    logprobs = {
        v.name: _float64_logprobs(Path(v.artifact_path or ""), windows.windows)
        for v in results.variants
    }
    return results, logprobs, windows


def test_exact_divergence_matches_numpy_float64(evaluated: Path) -> None:
    results, logprobs, windows = _reference(evaluated)
    base = logprobs["bf16"]
    for name in ("fp8-dynamic", "w4a16-gptq-g32"):
        kls, agree, delta, nll, base_nll = [], [], [], [], []
        for p, q, window, skip in zip(
            base, logprobs[name], windows.windows, windows.score_from, strict=True
        ):
            targets = np.array(window[1:])[skip:]
            p, q = p[skip:], q[skip:]
            rows = np.arange(len(targets))
            kls.append((np.exp(p) * (p - q)).sum(axis=1))
            agree.append(p.argmax(axis=1) == q.argmax(axis=1))
            delta.append(np.exp(q[rows, targets]) - np.exp(p[rows, targets]))
            nll.append(-q[rows, targets])
            base_nll.append(-p[rows, targets])
        kl = np.concatenate(kls)
        record = results.variant(name).metrics.divergence
        assert record is not None and record.method == "exact", record
        assert "recomputed next to the variant" in record.method_detail
        assert record.n_tokens == len(kl) == 400
        assert abs(record.kl_mean.estimate - kl.mean()) <= 1e-4 * kl.mean()
        assert record.kl_mean.low <= record.kl_mean.estimate <= record.kl_mean.high
        assert record.kl_percentiles["max"] == pytest.approx(kl.max(), rel=1e-3)
        assert record.kl_percentiles["p90"] == pytest.approx(np.percentile(kl, 90), rel=1e-3)
        assert record.top1_agreement.estimate == pytest.approx(np.concatenate(agree).mean())
        dp = np.concatenate(delta)
        assert record.ref_prob_delta["mean"] == pytest.approx(dp.mean(), abs=1e-6)
        assert record.ref_prob_delta["p75"] == pytest.approx(np.percentile(dp, 75), abs=1e-6)
        assert record.ref_prob_delta_rms is not None
        assert record.ref_prob_delta_rms.estimate == pytest.approx(
            np.sqrt((dp**2).mean()), rel=1e-4
        )
        q_nll, b_nll = np.concatenate(nll), np.concatenate(base_nll)
        assert record.ln_ppl_ratio is not None and record.ppl_ratio is not None
        assert record.ln_ppl_ratio.estimate == pytest.approx(q_nll.mean() - b_nll.mean(), abs=1e-5)
        assert record.ppl_ratio.estimate == pytest.approx(
            np.exp(q_nll.mean() - b_nll.mean()), rel=1e-5
        )
        assert record.ln_ppl_correlation_tokens == pytest.approx(
            np.corrcoef(q_nll, b_nll)[0, 1], abs=1e-5
        )
        # The top-k + tail check still runs, on the first tokens: top_k = vocab, so exact.
        assert record.approximation["check_tokens"] == 40
        assert record.approximation["max_abs_error"] < 1e-4


LLAMA_CPP_ROWS = (
    "Mean PPL(Q)",
    "Mean PPL(base)",
    "Cor(ln(PPL(Q)), ln(PPL(base))), tokens",
    "Cor(ln(PPL(Q)), ln(PPL(base))), windows",
    "Mean ln(PPL(Q)/PPL(base))",
    "Mean PPL(Q)/PPL(base)",
    "Mean PPL(Q)-PPL(base)",
    "Mean KLD",
    "Maximum KLD",
    *(f"{q} KLD" for q in ("99.9%", "99%", "95%", "90%", "Median", "10%", "5%", "1%", "0.1%")),
    "Minimum KLD",
    "Mean Δp",
    "Maximum Δp",
    *(
        f"{q} Δp"
        for q in ("99.9%", "99%", "95%", "90%", "75%", "Median", "25%", "10%", "5%", "1%", "0.1%")
    ),
    "Minimum Δp",
    "RMS Δp",
    "Same top p",
)


def test_reports_carry_the_llama_cpp_divergence_table(evaluated: Path) -> None:
    text = (evaluated / "out" / "report.md").read_text()
    section = text[text.index("## Divergence") :]
    section = section[: section.index("\n## ")]
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in section.splitlines()}
    assert rows["statistic"].endswith("| fp8-dynamic | w4a16-gptq-g32 |")
    for label in LLAMA_CPP_ROWS:
        assert label in rows, label
        assert rows[label].count(" | ") == 2 and "–" not in rows[label], rows[label]
    for mean in ("Mean KLD", "Mean Δp", "RMS Δp", "Same top p", "Mean PPL(Q)/PPL(base)"):
        assert rows[mean].count("[") == 2, rows[mean]  # each variant's mean with its interval
    assert rows["method"].count("exact (full vocabulary)") == 2
    html = (evaluated / "out" / "report.html").read_text()
    assert '<section id="divergence">' in html and 'href="#divergence"' in html
    assert "Minimum Δp" in html and "exact (full vocabulary)" in html


def test_plan_divergence_takes_the_exact_method_when_two_copies_fit() -> None:
    plan = plan_divergence("hf", 3 * GIB, 20 * GIB)
    assert plan.method == "exact"
    assert "3.0 GiB of 20.0 GiB" in plan.detail


def test_plan_divergence_falls_back_and_says_why() -> None:
    plan = plan_divergence("hf", 30 * GIB, 20 * GIB)
    assert plan.method == "topk_tail"
    assert "30.0 GiB but 20.0 GiB is available" in plan.detail
    assert "lower bound" in plan.detail
    vllm = plan_divergence("vllm", GIB, 20 * GIB)
    assert vllm.method == "topk_tail" and "vllm backend" in vllm.detail


def _divergence_study(root: Path, tiny_model: Path) -> Path:
    study = {
        "model": str(tiny_model),
        "schemes": ["bf16", "fp8-dynamic"],
        "evaluation": {
            "metrics": ["divergence"],
            "corpus": {
                "window": 64,
                "stride": 64,
                "max_tokens": 192,
                "top_k": 16,
                "exact_check_tokens": 32,
            },
        },
        "out": str(root / "out"),
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_fallback_is_recorded_keyed_and_measured(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With too little memory for two copies the study uses the stored top-k + tail, says so
    in the record, keys the stages by the method, and measures the approximation's error."""
    config = load_study_config(_divergence_study(tmp_path, tiny_model))
    info = inspect_model(tiny_model)
    dtype = evaluate.scoring_dtype("auto", tiny_model, cuda=False)  # as the study will
    one, two = (
        scores_stage_bytes(
            info,
            form="activations",
            with_baseline=beside,
            compute_dtype=dtype,
            window=64,
            batch_windows=4,
        ).total_bytes
        for beside in (False, True)
    )
    # room for the variant alone, not for the baseline beside it
    monkeypatch.setattr(evaluate, "available_memory_bytes", lambda _limit=None: (one + two) // 2)
    results = run_study(config, Console(file=io.StringIO()))
    record = results.variant("fp8-dynamic").metrics.divergence
    assert record is not None and record.method == "topk_tail"
    assert "is available" in record.method_detail
    assert record.approximation["check_tokens"] == 32
    # top_k 16 of a 400-token vocabulary: the approximation is a lower bound of the exact KL
    assert record.approximation["kl_mean_approx"] <= record.approximation["kl_mean_exact"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| method | top-k + tail (lower bound) |" in report
    assert "fp8-dynamic: top-k + tail (lower bound) — the baseline next to the variant" in report
    assert "top-16 + tail gives" in report  # the measured error, in the notes
    assert "top-k + tail (lower bound)" in (tmp_path / "out" / "report.html").read_text()
    fallback_keys = {p.name for p in (tmp_path / "out" / "stages" / "divergence").iterdir()}
    monkeypatch.undo()
    exact = run_study(config, Console(file=io.StringIO())).variant("fp8-dynamic")
    assert exact.metrics.divergence is not None and exact.metrics.divergence.method == "exact"
    all_keys = {p.name for p in (tmp_path / "out" / "stages" / "divergence").iterdir()}
    assert len(all_keys - fallback_keys) == 2  # the method is part of both variants' keys
    assert exact.metrics.divergence.kl_mean.estimate >= record.kl_mean.estimate
