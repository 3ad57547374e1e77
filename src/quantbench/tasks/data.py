"""Local files for the tasks that run without a hub, and the checks that catch bad ones early.

The layout is that of `shared/data/` (each task in a folder named after its source), and the
dataset overrides follow lm-eval's own offline recipe: `dataset_path: json` (or `parquet`)
with `data_files` per split, in place of the hub dataset the stock task yaml names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbench.errors import UserError
from quantbench.jsonl import json_lines


@dataclass(frozen=True)
class SplitFiles:
    """One lm-eval split: its name and the candidate file names, in order of preference."""

    split: str
    candidates: tuple[str, ...]


@dataclass(frozen=True)
class OfflineLayout:
    folder: str
    splits: tuple[SplitFiles, ...]
    required_fields: tuple[str, ...]


OFFLINE_LAYOUTS: dict[str, OfflineLayout] = {
    "mmlu_pro": OfflineLayout(
        "mmlu_pro",
        (
            SplitFiles("test", ("test-00000-of-00001.parquet", "test.jsonl.gz", "test.jsonl")),
            SplitFiles(
                "validation",
                ("validation-00000-of-00001.parquet", "validation.jsonl.gz", "validation.jsonl"),
            ),
        ),
        ("question", "options", "answer", "cot_content", "category"),
    ),
    "gsm8k": OfflineLayout(
        "gsm8k",
        (
            SplitFiles("test", ("test.jsonl", "test.jsonl.gz")),
            SplitFiles("train", ("train.jsonl.gz", "train.jsonl")),
        ),
        ("question", "answer"),
    ),
    "ifeval": OfflineLayout(
        "ifeval",
        (SplitFiles("train", ("input_data.jsonl", "input_data.jsonl.gz")),),
        ("key", "prompt", "instruction_id_list", "kwargs"),
    ),
    "humaneval_plus": OfflineLayout(
        "humanevalplus",
        (
            SplitFiles(
                "test", ("HumanEvalPlus-OriginFmt.jsonl.gz", "HumanEvalPlus-OriginFmt.jsonl")
            ),
        ),
        ("task_id", "prompt", "entry_point", "test"),
    ),
    "humaneval": OfflineLayout(
        "humaneval",
        (SplitFiles("test", ("HumanEval.jsonl.gz", "HumanEval.jsonl")),),
        ("task_id", "prompt", "entry_point", "test"),
    ),
}
"""Task name → where its files live under the task-data folder and what each row needs."""


def resolve_files(task: str, data_dir: Path) -> dict[str, Path]:
    """Split → file for `task` under `data_dir`, checked to exist and to hold the fields the
    task reads. Raises a `UserError` naming the file and what is wrong."""
    layout = OFFLINE_LAYOUTS.get(task)
    if layout is None:
        known = ", ".join(OFFLINE_LAYOUTS)
        raise UserError(f"task '{task}' has no local-data layout; tasks that do: {known}")
    if not data_dir.is_dir():
        raise UserError(f"task data folder not found: {data_dir}")
    files: dict[str, Path] = {}
    for split in layout.splits:
        folder = data_dir / layout.folder
        found = next((folder / n for n in split.candidates if (folder / n).is_file()), None)
        if found is None:
            expected = " or ".join(str(folder / n) for n in split.candidates)
            raise UserError(f"{task}: no {split.split} split in {data_dir}; expected {expected}")
        _check_fields(task, found, layout.required_fields)
        files[split.split] = found
    return files


EVAL_SPLITS = {"ifeval": "train"}
"""The split lm-eval scores, where it is not `test`."""
SUBTASK_FIELD = {"mmlu_pro": "category"}
"""The row field that splits a task into its group's subtasks."""


def eval_counts(task: str, data_dir: Path) -> list[int]:
    """How many documents the scored split of a local task holds, per subtask (a group's
    subtasks split it by a field: MMLU-Pro's 14 by `category`); read from the files alone,
    for `quantbench plan`, without building lm-eval's tasks."""
    path = resolve_files(task, data_dir)[EVAL_SPLITS.get(task, "test")]
    field = SUBTASK_FIELD.get(task)
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        if field is None:
            return [pq.read_metadata(path).num_rows]
        values = pq.read_table(path, columns=[field]).column(field).to_pylist()
    else:
        rows = [row for _, row in json_lines(path)]
        if field is None:
            return [len(rows)]
        values = [row.get(field) for row in rows]
    counts: dict[Any, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return list(counts.values())


def dataset_overrides(files: dict[str, Path]) -> dict[str, Any]:
    """The lm-eval task keys that point a stock task at local files instead of the hub."""
    kinds = {"parquet" if p.name.endswith(".parquet") else "json" for p in files.values()}
    if len(kinds) != 1:
        raise UserError(f"mixed parquet and JSON files for one task: {sorted(map(str, files))}")
    return {
        "dataset_path": kinds.pop(),
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(p) for split, p in files.items()}},
    }


def _check_fields(task: str, path: Path, required: tuple[str, ...]) -> None:
    try:
        if path.name.endswith(".parquet"):
            import pyarrow.parquet as pq

            fields = set(pq.read_schema(path).names)
        else:
            fields = set(_first_json_row(path))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{task}: cannot read {path}: {type(exc).__name__}: {exc}") from None
    missing = [f for f in required if f not in fields]
    if missing:
        raise UserError(
            f"{task}: {path} is missing field(s) {', '.join(missing)} "
            f"(rows have: {', '.join(sorted(fields)) or 'nothing'})"
        )


def _first_json_row(path: Path) -> dict[str, Any]:
    for where, row in json_lines(path):
        if not isinstance(row, dict):
            raise UserError(f"{where}: a row must be a JSON object")
        return row
    raise UserError(f"{path} has no rows")
