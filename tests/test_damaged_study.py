"""A damaged study folder: `report`, `compare` and `plan` name the damaged file in one line
(no traceback), and `run` recomputes just that stage; nothing else is lost or redone.

Every case works on its own copy of one finished tiny study (test_portable.py's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from quantbench.study_files import load_results
from test_portable import copy_study, finished_tiny_study


@pytest.fixture(scope="module")
def finished(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_tiny_study(tiny_model, tmp_path_factory)


def manifests(study: Path) -> dict[str, tuple[int, int]]:
    """Each stage's manifest (inode, modification time) by stage folder: a stage run again
    has a new manifest file, even when its contents come out the same."""
    return {
        str(p.parent.relative_to(study)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in (study / "stages").glob("*/*/manifest.json")
    }


def stage_of(study: Path, kind: str, variant: str | None = None) -> Path:
    """The stage folder of a kind (of the variant's artifact, for `quantize`)."""
    if variant is not None:
        return (study / "artifacts" / variant).resolve().parent
    (folder,) = (study / "stages" / kind).iterdir()
    return folder


def error_line(stderr: str) -> str:
    """The one line an exit-2 command says, with no traceback above it."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def figures(study: Path) -> dict[str, object]:
    return {v.name: v.metrics.model_dump() for v in load_results(study).variants}


def rerun(finished: Path, study: Path) -> str:
    result = run_cli("run", "--config", str(finished / "study.yaml"), "--out", str(study))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result.stderr


def test_a_truncated_results_json(finished: Path, tmp_path: Path) -> None:
    study = copy_study(finished / "out", tmp_path / "study")
    results = study / "results.json"
    text = results.read_text()
    results.write_text(text[: len(text) // 3])
    before = manifests(study)

    report = run_cli("report", str(study))
    compare = run_cli("compare", str(study), str(finished / "out"), "--out", str(tmp_path / "c"))
    for result in (report, compare):
        assert result.returncode == 2, result.stderr
        line = error_line(result.stderr)
        assert f"{results} is damaged (not valid JSON" in line and "--out" in line

    stderr = rerun(finished, study)
    assert f"damaged: {results} (not valid JSON" in " ".join(stderr.split())
    assert manifests(study) == before  # no stage ran: results.json came from the stages
    assert figures(study) == figures(finished / "out")


def test_a_deleted_artifact_file(finished: Path, tmp_path: Path) -> None:
    study = copy_study(finished / "out", tmp_path / "study")
    stage = stage_of(study, "quantize", "bf16")
    weights = stage / "artifact" / "model.safetensors"
    weights.unlink()
    before = manifests(study)

    result = run_cli("report", str(study))
    assert result.returncode == 2, result.stderr
    assert error_line(result.stderr).startswith(f"error: {weights} is missing; run the study")
    assert (study / "report.md").is_file()  # the figures in results.json still report

    plan = run_cli("plan", "--config", str(finished / "study.yaml"), "--out", str(study))
    assert plan.returncode == 0 and "Traceback" not in plan.stderr, plan.stderr
    assert f"damaged: {weights} is missing" in " ".join(plan.stderr.split())
    assert "1 to run" in plan.stdout

    stderr = rerun(finished, study)
    assert f"damaged: {weights} is missing: recomputing that stage" in " ".join(stderr.split())
    assert weights.is_file()
    after = manifests(study)
    redone = {name for name in after if after[name] != before.get(name)}
    assert redone == {str(stage.relative_to(study))}  # that stage only
    assert figures(study) == figures(finished / "out")  # its metrics were kept, not redone
    assert run_cli("report", str(study)).returncode == 0


def test_a_modified_calibration_file(finished: Path, tmp_path: Path) -> None:
    """Edited in place, same size: only its hash can tell, and it does."""
    study = copy_study(finished / "out", tmp_path / "study")
    stage = stage_of(study, "calibration")
    samples = stage / "samples.jsonl"
    first = json.loads(samples.read_text().splitlines()[0])["input_ids"]
    text = samples.read_text()
    edited = text.replace(str(first[0]), str(first[0])[::-1], 1)
    if edited == text:  # a palindromic id: change a digit instead
        edited = text.replace(str(first[0]), str((first[0] + 1) % 10) * len(str(first[0])), 1)
    assert len(edited) == len(text) and edited != text
    samples.write_text(edited)
    before = manifests(study)

    result = run_cli("report", str(study))
    assert result.returncode == 2, result.stderr
    line = error_line(result.stderr)
    assert line.startswith(f"error: {samples} was modified (its SHA-256 differs)")

    stderr = rerun(finished, study)
    assert f"damaged: {samples} was modified" in " ".join(stderr.split())
    assert samples.read_text() == text  # recomputed: the same samples again
    after = manifests(study)
    redone = {name for name in after if after[name] != before.get(name)}
    assert redone == {str(stage.relative_to(study))}
    assert figures(study) == figures(finished / "out")


def test_merged_results_written_before_the_study_field_keep_their_baselines(
    tmp_path: Path,
) -> None:
    """Merged results of an earlier version named a variant's study only in its name
    (`<study>/<variant>`); loading them fills `study`, so each variant keeps its own
    baseline, and a single study's names stay without one."""
    from quantbench.results import find_baseline

    def variant(name: str, scheme: str) -> dict[str, object]:
        return {"name": name, "scheme": scheme, "status": "ok"}

    record = {
        "schema_version": 2,
        "quantbench_version": "0.1.0",
        "created_at": "2026-01-01T00:00:00+00:00",
        "model": {},
        "config": {},
        "variants": [
            variant("a/bf16", "bf16"),
            variant("a/w8", "w8a8-int8"),
            variant("b/x/bf16", "bf16"),
            variant("b/x/w8", "w8a8-int8"),
        ],
    }
    (tmp_path / "results.json").write_text(json.dumps(record))
    loaded = load_results(tmp_path)
    assert [v.study for v in loaded.variants] == ["a", "a", "b/x", "b/x"]
    baselines = [find_baseline(loaded, v) for v in loaded.variants]
    assert [b.name if b else None for b in baselines] == [
        "a/bf16",
        "a/bf16",
        "b/x/bf16",
        "b/x/bf16",
    ]
    single = {**record, "variants": [variant("bf16", "bf16"), variant("w8", "w8a8-int8")]}
    (tmp_path / "results.json").write_text(json.dumps(single))
    assert [v.study for v in load_results(tmp_path).variants] == ["", ""]
    # A single study's results.json has no `study` key at all (unchanged from before).
    assert '"study"' not in load_results(tmp_path).model_dump_json()
