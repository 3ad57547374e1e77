"""Study matrices: option grids and calibration settings expand into named variants that
share their common stages, `quantbench plan` shows them without running, and the report
groups results by axis."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import VOCAB, read_json, run_cli
from quantbench.config import load_study_config
from quantbench.errors import UserError


def test_grids_expand_into_named_variants() -> None:
    config = load_study_config(
        None,
        {
            "schemes": [
                "bf16",
                {"scheme": "w4a16-gptq", "group_size": [32, 64]},
                {"scheme": "fp8-dynamic"},
            ],
            "calibration": {"num_samples": [16, 64]},
        },
    )
    expanded = [(e.scheme, e.group_size, axes) for g in config.schemes for e, axes in g.expand()]
    assert expanded == [
        ("bf16", None, {}),
        ("w4a16-gptq", 32, {"group_size": 32}),
        ("w4a16-gptq", 64, {"group_size": 64}),
        ("fp8-dynamic", None, {}),
    ]
    settings = config.calibration.settings()
    assert [(c.num_samples, axes) for c, axes in settings] == [
        (16, {"calibration.num_samples": 16}),
        (64, {"calibration.num_samples": 64}),
    ]


def test_bad_grid_values_are_reported_by_position() -> None:
    with pytest.raises(UserError, match=r"'calibration.num_samples.0': Input should be greater"):
        load_study_config(None, {"calibration": {"num_samples": [0, 16]}})


@pytest.fixture(scope="module")
def matrix_study(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("matrix")
    study = {
        "model": str(tiny_model),
        "schemes": ["bf16", {"scheme": "w4a16-gptq", "group_size": [16, 32]}],
        "calibration": {"num_samples": [4, 8], "seq_len": 64},
        "evaluation": {
            "metrics": ["perplexity", "divergence"],
            "corpus": {"window": 64, "stride": 64, "max_tokens": 256, "top_k": VOCAB},
        },
        "out": str(root / "out"),
    }
    (root / "study.yaml").write_text(yaml.safe_dump(study))
    planned = run_cli("plan", "--config", str(root / "study.yaml"))
    assert planned.returncode == 0, planned.stderr[-3000:]
    (root / "plan-before.txt").write_text(planned.stdout)
    result = run_cli("run", "--config", str(root / "study.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_matrix_runs_every_combination_sharing_common_stages(matrix_study: Path) -> None:
    out = matrix_study / "out"
    data = read_json(out / "results.json")
    variants = {v["name"]: v for v in data["variants"]}  # type: ignore[attr-defined]
    assert set(variants) == {
        "bf16",
        "w4a16-gptq-g16-n4",
        "w4a16-gptq-g16-n8",
        "w4a16-gptq-g32-n4",
        "w4a16-gptq-g32-n8",
    }
    assert variants["w4a16-gptq-g32-n8"]["axes"] == {
        "group_size": 32,
        "calibration.num_samples": 8,
    }
    assert variants["bf16"]["axes"] == {}
    # two calibration settings, each shared by both group sizes; one baseline evaluation
    assert len(list((out / "stages" / "calibration").iterdir())) == 2
    keys = {v["stage_keys"]["calibration"] for n, v in variants.items() if n != "bf16"}
    assert len(keys) == 2
    assert len(list((out / "stages" / "quantize").iterdir())) == 5
    assert len(data["calibrations"]) == 2  # type: ignore[arg-type]
    for name, variant in variants.items():
        divergence = variant["metrics"]["divergence"]
        assert divergence is not None, name
        if name != "bf16":
            assert divergence["kl_mean"]["estimate"] > 0


def test_report_groups_results_by_axis(matrix_study: Path) -> None:
    report = (matrix_study / "out" / "report.md").read_text()
    assert "## Study axes" in report
    assert "### group_size" in report and "### calibration.num_samples" in report
    assert "calibration.num_samples = 4" in report and "group_size = 32" in report
    assert "w4a16-gptq (calibration.num_samples 8)" in report
    assert 'id="axes"' in (matrix_study / "out" / "report.html").read_text()


def test_plan_lists_stages_and_what_is_done(matrix_study: Path) -> None:
    before = (matrix_study / "plan-before.txt").read_text()
    assert "w4a16-gptq-g16-n4" in before and "calibration" in before
    assert "0 done" in before
    assert "num_cpus=2" in before
    after = run_cli("plan", "--config", str(matrix_study / "study.yaml"))
    assert after.returncode == 0, after.stderr[-3000:]
    assert "0 to run" in after.stdout


def test_axis_rows_never_hide_a_variant() -> None:
    from quantbench.report.axes import axis_tables
    from quantbench.results import StudyResults, VariantResult

    def variant(name: str, group: int) -> VariantResult:
        return VariantResult(
            name=name, scheme="w4a16-gptq", status="ok", axes={"group_size": group}
        )

    results = StudyResults(
        quantbench_version="0",
        created_at="2026-01-01T00:00:00+00:00",
        model={},
        config={},
        variants=[variant("a-g32", 32), variant("a-g64", 64), variant("b-g32", 32)],
    )
    (table,) = axis_tables(results)
    shown = [cell for _, row in table.rows for cell in row if cell != "–"]
    assert sorted(shown) == ["a-g32", "a-g64", "b-g32"]


def test_model_lists_are_checked_and_labelled() -> None:
    from quantbench.config import model_labels

    assert load_study_config(None, {"model": ["only"]}).model == "only"
    with pytest.raises(UserError, match="listed twice"):
        load_study_config(None, {"model": ["a", "a"]})
    with pytest.raises(UserError, match="at least one model"):
        load_study_config(None, {"model": []})
    specs = ("org/Llama-3.1-8B", "/models/x/", "/other/x", "q/tiny.gguf")
    assert model_labels(specs) == ["Llama-3.1-8B", "x", "x-2", "tiny"]
    assert model_labels((".",)) == [Path.cwd().name]  # never the output folder itself


def test_a_study_of_several_models_has_a_baseline_each(tiny_model: Path, tmp_path: Path) -> None:
    from conftest import build_tiny_model
    from quantbench.report.headline import headline_rows
    from quantbench.results import find_baseline
    from quantbench.stages import inventory
    from quantbench.study_files import load_results

    wide = build_tiny_model(tmp_path / "wide", hidden_size=128)
    study = {
        "model": [str(tiny_model), str(wide)],
        "schemes": ["bf16", "fp8-dynamic"],
        "evaluation": {
            "metrics": ["size", "perplexity", "divergence"],
            "corpus": {"window": 64, "stride": 64, "max_tokens": 256, "top_k": VOCAB},
        },
        "out": str(tmp_path / "out"),
    }
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump(study))
    planned = inventory(load_study_config(config))
    assert {s.variant for s in planned if s.stage == "quantize"} == {
        "model/bf16",
        "model/fp8-dynamic",
        "wide/bf16",
        "wide/fp8-dynamic",
    }

    result = run_cli("run", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    merged = load_results(tmp_path / "out")
    assert [v.name for v in merged.variants] == [
        "model/bf16",
        "model/fp8-dynamic",
        "wide/bf16",
        "wide/fp8-dynamic",
    ]
    assert [v.axes["model"] for v in merged.variants] == ["model", "model", "wide", "wide"]
    for label in ("model", "wide"):
        own = load_results(tmp_path / "out" / label)  # each model is a whole study
        variant = merged.variant(f"{label}/fp8-dynamic")
        assert variant.metrics.divergence == own.variant("fp8-dynamic").metrics.divergence
        baseline = find_baseline(merged, variant)
        assert baseline is not None and baseline.name == f"{label}/bf16"
    rows = {row.name: row for row in headline_rows(merged)}
    assert rows["wide/bf16"].is_baseline and rows["model/bf16"].is_baseline
    assert merged.variant("wide/bf16").disk_bytes != merged.variant("model/bf16").disk_bytes
    # deciding with KL against each model's own baseline: only the baselines pass KL 0
    assert merged.recommendation is not None
    assert merged.recommendation.quality_metric == "kl_mean"
    strict = run_cli("report", str(tmp_path / "out"), "--max-kl", "0")
    assert strict.returncode == 0, strict.stderr[-2000:]
    decided = load_results(tmp_path / "out").recommendation
    assert decided is not None
    passing = [v.variant for v in decided.verdicts if v.acceptable]
    assert passing == ["model/bf16", "wide/bf16"]
    assert "only the baselines (model/bf16, wide/bf16) are acceptable" in decided.summary
    report = (tmp_path / "out" / "report.md").read_text()
    assert "model = model" in report and "model = wide" in report
    assert "tokenizers differ" not in report  # same tokenizer: perplexities comparable
