import json
from pathlib import Path

import pytest

from quantbench.config import CorpusConfig
from quantbench.corpus import builtin_eval_text, corpus_text, make_windows
from quantbench.errors import UserError

SHARED_WIKITEXT = (
    Path(__file__).resolve().parents[2] / "shared/data/wikitext2/wikitext-2-raw-v1.test.jsonl"
)


def test_disjoint_windows_score_every_target_once() -> None:
    windows = make_windows(list(range(100)), window=10, stride=10, max_tokens=1000)
    assert len(windows.windows) == 10
    assert windows.score_from == [0] * 10
    assert windows.n_targets == 10 * 9


def test_overlapping_windows_score_only_new_targets() -> None:
    windows = make_windows(list(range(40)), window=10, stride=5, max_tokens=1000)
    assert windows.windows[1][0] == 5
    assert windows.score_from[0] == 0 and set(windows.score_from[1:]) == {4}
    targets = []
    for chunk, skip in zip(windows.windows, windows.score_from, strict=True):
        targets += chunk[1 + skip :]
    assert targets == list(range(1, 40))  # each token predicted exactly once


def test_token_budget_is_exact() -> None:
    windows = make_windows(list(range(1000)), window=10, stride=10, max_tokens=25)
    assert windows.n_targets == 25
    assert len(windows.windows) == 3 and windows.score_from[-1] == 2


def test_hash_changes_with_the_tokens() -> None:
    first = make_windows(list(range(50)), 10, 10, 100)
    second = make_windows([*range(49), 7], 10, 10, 100)
    assert first.tokens_sha256 != second.tokens_sha256


def test_too_short_a_corpus_is_a_user_error() -> None:
    with pytest.raises(UserError, match="fewer than one window"):
        make_windows([1, 2, 3], window=10, stride=10, max_tokens=5)


def test_builtin_corpus_is_the_held_out_text() -> None:
    text = builtin_eval_text()
    assert len(text) > 50_000
    assert corpus_text(CorpusConfig()) == text


def test_jsonl_rows_are_joined_like_gptq_wikitext(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["a", "", "b\n"]))
    assert corpus_text(CorpusConfig(source=str(path))) == "a\n\n\n\nb\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": 1}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:1: a corpus row needs a 'text' field"):
        corpus_text(CorpusConfig(source=str(bad)))


@pytest.mark.skipif(not SHARED_WIKITEXT.is_file(), reason="../shared/data is absent")
def test_shared_wikitext_matches_the_gptq_text() -> None:
    gptq = SHARED_WIKITEXT.with_name("wikitext-2-raw-v1.test.gptq.txt").read_text()
    assert corpus_text(CorpusConfig(source=str(SHARED_WIKITEXT))) == gptq


def test_wikitext2_offline_says_where_the_local_file_is() -> None:
    with pytest.raises(UserError, match=r"--corpus \.\./shared/data/wikitext2"):
        corpus_text(CorpusConfig(source="wikitext2"))
