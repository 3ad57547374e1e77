"""Content-addressed stage storage: done means the manifest exists.

Each stage's output lives in `<root>/<stage>/<key>/`, where the key is a hash of everything
that determines the output (config slice, upstream keys, versions that matter). Work happens
in a private temporary folder next to it; `manifest.json` is written last and the folder is
renamed into place in one step, so a crash at any moment leaves either a complete stage or a
temporary folder that no later run trusts (it is swept on the next run).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from quantbench.errors import UserError

MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal inputs hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def content_key(payload: Mapping[str, Any]) -> str:
    """A 16-hex-digit key for the canonical JSON of `payload` (64 bits: collisions are moot)."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "w") as handle:
        json.dump(value, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class StageRef:
    stage: str
    key: str


class StageStore:
    """The stage folders of one output directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, ref: StageRef) -> Path:
        return self.root / ref.stage / ref.key

    def is_done(self, ref: StageRef) -> bool:
        return (self.path(ref) / MANIFEST).is_file()

    def manifest(self, ref: StageRef) -> dict[str, Any]:
        with open(self.path(ref) / MANIFEST) as handle:
            data: dict[str, Any] = json.load(handle)
        return data

    @contextlib.contextmanager
    def build(self, ref: StageRef) -> Iterator[Path]:
        """Yield a private folder to fill; `commit` it, or it is deleted on the way out."""
        parent = self.root / ref.stage
        parent.mkdir(parents=True, exist_ok=True)
        work = parent / f"{_TMP_PREFIX}{ref.key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        work.mkdir()
        try:
            yield work
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)

    def commit(self, ref: StageRef, work: Path, manifest: Mapping[str, Any]) -> Path:
        """Write the manifest last, then move the folder into place in one rename."""
        write_json_atomic(work / MANIFEST, {"stage": ref.stage, "key": ref.key, **manifest})
        final = self.path(ref)
        if final.exists():
            # Only a stage without a manifest can be here (a done stage is never rebuilt);
            # it is an interrupted leftover from an older layout and is not trusted.
            shutil.rmtree(final)
        os.rename(work, final)
        return final

    def sweep_stale(self) -> list[Path]:
        """Delete temporary folders left by killed runs; call only while holding the lock."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for stage_dir in self.root.iterdir():
            if not stage_dir.is_dir():
                continue
            for entry in stage_dir.iterdir():
                if entry.name.startswith(_TMP_PREFIX):
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
                    removed.append(entry)
                elif entry.is_dir() and not (entry / MANIFEST).exists():
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
        return removed


@contextlib.contextmanager
def exclusive(lock_path: Path, *, what: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold an OS file lock (released by the kernel even on SIGKILL) or refuse with a message."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=wait_s)
    except Timeout:
        raise UserError(
            f"another quantbench run is using {what}; wait for it to finish or use another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()


def ensure_writable_dir(path: Path) -> None:
    """Create `path` or fail with a user-facing message before any work is done."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f"{_TMP_PREFIX}probe-{uuid.uuid4().hex}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"output folder {path} is not writable ({exc.strerror}); choose another with --out"
        ) from None


def dir_bytes(path: Path, suffixes: tuple[str, ...] | None = None) -> int:
    """Total bytes of regular files under `path`, optionally only those with given suffixes."""
    total = 0
    for file in path.rglob("*"):
        if file.is_file() and (suffixes is None or file.suffix in suffixes):
            total += file.stat().st_size
    return total
