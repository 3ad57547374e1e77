"""The study spine end to end on a tiny random model: real llm-compressor, real artifacts."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from conftest import process_gone, read_json, run_cli, tiny_study_yaml
from quantbench import study as study_module
from quantbench.config import load_study_config
from quantbench.process.requests import QuantizeRequest
from quantbench.store import exclusive
from quantbench.study import LOCK_FILE, run_study
from quantbench.study_files import load_results

SCHEMES: list[object] = [
    "bf16",
    "fp8-dynamic",
    {"scheme": "w4a16-gptq", "group_size": 64},
    "w8a8-int8",
]


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


@pytest.fixture(scope="module")
def finished_study(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study")
    # float32 on every CPU class, so the artifacts' narrowing to bfloat16 is always tested.
    config = tiny_study_yaml(
        root / "study.yaml",
        tiny_model,
        root / "out",
        SCHEMES,
        calibration={"compute_dtype": "float32"},
    )
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "w4a16-gptq-g64" in result.stdout  # the table printed at the end
    return root


def test_results_list_every_variant_with_its_artifact(finished_study: Path) -> None:
    results = load_results(finished_study / "out")
    assert [v.name for v in results.variants] == [
        "bf16",
        "fp8-dynamic",
        "w4a16-gptq-g64",
        "w8a8-int8",
    ]
    raw = read_json(finished_study / "out" / "results.json")
    assert raw["schema_version"] == 2
    for variant in results.variants:
        assert variant.status == "ok"
        assert variant.quantization and variant.quantization.wall_s > 0
        assert variant.quantization.peak_rss_bytes > 0
        assert (
            variant.disk_bytes
            and variant.artifact_bytes
            and variant.artifact_bytes > variant.disk_bytes
        )
        artifact = Path(variant.artifact_path or "")
        assert (artifact / "config.json").is_file() and (artifact / "tokenizer.json").is_file()
        assert (artifact / "chat_template.jinja").is_file()
    w4 = results.variant("w4a16-gptq-g64")
    assert w4.options["group_size"] == 32  # hidden 96 is not a multiple of 64
    assert "using 32" in w4.decisions[0]
    assert results.calibration and results.calibration.num_samples == 8


def test_sizes_order_like_the_bit_widths(finished_study: Path) -> None:
    sizes = {v.name: v.disk_bytes or 0 for v in load_results(finished_study / "out").variants}
    assert sizes["w4a16-gptq-g64"] < sizes["w8a8-int8"] < sizes["bf16"]
    assert abs(sizes["w8a8-int8"] - sizes["fp8-dynamic"]) / sizes["fp8-dynamic"] < 0.05


def test_artifacts_are_compressed_tensors_that_transformers_loads(finished_study: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results = load_results(finished_study / "out")
    formats = {}
    for variant in results.variants:
        path = Path(variant.artifact_path or "")
        config = json.loads((path / "config.json").read_text())
        formats[variant.name] = config.get("quantization_config", {}).get("format")
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hello"}], add_generation_prompt=True, return_tensors="pt"
        )["input_ids"]
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        assert out.shape[1] == ids.shape[1] + 5
    assert formats["bf16"] is None
    assert formats["w4a16-gptq-g64"] == "pack-quantized"
    assert formats["w8a8-int8"] == "int-quantized"
    assert formats["fp8-dynamic"] == "float-quantized"


def test_calibrated_in_float32_the_artifacts_store_bfloat16(finished_study: Path) -> None:
    """Calibrated schemes computed in float32 (as configured), and their artifacts hold the
    same dtypes as a bfloat16 run's: exact integer weights, bfloat16 scales and layers."""
    from safetensors import safe_open

    for variant in load_results(finished_study / "out").variants:
        assert variant.quantization
        calibrated = variant.needs_calibration
        assert variant.quantization.compute_dtype == ("float32" if calibrated else "bfloat16")
        assert any("calibrated in float32" in n for n in variant.notes) == calibrated
        artifact = Path(variant.artifact_path or "")
        assert json.loads((artifact / "config.json").read_text())["dtype"] == "bfloat16"
        with safe_open(str(artifact / "model.safetensors"), "pt") as handle:
            dtypes = {handle.get_slice(name).get_dtype() for name in handle.keys()}  # noqa: SIM118
        assert "F32" not in dtypes and "BF16" in dtypes, (variant.name, dtypes)


def test_compute_dtype_is_part_of_the_calibrated_schemes_keys_only(tiny_model: Path) -> None:
    from quantbench.models import resolve_model
    from quantbench.plan import build_plan

    model = resolve_model(str(tiny_model))

    def keys(compute_dtype: str) -> dict[str, str]:
        config = load_study_config(
            None, {"schemes": SCHEMES, "calibration": {"compute_dtype": compute_dtype}}
        )
        return {v.name: v.quantize.key for v in build_plan(config, model).variants}

    auto, float32 = keys("auto"), keys("float32")
    assert [n for n in auto if auto[n] != float32[n]] == ["w4a16-gptq-g64", "w8a8-int8"]


def test_rerun_does_no_model_work(finished_study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ran proves it, not how long it took (the '< 10 s' bound that was here is gone):
    no worker starts and no stage manifest is rewritten."""

    def no_work(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished study must not start a worker")

    monkeypatch.setattr(study_module, "run_worker", no_work)
    stages = finished_study / "out" / "stages"
    before = {p: p.stat().st_mtime_ns for p in stages.glob("*/*/manifest.json")}
    config = load_study_config(finished_study / "study.yaml")
    results = run_study(config, quiet())
    assert all(v.status == "ok" for v in results.variants)
    assert {p: p.stat().st_mtime_ns for p in stages.glob("*/*/manifest.json")} == before


def test_changing_one_option_reruns_only_that_variant(
    finished_study: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    real = study_module.run_worker

    def spy(request: QuantizeRequest, *args: Any, **kwargs: Any) -> Any:
        started.append(request.scheme)
        return real(request, *args, **kwargs)

    monkeypatch.setattr(study_module, "run_worker", spy)
    changed = [*SCHEMES[:3], {"scheme": "w8a8-int8", "smoothing_strength": 0.5}]
    config = load_study_config(
        finished_study / "study.yaml", {"out": str(finished_study / "out")}
    ).model_copy(update={"schemes": load_study_config(None, {"schemes": changed}).schemes})
    results = run_study(config, quiet())
    assert started == ["w8a8-int8"]
    assert results.variants[-1].name == "w8a8-int8-sq0.5"
    assert results.variants[-1].options["smoothing_strength"] == 0.5


def test_a_second_run_on_the_same_folder_is_refused(finished_study: Path) -> None:
    with exclusive(finished_study / "out" / LOCK_FILE, what="test"):
        result = run_cli("run", "--config", str(finished_study / "study.yaml"))
    assert result.returncode == 2
    assert "another quantbench run is using" in result.stderr


def test_sigkill_mid_quantization_then_resume(tiny_model: Path, tmp_path: Path) -> None:
    config = tiny_study_yaml(
        tmp_path / "study.yaml",
        tiny_model,
        tmp_path / "out",
        [{"scheme": "w4a16-gptq", "group_size": 32}],
    )
    text = (
        config.read_text()
        .replace("num_samples: 8", "num_samples: 64")
        .replace("seq_len: 64", "seq_len: 256")
    )
    config.write_text(text)
    process = subprocess.Popen(
        [sys.executable, "-m", "quantbench", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stage_root = tmp_path / "out" / "stages" / "quantize"
    log = tmp_path / "out" / "logs" / "quantize-w4a16-gptq-g32.log"
    deadline = time.monotonic() + 120
    killed = False
    while time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and '"phase": "quantizing"' in log.read_text(errors="replace"):
            os.kill(process.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    process.wait(30)
    assert killed, "the run finished before it could be killed"
    left = sorted(p.name for p in stage_root.iterdir())
    assert len(left) == 1 and left[0].startswith(".tmp-"), left
    assert not (tmp_path / "out" / "results.json").exists()
    # The build folder is named .tmp-<key>-<worker pid>-<nonce>. The worker dies by
    # PR_SET_PDEATHSIG, asynchronously: resume only once it is gone, so the sweep below sees
    # exactly what a killed run leaves (and a worker outliving its driver fails here, named).
    worker_pid = int(left[0].split("-")[-2])
    assert process_gone(worker_pid, 30), f"quantize worker {worker_pid} outlived its driver"

    resumed = run_cli("run", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr
    assert "removed 1 unfinished stage folder" in resumed.stderr, resumed.stderr
    results = load_results(tmp_path / "out")
    assert results.variants[0].status == "ok"
    assert not list(stage_root.glob(".tmp-*"))


def test_a_quantize_worker_that_dies_fails_its_variant_and_the_run_exits_1(
    tiny_model: Path, tmp_path: Path
) -> None:
    """A real failing stage inside a real study (failed variants were only hand-made records
    before): the w4a16 worker is killed mid-quantization, the driver lives on. That variant
    is recorded failed with the reason, the baseline is finished and reported, and the
    command exits 1. Failing first: before the CLI passed the study's status on, this run
    exited 0 and the test failed on the exit status."""
    config = tiny_study_yaml(
        tmp_path / "study.yaml",
        tiny_model,
        tmp_path / "out",
        ["bf16", {"scheme": "w4a16-gptq", "group_size": 32}],
        calibration={"num_samples": 64, "seq_len": 256},
    )
    out = tmp_path / "out"
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "quantbench", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    log = out / "logs" / "quantize-w4a16-gptq-g32.log"
    builds = out / "stages" / "quantize"
    deadline = time.monotonic() + 300
    killed: int | None = None
    while killed is None and time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and '"phase": "quantizing"' in log.read_text(errors="replace"):
            # The build folder is .tmp-<key>-<worker pid>-<nonce>: that pid is the worker.
            for build in builds.glob(".tmp-*"):
                killed = int(build.name.split("-")[-2])
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.05)
    process.wait(300)
    stderr_text = (tmp_path / "stderr.txt").read_text()
    assert killed is not None, "the w4a16 quantization ended before it could be killed"
    assert process.returncode == 1, stderr_text[-3000:]
    results = load_results(out)
    assert {v.name: v.status for v in results.variants} == {
        "bf16": "ok",
        "w4a16-gptq-g32": "failed",
    }
    failed = results.variant("w4a16-gptq-g32")
    assert failed.error and f"exit code {-signal.SIGKILL}" in failed.error, failed.error
    assert "w4a16-gptq-g32" in (out / "report.md").read_text()
    assert process_gone(killed, 30)


def test_a_baseline_is_added_only_when_a_metric_compares_with_one() -> None:
    """Which metrics compare is each metric's own `baseline_inputs`: size and speed do not,
    perplexity, divergence, generations and tasks do."""
    from quantbench.stages import with_baseline

    notes: list[str] = []

    def schemes(metrics: list[str], listed: list[str], tasks: list[str] | None = None) -> list[str]:
        evaluation: dict[str, Any] = {"metrics": metrics}
        if tasks:
            evaluation["tasks"] = {"names": tasks}
        config = load_study_config(None, {"schemes": listed, "evaluation": evaluation})
        return [entry.scheme for entry in with_baseline(config, notes.append).schemes]

    assert schemes(["size", "speed"], ["fp8-dynamic"]) == ["fp8-dynamic"]
    assert notes == []
    for comparing in ("perplexity", "divergence", "generations"):
        assert schemes(["size", comparing], ["fp8-dynamic"]) == ["bf16", "fp8-dynamic"]
    assert schemes(["size"], ["fp8-dynamic"], tasks=["gsm8k"]) == ["bf16", "fp8-dynamic"]
    assert len(notes) == 4 and "adding bf16" in notes[0]
    assert schemes(["perplexity"], ["fp16", "fp8-dynamic"]) == ["fp16", "fp8-dynamic"]
