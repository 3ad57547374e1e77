"""Every bad input gets one line, exit status 2, no traceback, and nothing half-written."""

import subprocess
import sys
from pathlib import Path

from conftest import run_cli, tiny_study_yaml


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    error = [line for line in lines if line.startswith("error:")]
    assert error, result.stderr
    assert fragment in " ".join(lines), result.stderr


def test_missing_model_path(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("run", "--model", str(tmp_path / "nope"), "--out", str(out))
    assert_one_line_error(result, "model not found")
    assert not (out / "results.json").exists()


def test_unknown_scheme(tiny_model: Path, tmp_path: Path) -> None:
    result = run_cli(
        "run",
        "--model",
        str(tiny_model),
        "--schemes",
        "bf16,fp8-dynamc",
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(result, "unknown scheme 'fp8-dynamc' (did you mean \"fp8-dynamic\"?)")


def test_malformed_calibration_file(tiny_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "calib.jsonl"
    bad.write_text('{"text": "fine"}\n{broken\n')
    out = tmp_path / "o"
    result = run_cli(
        "run",
        "--model",
        str(tiny_model),
        "--schemes",
        "w4a16-gptq",
        "--calibration",
        str(bad),
        "--out",
        str(out),
    )
    assert_one_line_error(result, "calib.jsonl:2: not valid JSON")
    assert not list((out / "stages").glob("*/*"))


def test_empty_calibration_file(tiny_model: Path, tmp_path: Path) -> None:
    empty = tmp_path / "calib.jsonl"
    empty.write_text("")
    result = run_cli(
        "run",
        "--model",
        str(tiny_model),
        "--schemes",
        "w4a16-gptq",
        "--calibration",
        str(empty),
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(result, "has no rows")


def test_unwritable_output_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    result = run_cli("run", "--schemes", "bf16", "--out", str(blocker / "out"))
    assert_one_line_error(result, "is not writable")


def test_config_key_typo(tmp_path: Path, tiny_model: Path) -> None:
    study = tiny_study_yaml(tmp_path / "s.yaml", tiny_model, tmp_path / "o", ["bf16"])
    study.write_text(study.read_text() + "calibraton: {}\n")
    result = run_cli("run", "--config", str(study))
    assert_one_line_error(result, "unknown key 'calibraton' (did you mean \"calibration\"?)")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli("--debug", "run", "--model", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_schemes_command_lists_every_scheme() -> None:
    result = run_cli("schemes")
    assert result.returncode == 0
    for name in ("bf16", "fp16", "fp8-dynamic", "w4a16-gptq", "w8a16-gptq", "w8a8-int8"):
        assert name in result.stdout


def test_importing_the_package_stays_light() -> None:
    code = (
        "import sys, quantbench.cli, quantbench.config, quantbench.schemes, quantbench.study;"
        "heavy = [m for m in ('torch', 'transformers', 'llmcompressor', 'vllm', 'ray') "
        "if m in sys.modules]; print(heavy); assert not heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_unknown_option_is_a_usage_error_not_a_traceback() -> None:
    result = run_cli("run", "--no-such-option")
    assert result.returncode == 2
    assert "No such option: --no-such-option" in result.stderr
    assert "Traceback" not in result.stderr
