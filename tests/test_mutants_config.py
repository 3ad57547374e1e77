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
from pydantic import BaseModel, TypeAdapter, ValidationError

from quantbench.config import (
    EXPLICIT_NULL,
    CalibrationConfig,
    CalibrationGrid,
    CorpusConfig,
    EvaluationConfig,
    PositiveInt,
    SchemeEntry,
    StageResources,
    StudyConfig,
    VLLMSettings,
    _explain,
    _field_names,
    _grid,
    _merge,
    _relevant_errors,
    _union_branch,
    assignment_overrides,
    load_study_config,
    merged_overrides,
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


# --- Survivors of the second run, and the `--set` parsing added since ------------------------


def test_a_top_level_problem_is_named_as_such() -> None:
    """An error with no location (the whole config is not a mapping) reads '(top level)'."""
    with pytest.raises(ValidationError, match="StudyConfig") as info:
        StudyConfig.model_validate([1])
    expected = "cli: '(top level)': Input should be a valid dictionary or instance of StudyConfig"
    assert _explain(info.value, "cli") == expected


def test_field_names_look_past_a_list_index_only() -> None:
    """A list index is skipped, not the end of the walk: the field after it is still followed
    (a str field inside a scheme entry has no sub-keys)."""
    assert _field_names(StudyConfig, ("schemes", 0, "name", "x")) == []
    assert _field_names(StudyConfig, ("schemes", 0, "x")) == list(SchemeEntry.model_fields)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # Neither branch fits (a mapping): the scalar branch's type error, not the tuple's.
        (
            {"schemes": [{"scheme": "w4a16-gptq", "group_size": {"a": 1}}]},
            "'schemes.0.group_size': Input should be a valid integer",
        ),
        # Every bad element of a list is named, each by position.
        (
            {"schemes": [{"scheme": "w4a16-gptq", "group_size": [0, -1]}]},
            "'schemes.0.group_size.0': Input should be greater than 0; "
            "'schemes.0.group_size.1': Input should be greater than 0",
        ),
        # Two options of one entry: each is reported under its own name, the kept problems
        # first, then those told by their fallback branch.
        (
            {"schemes": [{"scheme": "w4a16-gptq", "group_size": {"a": 1}, "block_size": 0}]},
            "'schemes.0.block_size': Input should be greater than 0; "
            "'schemes.0.group_size': Input should be a valid integer",
        ),
    ],
)
def test_union_errors_keep_each_field_and_each_element(
    overrides: dict[str, Any], message: str
) -> None:
    """Which branch of a value-or-list option speaks, for each field and element."""
    with pytest.raises(UserError, match="^" + re.escape(f"command line: {message}") + "$"):
        load_study_config(None, overrides)


class _Probe(BaseModel):
    """Value-or-list fields at the top level, with a tuple and with a list branch."""

    x: PositiveInt | tuple[PositiveInt, ...] = 1
    y: PositiveInt | list[PositiveInt] = 1


def _relevant(error: ValidationError) -> list[tuple[tuple[int | str, ...], str]]:
    return [(loc, item["msg"]) for loc, item in _relevant_errors(error)]


def test_relevant_errors_of_top_level_value_or_list_fields() -> None:
    """A field's element (field, index) is a failed element, for a tuple or a list branch."""
    with pytest.raises(ValidationError, match="x") as info:
        _Probe.model_validate({"x": [0, 0]})
    assert _relevant(info.value) == [
        (("x", 0), "Input should be greater than 0"),
        (("x", 1), "Input should be greater than 0"),
    ]
    # A list branch's element of the wrong type is still that element's problem.
    with pytest.raises(ValidationError, match="y") as info:
        _Probe.model_validate({"y": [None]})
    assert _relevant(info.value) == [(("y", 0), "Input should be a valid integer")]


def test_relevant_errors_of_a_bare_index_fall_back_to_one() -> None:
    """An index with no field before it is not taken as a failed element: two list branches
    failing at the same place are told once."""
    with pytest.raises(ValidationError, match="0") as info:
        TypeAdapter(list[PositiveInt] | tuple[PositiveInt, ...]).validate_python([0])
    assert _relevant(info.value) == [((0,), "Input should be greater than 0")]


def test_a_bad_yaml_error_is_pyyamls_text_on_one_line(tmp_path: Path) -> None:
    """The whole message: PyYAML's own explanation, its whitespace runs made single spaces."""
    study = tmp_path / "study.yaml"
    study.write_text("model: [unclosed\n")
    expected = (
        f'{study} is not valid YAML: while parsing a flow sequence in "<unicode string>", '
        "line 1, column 8: model: [unclosed ^ expected ',' or ']', but got '<stream end>' "
        'in "<unicode string>", line 2, column 1: ^'
    )
    with pytest.raises(UserError, match="^" + re.escape(expected) + "$"):
        load_study_config(study)


def test_model_labels_strip_only_trailing_slashes() -> None:
    """Only '/' is stripped, only at the end; then the last path part is the name."""
    assert model_labels(("x.gguf/",)) == ["x"]
    assert model_labels(("hub/ModelX",)) == ["ModelX"]
    assert model_labels(("model ",)) == ["model-"]
    assert model_labels(("/models/hub/Model//",)) == ["Model"]


def test_scheme_entries_expand_two_axes_and_format_numbers() -> None:
    """Axes join with '-' in option order; floats print with :g, other values as they are."""
    two = SchemeEntry(scheme="w4a16-gptq", name="g", group_size=[32, 64], block_size=[64, 128])
    assert [(e.name, axes) for e, axes in two.expand()] == [
        ("g-group_size32-block_size64", {"group_size": 32, "block_size": 64}),
        ("g-group_size32-block_size128", {"group_size": 32, "block_size": 128}),
        ("g-group_size64-block_size64", {"group_size": 64, "block_size": 64}),
        ("g-group_size64-block_size128", {"group_size": 64, "block_size": 128}),
    ]
    floats = SchemeEntry(scheme="w8a8-int8", name="sq", smoothing_strength=[0.5, 1.0])
    assert [e.name for e, _ in floats.expand()] == [
        "sq-smoothing_strength0.5",
        "sq-smoothing_strength1",
    ]
    big = SchemeEntry(scheme="w4a16-gptq", name="g", group_size=[1000000])
    assert [e.name for e, _ in big.expand()] == ["g-group_size1000000"]


def test_scheme_options_expand_into_the_scheme_options_of_each_entry() -> None:
    """A list-valued scheme option is an axis too, and each entry holds its one value there."""
    entry = SchemeEntry(scheme="w4a16-gptq", name="g", actorder=["static", "weight"])
    assert [(e.name, e.scheme_options, e.options(), axes) for e, axes in entry.expand()] == [
        (
            "g-actorderstatic",
            {"actorder": "static"},
            {"actorder": "static"},
            {"actorder": "static"},
        ),
        (
            "g-actorderweight",
            {"actorder": "weight"},
            {"actorder": "weight"},
            {"actorder": "weight"},
        ),
    ]


def test_ignore_lists_are_not_an_axis() -> None:
    """`ignore` is a list of modules, kept whole on the one entry."""
    entry = SchemeEntry(scheme="w4a16-gptq", name="g", ignore=["lm_head", "re:.*gate"])
    assert entry.expand() == [(entry, {})]
    assert entry.expand()[0][0].ignore == ("lm_head", "re:.*gate")


@pytest.mark.parametrize(
    "assignment",
    [
        "max_tokens",
        "",
        "=4096",
        " =1",
        "a..b=1",
        ".a=1",
        "a.=1",
        "evaluation.corpus.=2",
        "a..b='x'",
    ],
)
def test_set_refuses_an_assignment_without_a_dotted_key(assignment: str) -> None:
    """The whole message, with the assignment as given."""
    expected = (
        "--set expects KEY=VALUE with a dotted config key "
        f"(e.g. evaluation.corpus.max_tokens=4096), not '{assignment}'"
    )
    with pytest.raises(UserError, match="^" + re.escape(expected) + "$"):
        assignment_overrides(["out=ok", assignment])


@pytest.mark.parametrize(
    ("assignment", "value"),
    [
        ("k=4096", 4096),
        ("k=0.5", 0.5),
        ("k=true", True),
        ("k=[size, perplexity]", ["size", "perplexity"]),
        ("k={a: 1, b: [2]}", {"a": 1, "b": [2]}),
        ("k='007'", "007"),
        ("k=plain text", "plain text"),
        ("k= 12 ", 12),
        ("k=", EXPLICIT_NULL),  # YAML's empty value: clears the key, as null does
        ("k=null", EXPLICIT_NULL),
        ("k=~", EXPLICIT_NULL),
        ("k=a=b", "a=b"),  # the first '=' splits
        # Not YAML: the text exactly as written, spaces and all.
        ("k=[unclosed", "[unclosed"),
        ("k= {a: ", " {a: "),
        ("k=a: b: c", "a: b: c"),
    ],
)
def test_set_values_are_read_as_yaml_or_kept_as_text(assignment: str, value: Any) -> None:
    assert assignment_overrides([assignment]) == {"k": value}


def test_set_nests_dotted_keys_and_strips_the_key() -> None:
    assert assignment_overrides([]) == {}
    assert assignment_overrides(["  evaluation.corpus.max_tokens  =4096"]) == {
        "evaluation": {"corpus": {"max_tokens": 4096}}
    }
    assert assignment_overrides(["a.b.c=1", "a.b.d=2", "a.e=3", "f=4"]) == {
        "a": {"b": {"c": 1, "d": 2}, "e": 3},
        "f": 4,
    }


def test_set_later_assignments_win() -> None:
    """A later value replaces an earlier one; a scalar on the way to a nested key is replaced
    by a mapping, and a mapping (given as YAML or built) is extended in place."""
    assert assignment_overrides(["a=1", "a=2"]) == {"a": 2}
    assert assignment_overrides(["a=1", "a.b=2"]) == {"a": {"b": 2}}
    assert assignment_overrides(["a=[1]", "a.b.c=2"]) == {"a": {"b": {"c": 2}}}
    assert assignment_overrides(["a.b=1", "a=2"]) == {"a": 2}
    assert assignment_overrides(["a={b: 1, c: 1}", "a.c=2"]) == {"a": {"b": 1, "c": 2}}
    assert assignment_overrides(["a.b=1", "a.b.c=2"]) == {"a": {"b": {"c": 2}}}


def test_set_overrides_load_as_a_study_config() -> None:
    overrides = assignment_overrides(["evaluation.corpus.max_tokens=4096", "out=o"])
    config = load_study_config(None, overrides)
    assert (config.evaluation.corpus.max_tokens, config.out) == (4096, "o")


def test_merged_overrides_layer_later_over_earlier() -> None:
    """Each layer over those before it, nested key by key; None is 'not given'."""
    assert merged_overrides() == {}
    first = {"a": {"b": 1, "c": 2}, "d": 3, "e": [1], "f": {"g": 1}}
    second = {"a": {"c": 5, "h": None}, "d": None, "e": 4, "f": 6}
    third = {"f": {"i": 7}, "j": None}
    merged = merged_overrides(first, second, third)
    assert merged == {"a": {"b": 1, "c": 5}, "d": 3, "e": 4, "f": {"i": 7}}
    assert merged_overrides(second, first) == {
        "a": {"b": 1, "c": 2},
        "d": 3,
        "e": [1],
        "f": {"g": 1},
    }


def test_merged_overrides_leave_their_layers_alone() -> None:
    """The layers are not changed, and the result's mappings are its own."""
    first = {"a": {"b": 1}, "c": 2}
    second = {"a": {"d": 3}, "c": None}
    merged = merged_overrides(first, second)
    assert merged == {"a": {"b": 1, "d": 3}, "c": 2}
    assert first == {"a": {"b": 1}, "c": 2}
    assert second == {"a": {"d": 3}, "c": None}
    assert merged["a"] is not first["a"] and merged["a"] is not second["a"]


def test_a_text_or_list_field_names_the_bad_element_not_the_union_tag() -> None:
    """`model: str | tuple[str, ...]`: pydantic tags the plain-string branch `str`; the message
    must name the element that failed, never a made-up 'model.str'."""
    with pytest.raises(
        UserError, match=r"^command line: 'model\.0': Input should be a valid string$"
    ):
        load_study_config(None, {"model": [1]})
    with pytest.raises(UserError, match=r"^command line: 'model': Input should be a valid string$"):
        load_study_config(None, {"model": 1})
