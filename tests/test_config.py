import re
from pathlib import Path

import pytest

from quantbench.config import DEFAULT_SCHEMES, load_study_config
from quantbench.errors import UserError


def test_defaults_need_no_file() -> None:
    config = load_study_config()
    assert config.model == "smollm2-135m-instruct"
    # Written out: comparing with the product's own DEFAULT_SCHEMES passed whatever it held.
    expected = ("bf16", "fp8-dynamic", "w4a16-gptq", "w8a8-int8")
    assert tuple(entry.scheme for entry in config.schemes) == expected == DEFAULT_SCHEMES
    assert config.calibration.num_samples == 64 and config.calibration.seq_len == 512
    assert config.out == "quantbench-out"


def test_flags_override_file(tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(
        "model: ./m\nschemes: [bf16, {scheme: w4a16-gptq, group_size: 32}]\n"
        "calibration: {num_samples: 16, seed: 3}\n"
    )
    config = load_study_config(study, {"model": "other", "calibration": {"num_samples": 8}})
    assert config.model == "other"
    assert config.calibration.num_samples == 8
    assert config.calibration.seed == 3
    assert config.schemes[1].group_size == 32
    assert config.schemes[1].options() == {"group_size": 32}


def test_comma_separated_schemes_flag() -> None:
    config = load_study_config(None, {"schemes": "bf16, fp8-dynamic"})
    assert [entry.scheme for entry in config.schemes] == ["bf16", "fp8-dynamic"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "calibraton: {num_samples: 4}\n",
            "unknown key 'calibraton' (did you mean \"calibration\"?)",
        ),
        ("calibration: {num_sample: 4}\n", "unknown key 'calibration.num_sample' (did you mean"),
        (
            "schemes: [{scheme: w4a16-gptq, group_sise: 4}]\n",
            'group_sise\' (did you mean "group_size"?)',
        ),
        (
            "calibration: {num_samples: 0}\n",
            "'calibration.num_samples': Input should be greater than 0",
        ),
        ("- a\n- b\n", "must be a mapping"),
        ("model: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_gives_one_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(text)
    with pytest.raises(UserError, match=re.escape(expected)) as info:
        load_study_config(study)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="study config not found"):
        load_study_config(tmp_path / "nope.yaml")


def test_building_a_config_has_no_side_effects(tmp_path: Path) -> None:
    load_study_config(None, {"out": str(tmp_path / "out"), "model": str(tmp_path / "missing")})
    assert not (tmp_path / "out").exists()
