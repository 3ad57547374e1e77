import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest

from quantbench.errors import UserError
from quantbench.store import (
    FILES_KEY,
    MANIFEST,
    StageRef,
    StageStore,
    content_key,
    exclusive,
    write_json_atomic,
)


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


def _committed(root: Path, files: dict[str, bytes]) -> tuple[StageStore, StageRef]:
    store = StageStore(root / "stages")
    ref = StageRef("quantize", "k6")
    with store.build(ref) as work:
        for name, data in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(data)
        store.commit(ref, work, {})
    return store, ref


FILES = {"artifact/model.safetensors": b"w" * 1000, "artifact/config.json": b"{}"}


def test_a_manifest_lists_every_file_with_its_size_and_sha256(tmp_path: Path) -> None:
    import hashlib

    store, ref = _committed(tmp_path, FILES)
    listed = store.manifest(ref)[FILES_KEY]
    assert listed == {
        name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in FILES.items()
    }
    assert store.verify(ref) is None and store.verify(ref, deep=True) is None


def test_verify_names_a_missing_resized_or_modified_file(tmp_path: Path) -> None:
    store, ref = _committed(tmp_path, FILES)
    weights = store.path(ref) / "artifact" / "model.safetensors"
    config = store.path(ref) / "artifact" / "config.json"

    config.write_bytes(b"{ }")  # one byte longer
    damage = store.verify(ref)
    assert damage is not None
    assert damage.file == "stages/quantize/k6/artifact/config.json"
    assert damage.problem == "has 3 bytes where its manifest recorded 2"
    config.write_bytes(b"{}")

    # Same size, new modification time: the hash decides.
    weights.write_bytes(b"x" + b"w" * 999)
    damage = store.verify(ref)
    assert damage is not None and damage.problem == "was modified (its SHA-256 differs)"
    assert damage.file.endswith("artifact/model.safetensors")

    weights.unlink()
    damage = store.verify(ref)
    assert damage is not None and damage.describe().endswith("model.safetensors is missing")


def test_an_edit_that_keeps_size_and_time_is_found_when_asked(tmp_path: Path) -> None:
    store, ref = _committed(tmp_path, FILES)
    weights = store.path(ref) / "artifact" / "model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"y" * 1000)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert store.verify(ref) is None  # the cheap look: size and time as verified
    damage = store.verify(ref, deep=True)
    assert damage is not None and damage.problem == "was modified (its SHA-256 differs)"


def test_a_copied_stage_is_hashed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import quantbench.store as store_module

    _committed(tmp_path / "a", FILES)
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # new modification times
    copy = StageStore(tmp_path / "b" / "stages")
    ref = StageRef("quantize", "k6")
    for path in (copy.path(ref) / "artifact").iterdir():
        os.utime(path, ns=(1, 1))
    hashed: list[str] = []
    real = store_module.file_sha256

    def counted(path: Path) -> str:
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(store_module, "file_sha256", counted)
    assert copy.verify(ref) is None
    assert sorted(hashed) == ["config.json", "model.safetensors"]
    assert copy.verify(ref) is None
    assert len(hashed) == 2  # remembered in .verified.json


def test_a_cut_short_manifest_is_damage_and_discard_makes_the_stage_pending(
    tmp_path: Path,
) -> None:
    store, ref = _committed(tmp_path, FILES)
    manifest = store.path(ref) / MANIFEST
    manifest.write_bytes(manifest.read_bytes()[:40])
    damage = store.verify(ref)
    assert damage is not None
    assert damage.describe() == (
        "stages/quantize/k6/manifest.json is not valid JSON (cut short or edited)"
    )
    with pytest.raises(UserError, match=r"manifest\.json is damaged"):
        store.manifest(ref)
    store.discard(ref)
    assert not store.is_done(ref)
    assert [p.name for p in (tmp_path / "stages" / "quantize").iterdir()] == []


def test_a_stage_committed_before_file_lists_is_trusted(tmp_path: Path) -> None:
    store, ref = _committed(tmp_path, FILES)
    manifest = store.path(ref) / MANIFEST
    record = json.loads(manifest.read_text())
    del record[FILES_KEY]
    manifest.write_text(json.dumps(record))
    (store.path(ref) / "artifact" / "config.json").unlink()
    assert store.verify(ref) is None
