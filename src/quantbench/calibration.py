"""Calibration data: rows from a file, a hub dataset or the built-in set, tokenized once.

The prepared samples are a stage of their own, keyed by (source, tokenizer, n, seq_len,
seed), and shared by every scheme that needs calibration.

The built-in offline default is made from CPython's own bundled documentation
(`pydoc_data.topics`, the text behind `help()`), wrapped as chat turns: a user asks about a
topic and the assistant answers with the documentation. It is on every Python install, so it
ships no third-party text, needs no network and costs no generation time; its chat shape
exercises the same template tokens the instruct model sees in use. Its domain is narrow
(technical English about Python), which is why the config can point at any other source.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbench.config import CalibrationConfig
from quantbench.errors import UserError
from quantbench.jsonl import json_lines
from quantbench.models import ResolvedModel, file_sha256
from quantbench.store import StageRef, StageStore, content_key

BUILTIN_VERSION = 1
MIN_SAMPLE_TOKENS = 8
SAMPLES_FILE = "samples.jsonl"
_CHUNK_CHARS = 2000

Row = dict[str, Any]


@dataclass(frozen=True)
class BuiltinDocument:
    topic: str
    text: str


def builtin_documents() -> list[BuiltinDocument]:
    """CPython's help topics, split at paragraph boundaries into chunks of ~2000 characters."""
    from pydoc_data.topics import topics

    documents: list[BuiltinDocument] = []
    for topic in sorted(topics):
        paragraphs = [p.strip() for p in topics[topic].split("\n\n") if p.strip()]
        chunk: list[str] = []
        for paragraph in paragraphs:
            chunk.append(paragraph)
            if sum(len(p) for p in chunk) >= _CHUNK_CHARS:
                documents.append(BuiltinDocument(topic, "\n\n".join(chunk)))
                chunk = []
        if chunk:
            documents.append(BuiltinDocument(topic, "\n\n".join(chunk)))
    return documents


def builtin_split(index: int) -> str:
    """Every fourth built-in chunk is kept for evaluation, never for calibration."""
    return "eval" if index % 4 == 0 else "calibration"


def builtin_calibration_rows() -> list[Row]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Explain the Python topic '{doc.topic}'."},
                {"role": "assistant", "content": doc.text},
            ]
        }
        for index, doc in enumerate(builtin_documents())
        if builtin_split(index) == "calibration"
    ]


def _check_row(row: Any, where: str) -> Row:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object per row, got {type(row).__name__}")
    if "messages" in row:
        messages = row["messages"]
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
        ):
            raise UserError(f"{where}: 'messages' must be a list of {{role, content}} objects")
        return {"messages": messages}
    if "prompt" in row and "response" in row:
        return {"prompt": str(row["prompt"]), "response": str(row["response"])}
    if "instruction" in row and "output" in row:
        prompt = str(row["instruction"])
        if row.get("input"):
            prompt += "\n\n" + str(row["input"])
        return {"prompt": prompt, "response": str(row["output"])}
    if "text" in row:
        return {"text": str(row["text"])}
    keys = ", ".join(sorted(row)) or "none"
    raise UserError(
        f"{where}: a row needs 'messages', 'prompt' and 'response', or 'text' (it has: {keys})"
    )


def load_rows(path: Path) -> list[Row]:
    """Read calibration rows from .jsonl, .json, .parquet or .txt, validating each row."""
    if not path.is_file():
        raise UserError(f"calibration file not found: {path}")
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    rows: list[Row] = []
    try:
        if suffix in (".jsonl", ".jsonl.gz"):
            rows += [_check_row(row, where) for where, row in json_lines(path)]
        elif suffix == ".json":
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise UserError(f"{path}: expected a JSON list of rows")
            rows = [_check_row(row, f"{path}[{i}]") for i, row in enumerate(data)]
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except Exception as exc:  # pyarrow raises several unrelated types for bad files
                raise UserError(f"{path}: not a readable parquet file ({exc})") from None
            rows = [_check_row(row, f"{path} row {i}") for i, row in enumerate(table.to_pylist())]
        elif suffix == ".txt":
            text = path.read_text(errors="replace")
            rows = [{"text": block.strip()} for block in text.split("\n\n") if block.strip()]
        else:
            raise UserError(
                f"{path}: unsupported calibration file type '{suffix}'; use .jsonl, .json, "
                ".parquet or .txt"
            )
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    if not rows:
        raise UserError(f"calibration file {path} has no rows")
    return rows


def check_local_source(config: CalibrationConfig) -> None:
    """Read and validate a local calibration file now (a user error names what is wrong),
    so that pre-flight refuses it before any worker starts; other sources are left to
    `load_source`."""
    if config.source == "builtin":
        return
    path = Path(config.source).expanduser()
    if path.is_file():
        load_rows(path)


def _hub_rows(dataset_id: str, split: str) -> list[Row]:
    try:
        import datasets

        loaded = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # datasets wraps network and format errors in many types
        raise UserError(
            f"cannot load calibration dataset '{dataset_id}' (split '{split}') from the hub: "
            f"{type(exc).__name__}. Offline, pass a local .jsonl/.json/.parquet/.txt file"
        ) from None
    return [_check_row(row, f"{dataset_id}[{i}]") for i, row in enumerate(loaded)]


def source_identity(config: CalibrationConfig) -> dict[str, Any]:
    """What identifies the source's content for the stage key (a file's hash, not its path)."""
    if config.source == "builtin":
        return {"kind": "builtin", "version": BUILTIN_VERSION}
    path = Path(config.source).expanduser()
    if path.exists():
        if not path.is_file():
            raise UserError(f"calibration source {config.source} is a folder, not a file")
        return {"kind": "file", "sha256": file_sha256(path), "name": path.name}
    if config.source.count("/") == 1 and not config.source.startswith((".", "/", "~")):
        return {"kind": "hub", "id": config.source, "split": config.split}
    raise UserError(f"calibration file not found: {config.source}")


def load_source(config: CalibrationConfig) -> list[Row]:
    if config.source == "builtin":
        return builtin_calibration_rows()
    path = Path(config.source).expanduser()
    if path.exists():
        return load_rows(path)
    return _hub_rows(config.source, config.split)


def render_rows(rows: Iterable[Row], tokenizer: Any) -> Iterable[list[int]]:
    """Token ids per row; chat-shaped rows go through the model's chat template."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    for row in rows:
        if "text" in row:
            yield list(tokenizer(row["text"], add_special_tokens=True)["input_ids"])
            continue
        messages = row.get("messages") or [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["response"]},
        ]
        if has_template:
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            yield list(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            text = "\n\n".join(str(m["content"]) for m in messages)
            yield list(tokenizer(text, add_special_tokens=True)["input_ids"])


def select_samples(
    rows: Sequence[Row], tokenizer: Any, num_samples: int, seq_len: int, seed: int
) -> list[list[int]]:
    """Shuffle rows with `seed`, tokenize, truncate to `seq_len`, keep the first `num_samples`."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    samples: list[list[int]] = []
    for ids in render_rows((rows[i] for i in order), tokenizer):
        if len(ids) >= MIN_SAMPLE_TOKENS:
            samples.append(ids[:seq_len])
            if len(samples) == num_samples:
                break
    return samples


def tokenizer_fingerprint(model: ResolvedModel) -> str:
    files = {
        name: digest
        for name, digest in model.source_files.items()
        if name.startswith(("tokenizer", "special_tokens", "chat_template"))
    }
    return content_key(files or {"model": model.fingerprint})


def calibration_ref(config: CalibrationConfig, model: ResolvedModel) -> StageRef:
    return StageRef(
        "calibration",
        content_key(
            {
                "source": source_identity(config),
                "tokenizer": tokenizer_fingerprint(model),
                "num_samples": config.num_samples,
                "seq_len": config.seq_len,
                "seed": config.seed,
                "min_tokens": MIN_SAMPLE_TOKENS,
            }
        ),
    )


def prepare_calibration(
    store: StageStore, ref: StageRef, config: CalibrationConfig, model: ResolvedModel
) -> dict[str, Any]:
    """Build the calibration stage if it is not done; return its manifest."""
    if store.is_done(ref):
        return store.manifest(ref)
    from transformers import AutoTokenizer

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tokenizer = AutoTokenizer.from_pretrained(model.tokenizer_folder)
    rows = load_source(config)
    samples = select_samples(rows, tokenizer, config.num_samples, config.seq_len, config.seed)
    if not samples:
        raise UserError(
            f"calibration source {config.source} gave no sample of at least "
            f"{MIN_SAMPLE_TOKENS} tokens"
        )
    text = "".join(json.dumps({"input_ids": ids}) + "\n" for ids in samples)
    with store.build(ref) as work:
        (work / SAMPLES_FILE).write_text(text)
        lengths = [len(ids) for ids in samples]
        manifest = {
            "source": config.source,
            "source_identity": source_identity(config),
            "rows_available": len(rows),
            "num_samples": len(samples),
            "num_samples_requested": config.num_samples,
            "seq_len": config.seq_len,
            "seed": config.seed,
            "total_tokens": sum(lengths),
            "mean_tokens": sum(lengths) / len(lengths),
            "samples_sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
        store.commit(ref, work, manifest)
    return manifest


def read_samples(path: Path) -> list[list[int]]:
    with open(path) as handle:
        return [json.loads(line)["input_ids"] for line in handle if line.strip()]
