import json
import multiprocessing
from pathlib import Path

import pytest

from quantbench.errors import UserError
from quantbench.store import StageRef, StageStore, content_key, exclusive, write_json_atomic


def test_content_key_is_canonical() -> None:
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})
    assert len(content_key({})) == 16


def test_a_stage_is_done_only_after_commit(tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    ref = StageRef("quantize", "k1")
    with store.build(ref) as work:
        (work / "weights.bin").write_bytes(b"x")
        assert not store.is_done(ref)
        store.commit(ref, work, {"answer": 42})
    assert store.is_done(ref)
    assert store.manifest(ref)["answer"] == 42
    assert (store.path(ref) / "weights.bin").read_bytes() == b"x"


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    ref = StageRef("quantize", "k2")
    with pytest.raises(RuntimeError, match="killed"), store.build(ref) as work:
        (work / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed")
    assert not store.is_done(ref)
    assert list((tmp_path / "quantize").iterdir()) == []


def test_sweep_removes_what_a_killed_run_left(tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    leftover = tmp_path / "quantize" / ".tmp-k3-999-abcd"
    leftover.mkdir(parents=True)
    (leftover / "artifact").mkdir()
    no_manifest = tmp_path / "quantize" / "k4"
    no_manifest.mkdir()
    done = StageRef("quantize", "k5")
    with store.build(done) as work:
        store.commit(done, work, {})
    removed = store.sweep_stale()
    assert sorted(p.name for p in removed) == [".tmp-k3-999-abcd", "k4"]
    assert store.is_done(done)


def test_atomic_json_never_leaves_temp_files(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "r.json", {"a": 1})
    write_json_atomic(tmp_path / "r.json", {"a": 2})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def _hold_lock(
    path: str,
    ready: "multiprocessing.synchronize.Event",
    release: "multiprocessing.synchronize.Event",
) -> None:
    with exclusive(Path(path), what="x"):
        ready.set()
        release.wait(10)


def test_second_run_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(tmp_path / "lock"), ready, release))
    holder.start()
    try:
        assert ready.wait(20)
        with (
            pytest.raises(UserError, match="another quantbench run is using"),
            exclusive(tmp_path / "lock", what=str(tmp_path)),
        ):
            pass
    finally:
        release.set()
        holder.join(10)
    with exclusive(tmp_path / "lock", what="x"):
        pass
