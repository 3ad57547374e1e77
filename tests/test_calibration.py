import json
import re
from pathlib import Path

import pytest

from quantbench.calibration import (
    builtin_calibration_rows,
    builtin_documents,
    builtin_split,
    load_rows,
    select_samples,
)
from quantbench.errors import UserError


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> object:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_every_row_shape_loads(tmp_path: Path) -> None:
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps(row)
            for row in [
                {"messages": [{"role": "user", "content": "hi"}]},
                {"prompt": "p", "response": "r"},
                {"text": "t"},
                {"instruction": "i", "input": "x", "output": "o"},
            ]
        )
    )
    rows = load_rows(jsonl)
    assert rows[1] == {"prompt": "p", "response": "r"}
    assert rows[3] == {"prompt": "i\n\nx", "response": "o"}
    as_json = tmp_path / "rows.json"
    as_json.write_text(json.dumps([{"text": "a"}, {"text": "b"}]))
    assert len(load_rows(as_json)) == 2
    txt = tmp_path / "rows.txt"
    txt.write_text("first paragraph\n\nsecond paragraph\n")
    assert load_rows(txt) == [{"text": "first paragraph"}, {"text": "second paragraph"}]


def test_parquet_rows_load(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": ["one", "two", "three"]}), path)
    assert [row["text"] for row in load_rows(path)] == ["one", "two", "three"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "ok"}\n{not json}\n', "bad.jsonl:2: not valid JSON"),
        ("keys.jsonl", '{"question": "q"}\n', "a row needs 'messages'"),
        ("empty.jsonl", "\n\n", "has no rows"),
        ("msgs.jsonl", '{"messages": "hello"}\n', "'messages' must be a list"),
        ("list.json", '{"a": 1}', "expected a JSON list"),
        ("rows.csv", "a,b\n", "unsupported calibration file type '.csv'"),
        ("broken.parquet", "not parquet", "not a readable parquet file"),
    ],
)
def test_malformed_files_are_named_with_the_problem(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match=re.escape(message)):
        load_rows(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="calibration file not found"):
        load_rows(tmp_path / "none.jsonl")


def test_samples_use_the_chat_template_and_are_seeded(tokenizer: object) -> None:
    rows = [{"prompt": f"question {i}", "response": f"answer number {i} " * 5} for i in range(20)]
    first = select_samples(rows, tokenizer, num_samples=5, seq_len=16, seed=1)
    again = select_samples(rows, tokenizer, num_samples=5, seq_len=16, seed=1)
    other = select_samples(rows, tokenizer, num_samples=5, seq_len=16, seed=2)
    assert first == again and first != other
    assert len(first) == 5 and all(len(ids) <= 16 for ids in first)
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")  # type: ignore[attr-defined]
    assert all(ids[0] == im_start for ids in first)


def test_builtin_calibration_is_chat_shaped_and_disjoint_from_evaluation() -> None:
    documents = builtin_documents()
    rows = builtin_calibration_rows()
    assert len(rows) >= 64
    calibration_texts = {row["messages"][1]["content"] for row in rows}
    eval_texts = {d.text for i, d in enumerate(documents) if builtin_split(i) == "eval"}
    assert eval_texts and not calibration_texts & eval_texts
