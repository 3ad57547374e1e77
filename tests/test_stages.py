"""The one plan (quantbench.stages): every stage of a study with its key and inputs, the
same list `run` executes and `plan` prints (tiny random model, nothing computed)."""

from __future__ import annotations

from pathlib import Path

from quantbench.config import load_study_config
from quantbench.models import resolve_model
from quantbench.stages import inventory, plan_study


def _study(tiny_model: Path, out: Path, **evaluation: object) -> object:
    return load_study_config(
        None,
        {
            "model": str(tiny_model),
            "schemes": ["w4a16-gptq", "fp8-dynamic"],
            "calibration": {"num_samples": 4, "seq_len": 32},
            "evaluation": {"metrics": ["size", "divergence"], **evaluation},
            "out": str(out),
        },
    )


def test_every_stage_with_its_inputs_in_execution_order(tiny_model: Path, tmp_path: Path) -> None:
    config = _study(tiny_model, tmp_path / "out")
    notes: list[str] = []
    study = plan_study(config, resolve_model(str(tiny_model)), notes.append)  # type: ignore[arg-type]
    assert notes == ["no baseline scheme listed: adding bf16, the reference for comparisons"]
    kinds = [(s.kind, s.variant) for s in study.stages]
    calibration_label = kinds[0][1]
    assert kinds == [
        ("calibration", calibration_label),
        ("corpus", "(shared)"),
        ("quantize", "bf16"),
        ("quantize", "w4a16-gptq"),
        ("quantize", "fp8-dynamic"),
        ("size", "bf16"),
        ("scores", "bf16"),
        ("divergence", "bf16"),
        ("size", "w4a16-gptq"),
        ("scores", "w4a16-gptq"),
        ("divergence", "w4a16-gptq"),
        ("size", "fp8-dynamic"),
        ("scores", "fp8-dynamic"),
        ("divergence", "fp8-dynamic"),
    ]
    by = {(s.kind, s.variant): s for s in study.stages}
    calibration, corpus = by[kinds[0]].ref, by[("corpus", "(shared)")].ref
    # GPTQ reads the calibration set; fp8-dynamic and the baseline read nothing.
    assert by[("quantize", "w4a16-gptq")].inputs == (calibration,)
    assert by[("quantize", "fp8-dynamic")].inputs == ()
    gptq = by[("quantize", "w4a16-gptq")].ref
    # A variant's divergence reads its artifact, the corpus, its own scores and the
    # baseline's scores; the baseline's own reads no other variant's stage.
    divergence = by[("divergence", "w4a16-gptq")]
    assert divergence.reads_baseline
    assert divergence.inputs == (
        gptq,
        corpus,
        by[("scores", "w4a16-gptq")].ref,
        by[("scores", "bf16")].ref,
    )
    assert not by[("divergence", "bf16")].reads_baseline
    assert by[("size", "w4a16-gptq")].inputs == (gptq,)
    assert [s.runs_on for s in study.stages[:2]] == ["driver", "driver"]
    assert {s.runs_on for s in study.stages[2:]} == {"worker"}
    assert study.refs() == [s.ref for s in study.stages]


def test_plan_lists_the_same_stages_and_keys(tiny_model: Path, tmp_path: Path) -> None:
    config = _study(tiny_model, tmp_path / "out")
    study = plan_study(config, resolve_model(str(tiny_model)), lambda _: None)  # type: ignore[arg-type]
    listed = inventory(config)  # type: ignore[arg-type]
    assert [(p.stage, p.variant, p.key) for p in listed] == [
        (s.kind, s.variant, s.ref.key) for s in study.stages
    ]
    assert not any(p.done for p in listed)
    quantize = next(p for p in listed if p.stage == "quantize" and p.variant == "w4a16-gptq")
    assert quantize.resources["memory"] > 0  # pre-flight's estimate
    assert next(p for p in listed if p.stage == "corpus").resources == {}
