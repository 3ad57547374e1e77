"""Study-config validation and its small helpers, pinned value by value.

Added to kill the mutants of `quantbench.config` that survived (or that no test reached) in
`benchmarks/mutation.py config` (results/mutation_config.md). The error texts are pydantic's
own messages behind the field path quantbench adds; each expected text was read and judged
right for a user, not copied from a run unseen.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from quantbench.config import (
    CalibrationConfig,
    CalibrationGrid,
    CorpusConfig,
    EvaluationConfig,
    SchemeEntry,
    StageResources,
    VLLMSettings,
    _field_names,
    _grid,
    _merge,
    _union_branch,
    load_study_config,
    model_labels,
)
from quantbench.errors import UserError


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # A scalar that fails: the scalar's error only, not the list branch's.
        (
            {"schemes": [{"scheme": "w4a16-gptq", "group_size": 0}]},
            "'schemes.0.group_size': Input should be greater than 0",
        ),
        # A list with a bad element: that element, by position.
        (
            {"schemes": [{"scheme": "w4a16-gptq", "group_size": [32, 0]}]},
            "'schemes.0.group_size.1': Input should be greater than 0",
        ),
        (
            {"schemes": [{"scheme": "w4a16-gptq", "group_size": [16, "x"]}]},
            "'schemes.0.group_size.1': Input should be a valid integer, unable to parse "
            "string as an integer",
        ),
        # A one-element list whose element fails: the element, not "too short".
        (
            {"schemes": [{"scheme": "w4a16-gptq", "group_size": [0]}]},
            "'schemes.0.group_size.0': Input should be greater than 0",
        ),
        (
            {"calibration": {"num_samples": [0]}},
            "'calibration.num_samples.0': Input should be greater than 0",
        ),
        # The wrong type altogether: the scalar branch's message (the value looked scalar).
        (
            {"schemes": [{"scheme": "w4a16-gptq", "group_size": "abc"}]},
            "'schemes.0.group_size': Input should be a valid integer, unable to parse "
            "string as an integer",
        ),
        (
            {"calibration": {"num_samples": []}},
            "'calibration.num_samples': Tuple should have at least 1 item after validation, not 0",
        ),
        (
            {"schemes": [{"scheme": "w8a8-int8", "smoothing_strength": [0.5, 2]}]},
            "'schemes.0.smoothing_strength.1': Input should be less than or equal to 1",
        ),
        (
            {"evaluation": {"vllm": {"max_model_len": 0}}},
            "'evaluation.vllm.max_model_len': Input should be greater than 0",
        ),
        ({"unknown": 1}, "unknown key 'unknown'"),
        (
            {"evaluation": {"corpus": {"windw": 3}}},
            "unknown key 'evaluation.corpus.windw' (did you mean \"window\"?)",
        ),
        (
            {"execution": {"resources": {"quantize": {"num_cpu": 1}}}},
            "unknown key 'execution.resources.quantize.num_cpu'",
        ),
    ],
)
def test_validation_errors_name_the_one_relevant_problem(
    overrides: dict[str, Any], message: str
) -> None:
    """The whole message, from its origin to its end: one problem, where it is."""
    with pytest.raises(UserError, match="^" + re.escape(f"command line: {message}") + "$"):
        load_study_config(None, overrides)


def test_two_problems_are_both_named_in_order(tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text("calibration: {num_samples: 0, seq_len: 0}\n")
    expected = (
        f"{study}: 'calibration.num_samples': Input should be greater than 0; "
        "'calibration.seq_len': Input should be greater than 0"
    )
    with pytest.raises(UserError, match="^" + re.escape(expected) + "$"):
        load_study_config(study)


def test_an_empty_file_is_the_defaults(tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text("")
    assert load_study_config(study) == load_study_config()


def test_an_unreadable_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"^cannot read study config {re.escape(str(tmp_path))}"):
        load_study_config(tmp_path)  # a folder: IsADirectoryError


def test_a_bad_yaml_error_is_one_line(tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match=f"^{re.escape(str(study))} is not valid YAML: ") as info:
        load_study_config(study)
    assert "\n" not in str(info.value) and "  " not in str(info.value)


def test_overrides_win_over_the_file_and_none_means_not_given(tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text("out: from-file\ncalibration: {num_samples: 4, seq_len: 16}\n")
    config = load_study_config(study, {"out": None, "calibration": {"num_samples": 8}})
    assert config.out == "from-file"
    assert (config.calibration.num_samples, config.calibration.seq_len) == (8, 16)


def test_merge_nests_replaces_and_skips_none() -> None:
    base: dict[str, Any] = {"a": {"b": 1}, "c": 2, "h": 3}
    _merge(base, {"a": {"d": 3, "b": None}, "c": None, "e": {"f": 1}, "g": 5, "h": {"i": 1}})
    assert base == {"a": {"b": 1, "d": 3}, "c": 2, "e": {"f": 1}, "g": 5, "h": {"i": 1}}


def test_union_branch_tags_are_found_and_removed() -> None:
    assert _union_branch(("a", 0, "constrained-int")) == ("constrained-int", ("a", 0))
    assert _union_branch(("a", "tuple[int, ...]", 1)) == ("tuple[int, ...]", ("a", 1))
    assert _union_branch(("a", "b")) == (None, ("a", "b"))


def test_field_names_follow_nested_models_and_lists() -> None:
    from quantbench.config import StudyConfig

    corpus = _field_names(StudyConfig, ("evaluation", "corpus", "x"))
    assert corpus == list(CorpusConfig.model_fields)
    assert "window" in corpus
    assert _field_names(StudyConfig, ("schemes", 0, "x"))[:3] == ["scheme", "name", "group_size"]
    assert _field_names(StudyConfig, ("nope", "x")) == []
    assert _field_names(StudyConfig, ("out", "x")) == []  # a str field has no sub-keys
    assert _field_names(StudyConfig, ("x",)) == list(StudyConfig.model_fields)


def test_grid_expands_lists_and_tuples_in_order() -> None:
    assert _grid({"a": 1}) == [({"a": 1}, {})]
    assert _grid({"a": 1, "b": [1, 2], "c": (3, 4)}) == [
        ({"a": 1, "b": 1, "c": 3}, {"b": 1, "c": 3}),
        ({"a": 1, "b": 1, "c": 4}, {"b": 1, "c": 4}),
        ({"a": 1, "b": 2, "c": 3}, {"b": 2, "c": 3}),
        ({"a": 1, "b": 2, "c": 4}, {"b": 2, "c": 4}),
    ]


def test_scheme_entries_expand_with_axis_names() -> None:
    named = SchemeEntry(scheme="w8a8-int8", smoothing_strength=[0.5, 0.75], name="sq")
    assert [(e.name, e.smoothing_strength, axes) for e, axes in named.expand()] == [
        ("sq-smoothing_strength0.5", 0.5, {"smoothing_strength": 0.5}),
        ("sq-smoothing_strength0.75", 0.75, {"smoothing_strength": 0.75}),
    ]
    grouped = SchemeEntry(scheme="w4a16-gptq", group_size=[32, 64], name="g", block_size=64)
    assert [(e.name, e.group_size, e.block_size, axes) for e, axes in grouped.expand()] == [
        ("g-group_size32", 32, 64, {"group_size": 32}),
        ("g-group_size64", 64, 64, {"group_size": 64}),
    ]
    assert grouped.options() == {"group_size": (32, 64), "block_size": 64}
    unnamed = SchemeEntry(scheme="w4a16-gptq", group_size=[32, 64])
    assert [e.name for e, _ in unnamed.expand()] == [None, None]
    plain = SchemeEntry(scheme="bf16")
    assert plain.expand() == [(plain, {})]
    assert plain.options() == {}


def test_calibration_grid_settings_and_default() -> None:
    grid = CalibrationGrid(num_samples=[4, 8], seq_len=[16, 32])
    assert [(c.num_samples, c.seq_len, axes) for c, axes in grid.settings()] == [
        (4, 16, {"calibration.num_samples": 4, "calibration.seq_len": 16}),
        (4, 32, {"calibration.num_samples": 4, "calibration.seq_len": 32}),
        (8, 16, {"calibration.num_samples": 8, "calibration.seq_len": 16}),
        (8, 32, {"calibration.num_samples": 8, "calibration.seq_len": 32}),
    ]
    assert CalibrationGrid().settings() == [(CalibrationConfig(), {})]
    assert grid.default == CalibrationConfig(num_samples=4, seq_len=16)


def test_backends_per_metric_and_their_keys() -> None:
    split = EvaluationConfig(speed_backend="vllm", threads=3)
    assert split.backend_for("speed") == "vllm"
    assert split.backend_for("perplexity") == "hf"
    assert EvaluationConfig().backend_for("speed") == "hf"
    vllm_key = {
        "max_model_len": 2048,
        "max_logprobs": 256,
        "kv_cache_gib": 1.0,
        "enforce_eager": False,
        "multiproc_method": "spawn",
        "cpu_int4_w4a8": False,
    }
    assert VLLMSettings(python="/x", start_timeout_s=1, call_timeout_s=2).key() == vllm_key
    assert split.backend_key("speed") == {
        "name": "vllm",
        "device": "auto",
        "threads": 3,
        "vllm": vllm_key,
    }
    assert split.backend_key("perplexity") == {
        "name": "hf",
        "device": "auto",
        "threads": 3,
        "dtype": "auto",
    }


def test_metric_names_add_tasks_once() -> None:
    assert EvaluationConfig(metrics=("size",)).metric_names() == ("size",)
    with_tasks = EvaluationConfig(metrics=("size",), tasks={"names": "gsm8k"})
    assert with_tasks.metric_names() == ("size", "tasks")
    listed = EvaluationConfig(metrics=("size", "tasks"), tasks={"names": "gsm8k"})
    assert listed.metric_names() == ("size", "tasks")
    assert EvaluationConfig(metrics="none").metric_names() == ()


def test_stage_resources_request_only_what_is_set() -> None:
    assert StageResources().request() == {}
    assert StageResources(num_cpus=2, memory=5).request() == {"num_cpus": 2.0, "memory": 5.0}
    assert StageResources(num_gpus=0).request() == {"num_gpus": 0.0}


def test_models_and_one_model_studies() -> None:
    several = load_study_config(None, {"model": ["a", "b"], "out": "o"})
    assert several.models() == ("a", "b")
    one = several.for_model("a", "o/a")
    assert (one.model, one.out, one.models()) == ("a", "o/a", ("a",))
    assert load_study_config().models() == ("smollm2-135m-instruct",)


def test_model_labels_are_readable_and_distinct() -> None:
    assert model_labels(("a b/c:d e",)) == ["c-d-e"]
    assert model_labels(("hub/Model", "other/Model", "third/Model")) == [
        "Model",
        "Model-2",
        "Model-2-2",
    ]
    assert model_labels(("x.gguf", "y/")) == ["x", "y"]
    assert model_labels(("..",)) == [Path.cwd().parent.name]
    assert model_labels(("/",)) == ["model"]
