"""A study folder is portable: results.json names the study's files relative to the folder,
so a copy, moved elsewhere and made the only copy, reports the same and resumes with no
model work, and no command writes outside the folder it was given."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from conftest import VOCAB, run_cli, tiny_study_yaml
from quantbench import study as study_module
from quantbench.config import load_study_config
from quantbench.errors import UserError
from quantbench.results import SCHEMA_VERSION, StudyResults, VariantResult
from quantbench.schedule import Capacity
from quantbench.study import run_study
from quantbench.study_files import load_results, save_results

SCHEMES: list[object] = ["bf16", {"scheme": "w4a16-gptq", "group_size": 32}]
EVALUATION = {
    "metrics": ["size", "perplexity"],
    "corpus": {"window": 64, "stride": 64, "max_tokens": 192, "top_k": VOCAB},
}


def finished_tiny_study(tiny_model: Path, factory: pytest.TempPathFactory) -> Path:
    """One finished study per test session (shared with test_damaged_study.py, which
    imports this): bf16 and a calibrated GPTQ variant, sizes and perplexities, with a
    calibration, a corpus, quantize and metric stages. Tests work on copies of it."""
    root = factory.getbasetemp() / "portable-study"
    if (root / "out" / "results.json").is_file():
        return root
    root.mkdir(exist_ok=True)
    config = tiny_study_yaml(root / "study.yaml", tiny_model, root / "out", SCHEMES, EVALUATION)
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def finished(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_tiny_study(tiny_model, tmp_path_factory)


def copy_study(source: Path, dest: Path) -> Path:
    """Copy a study folder as `cp -r` does: links stay links, timestamps are new."""
    shutil.copytree(source, dest, symlinks=True, copy_function=shutil.copyfile)
    return dest


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file and link under `folder`: modification time and content hash (or target)."""
    state = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            state[str(path)] = (0, os.readlink(path))
        elif path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            state[str(path)] = (path.stat().st_mtime_ns, digest)
    return state


def test_results_json_names_the_study_files_relative_to_the_folder(finished: Path) -> None:
    raw = json.loads((finished / "out" / "results.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION
    assert raw["config"]["out"] == "."
    assert raw["provenance"]["config"]["out"] == "."
    for name in ("results.json", "report.md", "report.html", "results.csv"):
        assert str(finished / "out") not in (finished / "out" / name).read_text(), name
    paths = {v["name"]: v["artifact_path"] for v in raw["variants"]}
    assert paths == {"bf16": "artifacts/bf16", "w4a16-gptq-g32": "artifacts/w4a16-gptq-g32"}
    for name in paths:
        link = finished / "out" / "artifacts" / name
        assert link.is_symlink() and not os.readlink(link).startswith("/")
        assert (link / "config.json").is_file()
    for manifest in (finished / "out" / "stages").glob("*/*/manifest.json"):
        assert str(finished) not in manifest.read_text(), manifest
    card = (finished / "out" / "artifacts" / "w4a16-gptq-g32" / "README.md").read_text()
    assert "vllm serve ./\n" in card and str(finished) not in card.split("## How to serve")[1]


def test_a_moved_copy_reports_the_same_and_writes_only_inside_itself(
    finished: Path, tmp_path: Path
) -> None:
    original = copy_study(finished / "out", tmp_path / "original")
    copy = copy_study(original, tmp_path / "elsewhere" / "copy")
    parked = tmp_path / "parked"
    original.rename(parked)  # the copy is the only study at a known place now
    before = snapshot(parked)
    for path in [parked, *parked.rglob("*")]:  # read-only too (root ignores this)
        if not path.is_symlink():
            path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        result = run_cli("report", str(copy))
    finally:
        for path in [parked, *parked.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not original.exists()  # nothing wrote where the study used to be
    assert snapshot(parked) == before
    assert (copy / "report.md").read_text() == (parked / "report.md").read_text()
    assert (copy / "report.html").read_text() == (parked / "report.html").read_text()
    results = load_results(copy)
    for variant in results.variants:
        artifact = Path(variant.artifact_path or "")
        assert artifact == copy / "artifacts" / variant.name
        assert (artifact / "README.md").resolve().is_relative_to(copy)


class _NothingMayRun:
    """An executor under which any model work fails the test: no worker process is
    launched and no fork server is started."""

    name = "local"

    def __init__(self) -> None:
        self.launched: list[str] = []

    def capacity(self, memory_bytes: int | None, max_parallel: int | None) -> Capacity:
        return Capacity(cores=1, memory_bytes=memory_bytes, max_parallel=1)

    def launch(self, module: str, *args: Any, **kwargs: Any) -> int:
        self.launched.append(module)
        raise AssertionError(f"a finished study's copy started a worker ({module})")

    def prestart(self) -> None:
        raise AssertionError("a finished study's copy started the fork server")

    def describe(self) -> dict[str, Any]:
        return {"executor": "none"}

    def close(self) -> None:
        pass


def test_run_on_a_moved_copy_runs_nothing(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = copy_study(finished / "out", tmp_path / "copy")
    stages_before = snapshot(copy / "stages")
    executor = _NothingMayRun()
    monkeypatch.setattr(study_module, "_executor", lambda config: executor)

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished study's copy prepared a stage again")

    monkeypatch.setattr(study_module, "prepare_calibration", forbidden)
    monkeypatch.setattr(study_module, "prepare_corpus", forbidden)
    config = load_study_config(finished / "study.yaml", {"out": str(copy)})
    rerun = run_study(config, Console(file=io.StringIO(), width=200))
    assert executor.launched == []
    original = load_results(finished / "out")
    for mine, theirs in zip(rerun.variants, original.variants, strict=True):
        assert mine.metrics == theirs.metrics and mine.quantization == theirs.quantization
        assert mine.artifact_path == str(copy / "artifacts" / mine.name)
    derived = (".verified.json", "/artifact/README.md")  # the memo of hashes, model cards
    changed = {
        path
        for path, state in snapshot(copy / "stages").items()
        if stages_before.get(path) != state and not path.endswith(derived)
    }
    assert changed == set()  # no stage was written again


def _results(artifact: str, log: str | None = None, out: str = ".") -> StudyResults:
    return StudyResults(
        quantbench_version="0.1.0",
        created_at="2025-01-01T00:00:00+00:00",
        model={"spec": "smollm2-135m-instruct"},
        config={"out": out},
        variants=[
            VariantResult(name="bf16", scheme="bf16", status="ok", artifact_path=artifact),
            VariantResult(name="bad", scheme="fp8-dynamic", status="failed", log_path=log),
        ],
    )


def test_save_makes_paths_relative_and_load_makes_them_local(tmp_path: Path) -> None:
    study = tmp_path / "study"
    study.mkdir()
    results = _results(str(study / "artifacts" / "bf16"), str(study / "logs" / "q.log"), str(study))
    save_results(study, results, model_cards=False)
    raw = json.loads((study / "results.json").read_text())
    assert [v["artifact_path"] for v in raw["variants"]] == ["artifacts/bf16", None]
    assert [v["log_path"] for v in raw["variants"]] == [None, "logs/q.log"]
    assert raw["config"]["out"] == "."
    moved = study.rename(tmp_path / "moved")
    loaded = load_results(moved)
    assert loaded.variant("bf16").artifact_path == str(moved / "artifacts" / "bf16")
    assert loaded.variant("bad").log_path == str(moved / "logs" / "q.log")


def test_a_version_1_results_file_with_absolute_paths_still_loads(tmp_path: Path) -> None:
    """Written before paths were relative, then copied: it reads the copy's own files."""
    old = "/somewhere/else/study"
    record = _results(f"{old}/stages/quantize/abc/artifact", f"{old}/logs/q.log", old)
    data = {**record.model_dump(mode="json"), "schema_version": 1}
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.json").write_text(json.dumps(data))
    loaded = load_results(copy)
    assert loaded.schema_version == SCHEMA_VERSION
    assert loaded.variant("bf16").artifact_path == str(copy / "stages/quantize/abc/artifact")
    assert loaded.variant("bad").log_path == str(copy / "logs" / "q.log")
    assert loaded.config["out"] == "."


def test_a_url_study_keeps_urls_and_resolves_relative_paths_against_the_url(
    tmp_path: Path,
) -> None:
    url = f"file://{tmp_path}/bucket/study"
    bucket = tmp_path / "bucket" / "study"
    bucket.mkdir(parents=True)
    results = _results(f"{url}/stages/quantize/abc/attempt-1/artifact", "logs/q.log", url)
    save_results(bucket, results, model_cards=False)
    raw = json.loads((bucket / "results.json").read_text())
    assert raw["variants"][0]["artifact_path"] == f"{url}/stages/quantize/abc/attempt-1/artifact"
    assert raw["config"]["out"] == url
    assert load_results(url).variant("bad").log_path == f"{url}/logs/q.log"


def test_unreadable_results_say_which_file_and_what_to_do(tmp_path: Path) -> None:
    save_results(tmp_path, _results("artifacts/bf16"), model_cards=False)
    path = tmp_path / "results.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(UserError, match=r"results.json is damaged \(not valid JSON: .*--out"):
        load_results(tmp_path)
    path.write_text(text.replace('"status": "ok"', '"status": "fine"'))
    with pytest.raises(UserError, match=r"is damaged \(variants.0.status: Input should be"):
        load_results(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match=r"is damaged \(not a JSON object\)"):
        load_results(tmp_path)
