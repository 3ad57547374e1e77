"""Every bad input gets one line, exit status 2, no traceback, and nothing half-written."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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


# --- the front door: version, help, defaults, flags ---------------------------------------


def run_here(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The command line in this process, as the `quantbench` script runs it."""
    from quantbench.cli import exit_status

    capsys.readouterr()
    status = exit_status(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_flag(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    from quantbench import __version__

    assert run_here([flag], capsys) == (0, f"quantbench {__version__}\n", "")


@pytest.mark.parametrize(
    "command",
    [[], ["run"], ["plan"], ["schemes"], ["report"], ["compare"], ["env"], ["env", "create"]],
)
def test_h_is_help_everywhere(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_here([*command, "-h"], capsys)
    assert status == 0, err
    assert out.startswith("Usage: quantbench") and "-h, --help" in out


def test_run_help_shows_every_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from quantbench.cli import STUDY_FLAGS

    monkeypatch.setenv("COLUMNS", "200")
    status, out, _ = run_here(["run", "--help"], capsys)
    assert status == 0
    blocks: list[str] = []  # one per option: its first line and the wrapped help under it
    for line in out.split("Options:", 1)[1].splitlines():
        if line.startswith("  -"):
            blocks.append(line)
        elif blocks:
            blocks[-1] += " " + line.strip()
    assert blocks[-1].startswith("  -h, --help")
    assert len(blocks[:-1]) == len(STUDY_FLAGS) + 2  # and --config, --set
    for block in blocks[:-1]:
        assert "[default: " in block, block
    text = " ".join(out.split())
    assert "[default: 64]" in text and "[default: quantbench-out]" in text
    assert "[default: bf16,fp8-dynamic,w4a16-gptq,w8a8-int8]" in text


def test_boolean_flags_come_in_pairs_without_a_placeholder(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    _, out, _ = run_here(["run", "-h"], capsys)
    for flag in ("allow-pickle", "allow-code-execution", "apply-chat-template"):
        assert f"--{flag} / --no-{flag}" in out
    assert "<bool>" not in out and "BOOLEAN" not in out


def test_debug_is_accepted_anywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from quantbench.cli import exit_status
    from quantbench.errors import UserError

    missing = str(tmp_path / "nope")
    for args in (
        ["--debug", "run", "--model", missing],
        ["run", "--debug", "--model", missing],
        ["run", "--model", missing, "--debug"],
    ):
        with pytest.raises(UserError, match="model not found"):
            exit_status([*args, "--out", str(tmp_path / "out")])
    status, _, err = run_here(["run", "--model", missing, "--out", str(tmp_path / "o")], capsys)
    assert status == 2 and "Traceback" not in err


def test_plan_takes_every_flag_run_takes() -> None:
    import typer

    from quantbench.cli import app

    group = typer.main.get_command(app)
    commands = group.commands  # type: ignore[attr-defined]

    def options(name: str) -> list[tuple[str, ...]]:
        return [tuple(p.opts + p.secondary_opts) for p in commands[name].params]

    assert options("plan") == options("run")
    assert ("--tokenizer",) in options("run") and ("--corpus",) in options("plan")


def _study_app() -> tuple[Any, list[Any], Any]:
    """A CLI with only `run` (and a second command, so typer keeps the name), whose body
    keeps each StudyConfig it receives; with a runner to invoke it."""
    import typer
    from typer.testing import CliRunner

    from quantbench.cli import _study_command

    seen: list[Any] = []
    app = typer.Typer()
    app.command("run")(_study_command(seen.append))
    app.command("other")(lambda: None)
    return app, seen, CliRunner()


def test_flags_override_the_study_file_only_when_given(tmp_path: Path) -> None:
    """A flag left at its (shown) default keeps the file's value; one given replaces it."""
    import typer
    from typer.testing import CliRunner

    from quantbench.cli import _study_command

    seen = []

    def body(study: object) -> None:
        seen.append(study)

    app = typer.Typer()
    app.command("run")(_study_command(body))
    app.command("other")(lambda: None)
    study = tmp_path / "study.yaml"
    study.write_text(
        "calibration: {num_samples: 8}\nevaluation: {corpus: {max_tokens: 100}}\n"
        "allow_pickle: true\n"
    )
    result = CliRunner().invoke(app, ["run", "-c", str(study), "--max-tokens", "200"])
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.calibration.num_samples == 8  # type: ignore[attr-defined]
    assert config.evaluation.corpus.max_tokens == 200  # type: ignore[attr-defined]
    assert config.allow_pickle is True  # type: ignore[attr-defined]
    result = CliRunner().invoke(app, ["run", "-c", str(study), "--no-allow-pickle"])
    assert seen[-1].allow_pickle is False  # type: ignore[attr-defined]


def test_set_reaches_any_config_key_over_the_file_and_the_flags(tmp_path: Path) -> None:
    app, seen, runner = _study_app()
    study = tmp_path / "study.yaml"
    study.write_text("evaluation: {corpus: {max_tokens: 100, window: 128}}\n")
    argv = ["run", "-c", str(study), "--max-tokens", "200", "--set"]
    result = runner.invoke(
        app,
        [*argv, "evaluation.corpus.max_tokens=300", "--set", "evaluation.metrics=[size, speed]"],
    )
    assert result.exit_code == 0, result.output
    evaluation = seen[-1].evaluation
    assert evaluation.corpus.max_tokens == 300 and evaluation.corpus.window == 128
    assert list(evaluation.metric_names()) == ["size", "speed"]


def test_set_null_clears_what_the_file_sets(tmp_path: Path) -> None:
    """A flag left out means "as the file says"; `--set KEY=null` is how a user clears a
    key the file sets (here the task limit, to run every item)."""
    app, seen, runner = _study_app()
    study = tmp_path / "study.yaml"
    study.write_text("evaluation: {tasks: {names: [gsm8k], limit: 20, max_gen_tokens: 64}}\n")
    argv = ["run", "-c", str(study), "--set", "evaluation.tasks.limit=null"]
    result = runner.invoke(app, [*argv, "--set", "evaluation.tasks.max_gen_tokens="])
    assert result.exit_code == 0, result.output
    tasks = seen[-1].evaluation.tasks
    assert tasks.limit is None and tasks.max_gen_tokens is None and tuple(tasks.names) == ("gsm8k",)
    runner.invoke(app, ["run", "-c", str(study)])
    assert seen[-1].evaluation.tasks.limit == 20


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("evaluation.corpus.max_tokens", "--set expects KEY=VALUE"),
        ("evaluation..window=3", "--set expects KEY=VALUE"),
        ("evaluation.corpus.windows=3", "unknown key 'evaluation.corpus.windows'"),
        ("evaluation.corpus.window=many", "'evaluation.corpus.window'"),
    ],
)
def test_a_bad_set_is_one_line_and_exit_2(
    assignment: str, message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, _, err = run_here(["plan", "--set", assignment, "--out", str(tmp_path / "o")], capsys)
    assert status == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_schemes_is_readable_at_80_columns(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from quantbench.schemes import all_schemes

    monkeypatch.setenv("COLUMNS", "80")
    status, out, _ = run_here(["schemes"], capsys)
    assert status == 0
    lines = out.splitlines()
    for scheme in all_schemes():
        assert any(line.startswith(scheme.name) for line in lines), scheme.name
        for option in scheme.defaults:
            assert any(line.strip().startswith(f"{option}: ") for line in lines), option
    assert max(len(line) for line in lines if not line.startswith("  ")) <= 80
