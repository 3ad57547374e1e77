"""Exit statuses through the real entry point (`python -m quantbench`, the `quantbench`
script): 0 when every variant and metric finished, 1 when one failed, 2 for bad input, 130
when interrupted. Each runs a real study of the tiny model in a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import read_json, run_cli

REFUSING_TEMPLATE = "{{ raise_exception('this chat template takes no user turn') }}"
"""A chat template that refuses every conversation, as strict templates (Mistral's, Gemma's)
refuse one that breaks their role rules: the generations metric fails on it for real."""


@pytest.fixture
def failed_study(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study whose generations metric fails: status 1."""
    root = tmp_path_factory.mktemp("failed")
    model = root / "model"
    shutil.copytree(tiny_model, model)
    (model / "chat_template.jinja").write_text(REFUSING_TEMPLATE)
    study = {
        "model": str(model),
        "schemes": ["bf16"],
        "evaluation": {"metrics": ["generations"], "generations": {"max_new_tokens": 4}},
        "out": str(root / "out"),
    }
    (root / "study.yaml").write_text(yaml.safe_dump(study))
    result = run_cli("run", "--config", str(root / "study.yaml"))
    (root / "status").write_text(str(result.returncode))
    (root / "stderr").write_text(result.stderr)
    return root


def test_a_failed_metric_exits_1(failed_study: Path) -> None:
    stderr = (failed_study / "stderr").read_text()
    assert (failed_study / "status").read_text() == "1", stderr[-3000:]
    assert "Traceback" not in stderr
    results = read_json(failed_study / "out" / "results.json")
    (variant,) = results["variants"]  # type: ignore[misc]
    assert variant["status"] == "ok"  # quantizing worked; the metric did not
    assert "this chat template takes no user turn" in variant["metrics"]["errors"]["generations"]


def test_a_study_with_nothing_failed_exits_0(tiny_model: Path, tmp_path: Path) -> None:
    """Through the installed `quantbench` script, on a pickle checkpoint without tokenizer
    files: refused (2), then run with --allow-pickle (weights_only) and --tokenizer naming
    the folder to take it from: every stage finishes (0), quantized from the real weights."""
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model, folder)
    state = load_file(folder / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    out = tmp_path / "out"
    script = Path(sys.executable).with_name("quantbench")
    args = [str(script), "run", "--model", str(folder), "--schemes", "bf16", "--metrics", "none"]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "COLUMNS": "200"}
        command = [*args, *extra, "--out", str(out)]
        return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)

    refused = run()
    assert refused.returncode == 2 and "is a pickle checkpoint" in refused.stderr
    result = run("--allow-pickle", "--tokenizer", str(tiny_model))
    assert result.returncode == 0, result.stderr[-3000:]
    (variant,) = read_json(out / "results.json")["variants"]  # type: ignore[misc]
    assert variant["status"] == "ok"
    (artifact,) = (out / "stages" / "quantize").glob("*/artifact")
    tokenizer = (artifact / "tokenizer.json").read_bytes()
    assert tokenizer == (tiny_model / "tokenizer.json").read_bytes()
    saved = load_file(artifact / "model.safetensors")
    assert torch.equal(saved["model.norm.weight"], state["model.norm.weight"])


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_cli("run", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model not found"), result.stderr


def test_a_usage_error_exits_2_with_one_line() -> None:
    result = run_cli("run", "--calibration-samples", "many")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--calibration-samples" in lines[0], result.stderr


def test_an_interrupted_study_exits_130_and_leaves_nothing_trusted(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Ctrl-C (SIGINT to the foreground process group) while the quantize stage runs.

    The stage is GPTQ on 64 × 256 calibration tokens, interrupted once its worker reports
    the quantizing phase: a bf16 copy of the tiny model was done within milliseconds of its
    stage folder appearing, so the signal could land after the run had finished (exit 0)."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "quantbench", "run", "--model", str(tiny_model)]
    command += ["--schemes", "w4a16-gptq", "--metrics", "none", "--out", str(out)]
    command += ["--calibration-samples", "64", "--calibration-seq-len", "256"]
    command += ["--set", "schemes=[{scheme: w4a16-gptq, group_size: 32}]"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a job
        # A pytest-xdist worker runs with SIGINT ignored, which a child inherits (Python then
        # keeps ignoring it); a terminal's foreground job has the default disposition.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    quantize = out / "stages" / "quantize"
    log = out / "logs" / "quantize-w4a16-gptq-g32.log"
    while time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and '"phase": "quantizing"' in log.read_text(errors="replace"):
            break  # the worker is inside GPTQ
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()[1][-3000:]
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not (out / "results.json").exists()
    assert not list(quantize.glob("*/manifest.json"))
