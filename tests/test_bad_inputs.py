"""Malformed inputs to every command: exit status 2, exactly one line on stderr, no
traceback, and nothing left in the output folder that a later run would trust.

The commands run in this process (`cli.exit_status`, what the `quantbench` script calls)
with tiny files made in tmp_path; the real entry point is exercised in test_exit_status.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from quantbench.cli import exit_status

Case = Callable[[Path, Path], list[str]]
"""(tmp_path, tiny model folder) -> the command line; the output folder is tmp_path/out."""

CASES: dict[str, tuple[Case, str]] = {}


def case(name: str, fragment: str) -> Callable[[Case], Case]:
    """Register a bad input: its command line, and a fragment its one-line error must hold."""

    def register(make: Case) -> Case:
        CASES[name] = (make, fragment)
        return make

    return register


def run(*args: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, model: ["run", *args, "--out", str(tmp / "out")]


def copy_model(model: Path, tmp: Path, name: str = "model") -> Path:
    dest = tmp / name
    shutil.copytree(model, dest)
    return dest


def run_on(folder: Path, tmp: Path, *extra: str) -> list[str]:
    return ["run", "--model", str(folder), "--schemes", "bf16", *extra, "--out", str(tmp / "out")]


def run_tiny(*extra: str) -> Case:
    """`run` on the (valid) tiny model with `extra` options; `{tmp}` in them is tmp_path."""

    def make(tmp: Path, model: Path) -> list[str]:
        args = [a.replace("{tmp}", str(tmp)) for a in extra]
        return ["run", "--model", str(model), *args, "--out", str(tmp / "out")]

    return make


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


# --- model folders -----------------------------------------------------------------------


@case("model path missing", "model not found")
def _model_missing(tmp: Path, model: Path) -> list[str]:
    return run_on(tmp / "no-such-model", tmp)


@case("folder without config.json", "no config.json")
def _no_config(tmp: Path, model: Path) -> list[str]:
    folder = copy_model(model, tmp)
    (folder / "config.json").unlink()
    return run_on(folder, tmp)


@case("config.json not JSON", "config.json is not valid JSON")
def _config_not_json(tmp: Path, model: Path) -> list[str]:
    folder = copy_model(model, tmp)
    write(folder / "config.json", '{"model_type": "llama",')
    return run_on(folder, tmp)


@case("config.json of an unknown architecture", "does not describe a causal LM")
def _config_unknown_type(tmp: Path, model: Path) -> list[str]:
    folder = copy_model(model, tmp)
    config = json.loads((folder / "config.json").read_text())
    write(folder / "config.json", json.dumps({**config, "model_type": "no-such-arch"}))
    return run_on(folder, tmp)


@case("config.json but no weights", "no .safetensors or .bin weights")
def _no_weights(tmp: Path, model: Path) -> list[str]:
    folder = copy_model(model, tmp)
    (folder / "model.safetensors").unlink()
    return run_on(folder, tmp)


@case("truncated model.safetensors", "model.safetensors is truncated")
def _truncated(tmp: Path, model: Path) -> list[str]:
    folder = copy_model(model, tmp)
    data = (folder / "model.safetensors").read_bytes()
    write(folder / "model.safetensors", data[: len(data) // 2])
    return run_on(folder, tmp)


@case("safetensors file of random bytes", "model.safetensors is truncated or not a safetensors")
def _garbage_safetensors(tmp: Path, model: Path) -> list[str]:
    folder = copy_model(model, tmp)
    write(folder / "model.safetensors", b"\xff" * 4096)
    return run_on(folder, tmp)


@case("safetensors header not JSON", "its safetensors header is not a JSON object")
def _bad_header(tmp: Path, model: Path) -> list[str]:
    folder = copy_model(model, tmp)
    write(folder / "model.safetensors", (16).to_bytes(8, "little") + b"{not json at all" + b"0")
    return run_on(folder, tmp)


@case("half the weights missing", "lacks 10 of the 21 weights")
def _half_the_keys(tmp: Path, model: Path) -> list[str]:
    from safetensors.torch import load_file, save_file

    folder = copy_model(model, tmp)
    tensors = load_file(folder / "model.safetensors")
    kept = sorted(tensors)[: len(tensors) // 2]
    save_file({k: tensors[k] for k in kept}, folder / "model.safetensors", {"format": "pt"})
    return run_on(folder, tmp)


@case("weights of another shape than config.json says", "does not match config.json")
def _shape_mismatch(tmp: Path, model: Path) -> list[str]:
    folder = copy_model(model, tmp)
    config = json.loads((folder / "config.json").read_text())
    write(folder / "config.json", json.dumps({**config, "intermediate_size": 100}))
    return run_on(folder, tmp)


def _pickle_model(tmp: Path, model: Path, content: object, name: str = "pytorch_model.bin") -> Path:
    import torch

    folder = copy_model(model, tmp)
    (folder / "model.safetensors").unlink()
    torch.save(content, folder / name)
    return folder


@case("pickle checkpoint without --allow-pickle", "is a pickle checkpoint")
def _pickle_refused(tmp: Path, model: Path) -> list[str]:
    from safetensors.torch import load_file

    state = load_file(model / "model.safetensors")
    return run_on(_pickle_model(tmp, model, state), tmp)


@case("pytorch_model.bin that is not a state dict", "is not a state dict")
def _pickle_not_state_dict(tmp: Path, model: Path) -> list[str]:
    return run_on(_pickle_model(tmp, model, [1, 2, 3]), tmp, "--allow-pickle")


@case("pytorch_model.bin of random bytes", "cannot be read as a weights-only checkpoint")
def _pickle_garbage(tmp: Path, model: Path) -> list[str]:
    folder = _pickle_model(tmp, model, {})
    write(folder / "pytorch_model.bin", b"\x80\x02garbage" * 10)
    return run_on(folder, tmp, "--allow-pickle")


@case("pickle holding an object weights_only refuses", "cannot be read as a weights-only")
def _pickle_object(tmp: Path, model: Path) -> list[str]:
    return run_on(_pickle_model(tmp, model, {"w": Path("x")}), tmp, "--allow-pickle")


@case("only a model.pt", "loads pickle weights only from pytorch_model.bin")
def _pickle_pt(tmp: Path, model: Path) -> list[str]:
    return run_on(_pickle_model(tmp, model, {}, name="model.pt"), tmp, "--allow-pickle")


@case("no tokenizer files", "has no usable tokenizer")
def _no_tokenizer(tmp: Path, model: Path) -> list[str]:
    folder = copy_model(model, tmp)
    (folder / "tokenizer.json").unlink()
    return run_on(folder, tmp)


@case("vocab.json without merges.txt", "merges.txt is missing")
def _half_a_tokenizer(tmp: Path, model: Path) -> list[str]:
    folder = copy_model(model, tmp)
    (folder / "tokenizer.json").unlink()
    write(folder / "vocab.json", "{}")
    return run_on(folder, tmp)


@case("--tokenizer folder missing", "--tokenizer")
def _tokenizer_missing(tmp: Path, model: Path) -> list[str]:
    return run_on(model, tmp, "--tokenizer", str(tmp / "nowhere"))


@case("--tokenizer folder without a tokenizer", "has no usable tokenizer")
def _tokenizer_empty(tmp: Path, model: Path) -> list[str]:
    (tmp / "empty").mkdir()
    return run_on(model, tmp, "--tokenizer", str(tmp / "empty"))


@case("shard index naming a missing shard", "names shard(s) that are missing")
def _missing_shard(tmp: Path, model: Path) -> list[str]:
    folder = copy_model(model, tmp)
    index = {
        "metadata": {},
        "weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"},
    }
    write(folder / "model.safetensors.index.json", json.dumps(index))
    return run_on(folder, tmp)


@case("shard index not JSON", "model.safetensors.index.json is not valid JSON")
def _index_not_json(tmp: Path, model: Path) -> list[str]:
    folder = copy_model(model, tmp)
    write(folder / "model.safetensors.index.json", "{")
    return run_on(folder, tmp)


# --- GGUF files --------------------------------------------------------------------------


@case("GGUF file missing", "model file not found")
def _gguf_missing(tmp: Path, model: Path) -> list[str]:
    return run_on(tmp / "missing.gguf", tmp)


@case("GGUF file of random bytes", "cannot read GGUF")
def _gguf_garbage(tmp: Path, model: Path) -> list[str]:
    return run_on(write(tmp / "bad.gguf", b"GGUF" + b"\x07" * 64), tmp)


@case("empty GGUF file", "not a GGUF file")
def _gguf_empty(tmp: Path, model: Path) -> list[str]:
    return run_on(write(tmp / "empty.gguf", b""), tmp)


# --- calibration files -------------------------------------------------------------------

CALIBRATE = ("--schemes", "w8a8-int8", "--metrics", "none")


@case("calibration .jsonl with a broken line", "calib.jsonl:2: not valid JSON")
def _calib_jsonl(tmp: Path, model: Path) -> list[str]:
    write(tmp / "calib.jsonl", '{"text": "fine"}\n{broken\n')
    return run_tiny(*CALIBRATE, "--calibration", "{tmp}/calib.jsonl")(tmp, model)


@case("empty calibration .jsonl", "has no rows")
def _calib_empty(tmp: Path, model: Path) -> list[str]:
    write(tmp / "calib.jsonl", "")
    return run_tiny(*CALIBRATE, "--calibration", "{tmp}/calib.jsonl")(tmp, model)


@case("calibration .json that is not a list of rows", "calib.json")
def _calib_json(tmp: Path, model: Path) -> list[str]:
    write(tmp / "calib.json", '{"text": "a mapping, not rows"}')
    return run_tiny(*CALIBRATE, "--calibration", "{tmp}/calib.json")(tmp, model)


@case("calibration rows without text, messages or prompt", "calib.jsonl")
def _calib_no_text(tmp: Path, model: Path) -> list[str]:
    write(tmp / "calib.jsonl", '{"title": "no text field"}\n')
    return run_tiny(*CALIBRATE, "--calibration", "{tmp}/calib.jsonl")(tmp, model)


@case("calibration .parquet of random bytes", "calib.parquet")
def _calib_parquet(tmp: Path, model: Path) -> list[str]:
    write(tmp / "calib.parquet", b"PAR1 this is not parquet")
    return run_tiny(*CALIBRATE, "--calibration", "{tmp}/calib.parquet")(tmp, model)


@case("empty calibration .txt", "calib.txt")
def _calib_txt(tmp: Path, model: Path) -> list[str]:
    write(tmp / "calib.txt", "\n\n")
    return run_tiny(*CALIBRATE, "--calibration", "{tmp}/calib.txt")(tmp, model)


@case("calibration file of an unknown format", "calib.csv")
def _calib_csv(tmp: Path, model: Path) -> list[str]:
    write(tmp / "calib.csv", "text\nhello\n")
    return run_tiny(*CALIBRATE, "--calibration", "{tmp}/calib.csv")(tmp, model)


@case("calibration file missing", "missing.jsonl")
def _calib_missing(tmp: Path, model: Path) -> list[str]:
    return run_tiny(*CALIBRATE, "--calibration", "{tmp}/missing.jsonl")(tmp, model)


# --- corpora and prompt files --------------------------------------------------------------

EVALUATE = ("--schemes", "bf16")


@case("corpus file missing", "corpus")
def _corpus_missing(tmp: Path, model: Path) -> list[str]:
    return run_tiny(*EVALUATE, "--metrics", "perplexity", "--corpus", "{tmp}/none.txt")(tmp, model)


@case("empty corpus .txt", "empty.txt")
def _corpus_empty(tmp: Path, model: Path) -> list[str]:
    write(tmp / "empty.txt", "")
    args = (*EVALUATE, "--metrics", "perplexity", "--corpus", "{tmp}/empty.txt")
    return run_tiny(*args)(tmp, model)


@case("corpus .jsonl without text rows", "corpus.jsonl")
def _corpus_jsonl(tmp: Path, model: Path) -> list[str]:
    write(tmp / "corpus.jsonl", '{"body": "no text key"}\n')
    args = (*EVALUATE, "--metrics", "perplexity", "--corpus", "{tmp}/corpus.jsonl")
    return run_tiny(*args)(tmp, model)


@case("prompts file missing", "prompt file not found")
def _prompts_missing(tmp: Path, model: Path) -> list[str]:
    args = (*EVALUATE, "--metrics", "generations", "--prompts", "{tmp}/none.jsonl")
    return run_tiny(*args)(tmp, model)


@case("prompts .jsonl with a broken line", "prompts.jsonl:1: not valid JSON")
def _prompts_broken(tmp: Path, model: Path) -> list[str]:
    write(tmp / "prompts.jsonl", "{oops\n")
    args = (*EVALUATE, "--metrics", "generations", "--prompts", "{tmp}/prompts.jsonl")
    return run_tiny(*args)(tmp, model)


# --- study files ---------------------------------------------------------------------------


def _study(tmp: Path, text: str, command: str = "run") -> list[str]:
    return [command, "--config", str(write(tmp / "study.yaml", text)), "--out", str(tmp / "out")]


@case("study file missing", "study config not found")
def _study_missing(tmp: Path, model: Path) -> list[str]:
    return ["run", "--config", str(tmp / "nope.yaml")]


@case("study file not YAML", "is not valid YAML")
def _study_not_yaml(tmp: Path, model: Path) -> list[str]:
    return _study(tmp, "model: [unclosed\n")


@case("study file a list", "must be a mapping")
def _study_list(tmp: Path, model: Path) -> list[str]:
    return _study(tmp, "- bf16\n- fp8-dynamic\n")


@case("study file with a typo'd key", 'did you mean "calibration"')
def _study_typo(tmp: Path, model: Path) -> list[str]:
    return _study(tmp, "calibraton:\n  num_samples: 8\n")


@case("study file with a wrong type", "calibration.num_samples")
def _study_type(tmp: Path, model: Path) -> list[str]:
    return _study(tmp, "calibration:\n  num_samples: many\n")


@case("study file with a negative window", "evaluation.corpus.window")
def _study_negative(tmp: Path, model: Path) -> list[str]:
    return _study(tmp, yaml.safe_dump({"evaluation": {"corpus": {"window": -4}}}))


@case("study file listing a model twice", "a model is listed twice")
def _study_twice(tmp: Path, model: Path) -> list[str]:
    return _study(tmp, yaml.safe_dump({"model": [str(model), str(model)]}))


# --- option values -------------------------------------------------------------------------


@case("--calibration-samples not a number", "Invalid value for '--calibration-samples'")
def _samples_text(tmp: Path, model: Path) -> list[str]:
    return run("--calibration-samples", "abc")(tmp, model)


@case("--calibration-samples 0", "calibration.num_samples")
def _samples_zero(tmp: Path, model: Path) -> list[str]:
    return run("--calibration-samples", "0")(tmp, model)


@case("--max-ppl-increase not a percentage", "--max-ppl-increase takes a percentage")
def _ppl_text(tmp: Path, model: Path) -> list[str]:
    return run("--max-ppl-increase", "lots")(tmp, model)


@case("--max-kl negative", "decision.max_kl")
def _kl_negative(tmp: Path, model: Path) -> list[str]:
    return run("--max-kl", "-1")(tmp, model)


@case("unknown --backend", "unknown backend 'vlm'")
def _backend(tmp: Path, model: Path) -> list[str]:
    return run("--backend", "vlm")(tmp, model)


@case("unknown --dtype", "evaluation.dtype")
def _dtype(tmp: Path, model: Path) -> list[str]:
    return run("--dtype", "float8")(tmp, model)


@case("unknown --executor", "execution.executor")
def _executor(tmp: Path, model: Path) -> list[str]:
    return run("--executor", "k8s")(tmp, model)


@case("unknown scheme", "unknown scheme 'fp8-dynamc'")
def _scheme(tmp: Path, model: Path) -> list[str]:
    return run_tiny("--schemes", "bf16,fp8-dynamc")(tmp, model)


@case("unknown metric", "perplexty")
def _metric(tmp: Path, model: Path) -> list[str]:
    return run_tiny("--schemes", "bf16", "--metrics", "perplexty")(tmp, model)


@case("unknown option", "No such option: --frobnicate")
def _unknown_option(tmp: Path, model: Path) -> list[str]:
    return run("--frobnicate")(tmp, model)


@case("option without its value", "--model")
def _option_no_value(tmp: Path, model: Path) -> list[str]:
    return ["run", "--model"]


@case("unknown command", "No such command 'rnu'")
def _unknown_command(tmp: Path, model: Path) -> list[str]:
    return ["rnu"]


# --- output locations ------------------------------------------------------------------------


@case("--out under a file", "is not writable")
def _out_under_file(tmp: Path, model: Path) -> list[str]:
    blocker = write(tmp / "file", "a file where a folder should be")
    return ["run", "--schemes", "bf16", "--model", str(model), "--out", str(blocker / "out")]


@case("--out an unknown URL scheme", "nosuchproto")
def _out_url(tmp: Path, model: Path) -> list[str]:
    return ["run", "--model", str(model), "--schemes", "bf16", "--out", "nosuchproto://x/y"]


# --- task options ----------------------------------------------------------------------------


@case("--task-data folder without the task's files", "gsm8k: no")
def _task_data_empty(tmp: Path, model: Path) -> list[str]:
    (tmp / "data").mkdir()
    return run_tiny("--schemes", "bf16", "--tasks", "gsm8k", "--task-data", "{tmp}/data")(
        tmp, model
    )


@case("--task-data folder missing", "task data folder not found")
def _task_data_missing(tmp: Path, model: Path) -> list[str]:
    return run_tiny("--schemes", "bf16", "--tasks", "gsm8k", "--task-data", "{tmp}/none")(
        tmp, model
    )


@case("--limit 0", "--limit takes a number of items")
def _limit_zero(tmp: Path, model: Path) -> list[str]:
    return run("--tasks", "gsm8k", "--limit", "0")(tmp, model)


@case("size on the vllm backend", "backend vllm runs")
def _size_vllm(tmp: Path, model: Path) -> list[str]:
    return run("--backend", "vllm", "--metrics", "size,perplexity")(tmp, model)


# --- plan, report, compare, env ----------------------------------------------------------------


@case("plan: model missing", "model not found")
def _plan_missing(tmp: Path, model: Path) -> list[str]:
    return ["plan", "--model", str(tmp / "nope"), "--out", str(tmp / "out")]


@case("plan: truncated weights", "model.safetensors is truncated")
def _plan_truncated(tmp: Path, model: Path) -> list[str]:
    args = _truncated(tmp, model)
    return ["plan", *args[1:]]


@case("plan: bad study file", "is not valid YAML")
def _plan_yaml(tmp: Path, model: Path) -> list[str]:
    return _study(tmp, "schemes: {", command="plan")


@case("report: folder missing", "nope")
def _report_missing(tmp: Path, model: Path) -> list[str]:
    return ["report", str(tmp / "nope")]


@case("report: folder without results.json", "results.json")
def _report_empty(tmp: Path, model: Path) -> list[str]:
    (tmp / "study").mkdir()
    return ["report", str(tmp / "study")]


@case("report: bad constraint", "--max-ppl-increase takes a percentage")
def _report_constraint(tmp: Path, model: Path) -> list[str]:
    (tmp / "study").mkdir()
    return ["report", str(tmp / "study"), "--max-ppl-increase", "x%"]


@case("compare: one study", "two")
def _compare_one(tmp: Path, model: Path) -> list[str]:
    (tmp / "a").mkdir()
    return ["compare", str(tmp / "a"), "--out", str(tmp / "out")]


@case("compare: studies missing", "nope")
def _compare_missing(tmp: Path, model: Path) -> list[str]:
    return ["compare", str(tmp / "nope1"), str(tmp / "nope2"), "--out", str(tmp / "out")]


@case("env create: unknown environment", "tensorrt")
def _env_unknown(tmp: Path, model: Path) -> list[str]:
    return ["env", "create", "tensorrt"]


@case("env create: unknown device", "--device must be auto, cpu or cuda")
def _env_device(tmp: Path, model: Path) -> list[str]:
    return ["env", "create", "vllm", "--device", "tpu"]


@case("env: unknown subcommand", "No such command 'delete'")
def _env_subcommand(tmp: Path, model: Path) -> list[str]:
    return ["env", "delete"]


def trusted_leftovers(out: Path) -> list[str]:
    """What a later run or report would take as finished work: results.json, a committed
    stage (its manifest) anywhere under the output folder."""
    if not out.exists():
        return []
    found = [p for p in out.rglob("results.json")]
    found += [p for p in out.rglob("manifest.json")]
    return [str(p.relative_to(out)) for p in found]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_status_2(
    name: str,
    tiny_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make, fragment = CASES[name]
    monkeypatch.chdir(tmp_path)  # a default output folder lands here, not in the checkout
    monkeypatch.setenv("QUANTBENCH_FORK_SERVER", "0")  # no worker runs: no server to start
    args = make(tmp_path, tiny_model)
    capsys.readouterr()
    status = exit_status(args)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert status == 2, captured.err
    assert "Traceback" not in captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert fragment in lines[0], lines[0]
    assert trusted_leftovers(tmp_path / "out") == []


def test_the_suite_covers_every_command() -> None:
    assert len(CASES) >= 40
    for prefix in ("plan:", "report:", "compare:", "env"):
        assert any(name.startswith(prefix) for name in CASES), prefix


MODEL_AND_CALIBRATION_CASES = [
    name
    for name in CASES
    if name.startswith(("calibration", "empty calibration", "half the", "truncated", "pickle"))
    or "tokenizer" in name
]


@pytest.mark.parametrize("name", MODEL_AND_CALIBRATION_CASES)
def test_model_and_calibration_inputs_are_refused_before_any_worker_starts(
    name: str,
    tiny_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pre-flight finds these before the executor starts anything (its fork server, whose
    imports come first, included)."""
    from quantbench.executors.local import LocalExecutor

    def no_worker(self: LocalExecutor) -> None:
        raise AssertionError("the executor started before the bad input was refused")

    monkeypatch.setattr(LocalExecutor, "prestart", no_worker)
    make, fragment = CASES[name]
    status = exit_status(make(tmp_path, tiny_model))
    err = capsys.readouterr().err
    assert status == 2 and fragment in err, err
