"""The token corpus for perplexity and divergence, cut into identical windows for every variant.

The corpus stage tokenizes the text once with the model's tokenizer and stores the windows,
so every variant (and the baseline) scores exactly the same token ids; the hash of those ids
is recorded with every perplexity figure and checked against the baseline's.

Sources: the built-in held-out split of CPython's documentation (the chunks calibration never
sees), WikiText-2 (`wikitext2`: the hub when reachable), or a local `.txt` / `.jsonl` file.
JSONL rows' `text` fields are joined with blank lines, the way GPTQ-style WikiText-2
perplexity is computed, so `../shared/data/wikitext2/wikitext-2-raw-v1.test.jsonl` gives the
same text as the hub's test split.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbench.calibration import builtin_documents, builtin_split, tokenizer_fingerprint
from quantbench.config import CorpusConfig
from quantbench.errors import UserError
from quantbench.jsonl import json_lines
from quantbench.models import ResolvedModel, file_sha256
from quantbench.store import StageRef, StageStore, content_key

WINDOWS_FILE = "windows.json"
CORPUS_STAGE_VERSION = 1


@dataclass(frozen=True)
class Windows:
    """Token windows and, per window, how many leading targets were already scored before."""

    windows: list[list[int]]
    score_from: list[int]
    tokens_sha256: str

    @property
    def n_targets(self) -> int:
        return sum(len(w) - 1 - s for w, s in zip(self.windows, self.score_from, strict=True))


def make_windows(ids: list[int], window: int, stride: int, max_tokens: int) -> Windows:
    """Fixed-length windows every `stride` tokens until `max_tokens` targets are scored.

    With stride < window, windows overlap and each scores only the targets the previous one
    did not (its first `window - 1 - stride` targets serve as context), the standard sliding
    evaluation. Only full windows are used, so every window has the same shape.
    """
    if len(ids) < window:
        raise UserError(
            f"the corpus has {len(ids)} tokens, fewer than one window of {window}; use a "
            "longer corpus or a smaller evaluation.corpus.window"
        )
    windows: list[list[int]] = []
    score_from: list[int] = []
    scored = 0
    start = 0
    while start + window <= len(ids) and scored < max_tokens:
        skip = 0 if not windows else max(0, window - 1 - stride)
        targets = window - 1 - skip
        if scored + targets > max_tokens:
            skip += scored + targets - max_tokens
            targets = window - 1 - skip
        windows.append(ids[start : start + window])
        score_from.append(skip)
        scored += targets
        start += stride
    return _hashed(windows, score_from)


def _hashed(windows: list[list[int]], score_from: list[int]) -> Windows:
    digest = hashlib.sha256()
    for chunk, skip in zip(windows, score_from, strict=True):
        digest.update(json.dumps([skip, chunk]).encode())
    return Windows(windows, score_from, digest.hexdigest())


def builtin_eval_text() -> str:
    return "\n\n".join(
        doc.text for i, doc in enumerate(builtin_documents()) if builtin_split(i) == "eval"
    )


def _file_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"corpus file not found: {path}")
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        texts = []
        for where, row in json_lines(path):
            if not isinstance(row, dict) or "text" not in row:
                raise UserError(f"{where}: a corpus row needs a 'text' field")
            texts.append(str(row["text"]))
        return "\n\n".join(texts)
    if name.endswith(".txt"):
        return path.read_text(errors="replace")
    raise UserError(f"{path}: unsupported corpus file type; use .txt or .jsonl with 'text' rows")


def _wikitext2_from_hub() -> str:
    try:
        import datasets

        rows = datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="test")
    except Exception as exc:  # datasets wraps network errors in many types
        raise UserError(
            f"cannot load WikiText-2 from the hub ({type(exc).__name__}); offline, pass the "
            "local file: --corpus ../shared/data/wikitext2/wikitext-2-raw-v1.test.jsonl"
        ) from None
    return "\n\n".join(row["text"] for row in rows)


def source_identity(config: CorpusConfig) -> dict[str, Any]:
    if config.source == "builtin":
        return {"kind": "builtin", "version": 1}
    if config.source == "wikitext2":
        return {"kind": "hub", "id": "Salesforce/wikitext:wikitext-2-raw-v1:test"}
    path = Path(config.source).expanduser()
    if not path.is_file():
        raise UserError(f"corpus file not found: {config.source}")
    return {"kind": "file", "sha256": file_sha256(path), "name": path.name}


def corpus_text(config: CorpusConfig) -> str:
    if config.source == "builtin":
        return builtin_eval_text()
    if config.source == "wikitext2":
        return _wikitext2_from_hub()
    return _file_text(Path(config.source).expanduser())


def corpus_ref(config: CorpusConfig, model: ResolvedModel) -> StageRef:
    return StageRef(
        "corpus",
        content_key(
            {
                "v": CORPUS_STAGE_VERSION,
                "source": source_identity(config),
                "tokenizer": tokenizer_fingerprint(model),
                "window": config.window,
                "stride": config.stride,
                "max_tokens": config.max_tokens,
            }
        ),
    )


def prepare_corpus(
    store: StageStore, ref: StageRef, config: CorpusConfig, model: ResolvedModel
) -> dict[str, Any]:
    if store.is_done(ref):
        return store.manifest(ref)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.tokenizer_folder)
    text = corpus_text(config)
    if not text.strip():
        raise UserError(f"corpus {config.source} is empty")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    windows = make_windows(ids, config.window, config.stride, config.max_tokens)
    with store.build(ref) as work:
        (work / WINDOWS_FILE).write_text(
            json.dumps({"windows": windows.windows, "score_from": windows.score_from})
        )
        manifest = {
            "source": config.source,
            "source_identity": source_identity(config),
            "corpus_tokens": len(ids),
            "window": config.window,
            "stride": config.stride,
            "n_windows": len(windows.windows),
            "n_targets": windows.n_targets,
            "tokens_sha256": windows.tokens_sha256,
        }
        store.commit(ref, work, manifest)
    return manifest


def read_windows(stage_dir: Path) -> Windows:
    data = json.loads((stage_dir / WINDOWS_FILE).read_text())
    return _hashed(data["windows"], data["score_from"])
