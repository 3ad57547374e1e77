"""Content-addressed stage storage: done means the manifest exists.

Each stage's output lives in `<root>/<stage>/<key>/`, where the key is a hash of everything
that determines the output (config slice, upstream keys, versions that matter). Work happens
in a private temporary folder next to it; `manifest.json` is written last and the folder is
renamed into place in one step, so a crash at any moment leaves either a complete stage or a
temporary folder that no later run trusts (it is swept on the next run).

When the output folder is a URL, the local folder is a mirror (in the cache folder) and
the URL is the store of record: a committed stage is uploaded (`remote.py`: files of the
attempt first, the manifest last), a stage done remotely counts as done everywhere, and it is
downloaded into the mirror only when its files are read (`path`). Workers on other nodes
open the same URL with a mirror of their own, so no folder has to be shared.

A manifest lists every file of its stage with its size and SHA-256, taken at commit, so a
stage folder damaged later (a file deleted, truncated or edited by hand, a manifest cut
short) is found by `verify` and recomputed instead of trusted. Sizes are checked on every
look; contents are hashed when asked, or when a file's size or modification time is not the
one last verified (`.verified.json` beside the manifest remembers them, so a study copied
without its timestamps is hashed once, not on every run).
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
from quantbench.remote import RemoteFolder

MANIFEST = "manifest.json"
VERIFIED = ".verified.json"
"""Per stage folder: (size, mtime_ns) of each file when its hash last matched the manifest."""
FILES_KEY = "files"
"""The manifest's list of the stage's files: relative path → {size (bytes), sha256}."""
STORE_FIELDS = frozenset({"stage", "key", FILES_KEY, "attempt"})
"""The manifest fields the store writes itself (`commit`); the rest is the stage's record."""
_TMP_PREFIX = ".tmp-"
_PROBE_PREFIX = f"{_TMP_PREFIX}probe-"
"""A second run's writability probe: taken before its lock, so never swept."""
_PARTIAL_PREFIX = ".partial-"
"""A stage's progress kept across kills (`partial`): never swept, removed on commit."""
_HASH_CHUNK = 1 << 22


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


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


@dataclass(frozen=True)
class StageRef:
    stage: str
    key: str


@dataclass(frozen=True)
class Damage:
    """A done stage whose folder no longer matches its manifest."""

    ref: StageRef
    file: str
    """The damaged file, from the stage store's folder on (`stages/quantize/<key>/x`)."""
    problem: str

    def describe(self) -> str:
        return f"{self.file} {self.problem}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(folder: Path) -> dict[str, dict[str, Any]]:
    """Size (bytes) and SHA-256 of every file under `folder` but the manifest and the
    verification memo, by relative POSIX path."""
    skip = {MANIFEST, VERIFIED}
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative not in skip:
            files[relative] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    return files


def _stamps(folder: Path, names: list[str]) -> dict[str, list[int]]:
    stamps = {}
    for name in names:
        stat = (folder / name).stat()
        stamps[name] = [stat.st_size, stat.st_mtime_ns]
    return stamps


class StageStore:
    """The stage folders of one output directory, optionally backed by a URL."""

    def __init__(self, root: Path, remote: RemoteFolder | None = None) -> None:
        self.root = root
        self.remote = remote

    def _local(self, ref: StageRef) -> Path:
        return self.root / ref.stage / ref.key

    def path(self, ref: StageRef, fetch: bool = True) -> Path:
        """The stage's local folder; a stage done only at the URL is downloaded first
        (unless `fetch` is False: a caller that may not read it at all)."""
        local = self._local(ref)
        if fetch and self.remote is not None and not (local / MANIFEST).is_file():
            self._fetch(ref)
        return local

    def is_done(self, ref: StageRef) -> bool:
        if (self._local(ref) / MANIFEST).is_file():
            return True
        return self.remote is not None and self.remote.exists(ref.stage, ref.key, MANIFEST)

    def manifest(self, ref: StageRef) -> dict[str, Any]:
        local = self._local(ref) / MANIFEST
        if local.is_file() or self.remote is None:
            try:
                with open(local) as handle:
                    data: dict[str, Any] = json.load(handle)
            except (ValueError, UnicodeDecodeError) as exc:
                raise UserError(
                    f"{local} is damaged ({exc}); `quantbench run` recomputes that stage"
                ) from None
            return data
        remote: dict[str, Any] | None = self.remote.read_json(ref.stage, ref.key, MANIFEST)
        if remote is None:
            raise FileNotFoundError(f"{self.remote.url_of(ref.stage, ref.key)} is not done")
        return remote

    def location(self, ref: StageRef, *parts: str) -> str:
        """Where a done stage's file lives for a reader outside quantbench: the local path,
        or its URL (inside the attempt folder the manifest names)."""
        if self.remote is None:
            return str(self._local(ref).joinpath(*parts).resolve())
        attempt = self.manifest(ref)["attempt"]
        return self.remote.url_of(ref.stage, ref.key, attempt, *parts)

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

    def partial(self, ref: StageRef, create: bool = True) -> Path:
        """A folder where a long stage keeps finished pieces of its work (scored task items)
        so that a killed run resumes there. It is named by the stage's key, so only a run
        with the very same inputs and settings reads it, and it goes when the stage commits.
        Whatever writes into it writes each file atomically."""
        folder = self.root / ref.stage / f"{_PARTIAL_PREFIX}{ref.key}"
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        return folder

    def manifests(self, stage: str) -> Iterator[dict[str, Any]]:
        """The manifests of every finished local stage of kind `stage` (any key)."""
        folder = self.root / stage
        if not folder.is_dir():
            return
        for path in sorted(folder.glob(f"*/{MANIFEST}")):
            try:
                yield json.loads(path.read_text())
            except (OSError, ValueError):
                continue

    def commit(self, ref: StageRef, work: Path, manifest: Mapping[str, Any]) -> Path:
        """Write the manifest last, then move the folder into place in one rename (and, with
        a URL, upload it: the attempt's files first, the manifest naming them last).

        The manifest lists every file's size and SHA-256, for `verify`. Files added after
        commit (the model card a report writes into an artifact) are not listed."""
        clash = STORE_FIELDS & manifest.keys()
        if clash:
            raise ValueError(f"a stage's record may not set the store's fields {sorted(clash)}")
        final = self._commit(ref, work, manifest)
        partial = self.partial(ref, create=False)
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
        return final

    def _commit(self, ref: StageRef, work: Path, manifest: Mapping[str, Any]) -> Path:
        files = list_files(work)
        record = {"stage": ref.stage, "key": ref.key, **manifest, FILES_KEY: files}
        if self.remote is not None:
            attempt = self._upload(ref, work, record)
            if attempt is None:  # another worker committed this stage first: use theirs
                shutil.rmtree(work, ignore_errors=True)
                return self.path(ref)
            record["attempt"] = attempt
        write_json_atomic(work / MANIFEST, record)
        write_json_atomic(work / VERIFIED, _stamps(work, list(files)))
        final = self._local(ref)
        with self._mirror_lock(ref):
            if (final / MANIFEST).is_file():
                # A mirror shared by several processes: another one fetched the stage this
                # one just uploaded; keep theirs (it is the same attempt) and never delete a
                # complete folder someone may be reading.
                shutil.rmtree(work, ignore_errors=True)
                return final
            if final.exists():
                shutil.rmtree(final)  # no manifest: an interrupted leftover, never trusted
            os.rename(work, final)
        return final

    def _mirror_lock(self, ref: StageRef) -> contextlib.AbstractContextManager[object]:
        """Serializes placing one stage's folder among the processes sharing a mirror (a
        URL's workers on one node); a plain folder needs no lock (keys are unique per run)."""
        if self.remote is None:
            return contextlib.nullcontext()
        parent = self.root / ref.stage
        parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(parent / f".lock-{ref.key}"))

    def _upload(self, ref: StageRef, work: Path, record: dict[str, Any]) -> str | None:
        """Upload `work` as a new attempt and publish it; None when another worker's
        manifest is (or, racing with this one, ended up) the stage's."""
        assert self.remote is not None
        if self.remote.exists(ref.stage, ref.key, MANIFEST):
            return None
        attempt = f"attempt-{uuid.uuid4().hex[:12]}"
        self.remote.upload_folder(work, ref.stage, ref.key, attempt, skip=(MANIFEST,))
        self.remote.write_json({**record, "attempt": attempt}, ref.stage, ref.key, MANIFEST)
        published = self.remote.read_json(ref.stage, ref.key, MANIFEST)
        return attempt if published is None or published.get("attempt") == attempt else None

    def _fetch(self, ref: StageRef) -> None:
        """Download a stage done at the URL into the mirror (temporary folder, then rename)."""
        assert self.remote is not None
        record = self.remote.read_json(ref.stage, ref.key, MANIFEST)
        if record is None:
            return
        parent = self.root / ref.stage
        parent.mkdir(parents=True, exist_ok=True)
        work = parent / f"{_TMP_PREFIX}fetch-{ref.key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        final = self._local(ref)
        with self._mirror_lock(ref):  # one download per node; the others wait for it
            if (final / MANIFEST).is_file():
                return
            try:
                self.remote.download_folder(work, ref.stage, ref.key, record["attempt"])
                write_json_atomic(work / MANIFEST, record)
                if final.exists():
                    shutil.rmtree(final)  # no manifest: an interrupted leftover
                os.rename(work, final)
            finally:
                if work.exists():
                    shutil.rmtree(work, ignore_errors=True)

    def verify(self, ref: StageRef, deep: bool = False) -> Damage | None:
        """The first file of a done stage's local folder that does not match its manifest
        (None: it matches, or nothing of it is here, or it predates file lists).

        Sizes are always compared; contents are hashed with `deep`, or when a file's size
        or modification time differs from the last verification's (a copied study, a file
        edited in place). A matching hash is remembered, so the next look is cheap."""
        folder = self._local(ref)
        manifest_path = folder / MANIFEST
        where = f"{self.root.name}/{ref.stage}/{ref.key}"
        if not manifest_path.is_file():
            return None
        try:
            manifest = json.loads(manifest_path.read_bytes())
            files = manifest.get(FILES_KEY) if isinstance(manifest, dict) else None
        except (ValueError, UnicodeDecodeError):
            return Damage(ref, f"{where}/{MANIFEST}", "is not valid JSON (cut short or edited)")
        if not isinstance(manifest, dict) or manifest.get("key", ref.key) != ref.key:
            return Damage(ref, f"{where}/{MANIFEST}", "is not this stage's manifest")
        if files is None:
            return None  # committed before manifests listed files: nothing to compare
        verified = self._verified(folder)
        hashed: list[str] = []
        for name, expected in files.items():
            path = folder / name
            if not path.is_file():
                return Damage(ref, f"{where}/{name}", "is missing")
            stat = path.stat()
            if stat.st_size != expected["size"]:
                return Damage(
                    ref,
                    f"{where}/{name}",
                    f"has {stat.st_size:,} bytes where its manifest recorded {expected['size']:,}",
                )
            if deep or verified.get(name) != [stat.st_size, stat.st_mtime_ns]:
                if file_sha256(path) != expected["sha256"]:
                    return Damage(ref, f"{where}/{name}", "was modified (its SHA-256 differs)")
                hashed.append(name)
        if hashed:
            with contextlib.suppress(OSError):  # a read-only study only costs speed
                write_json_atomic(folder / VERIFIED, {**verified, **_stamps(folder, hashed)})
        return None

    @staticmethod
    def _verified(folder: Path) -> dict[str, list[int]]:
        try:
            data = json.loads((folder / VERIFIED).read_bytes())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def discard(self, ref: StageRef) -> None:
        """Remove a damaged stage's local folder so it counts as not done. It is renamed to
        a temporary name first: a kill halfway through leaves a folder no run trusts. With a
        URL only the mirror's copy goes; the store of record is fetched again."""
        folder = self._local(ref)
        if not folder.exists():
            return
        doomed = folder.with_name(f"{_TMP_PREFIX}damaged-{ref.key}-{uuid.uuid4().hex[:8]}")
        os.rename(folder, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

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
                elif entry.name.startswith(_PARTIAL_PREFIX):
                    continue
                elif entry.is_dir() and not (entry / MANIFEST).exists():
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
        return removed


def sweep_temporary_files(folder: Path, subfolders: tuple[str, ...] = ()) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed run left in the study folder
    (`.tmp-<name>.<hex>` beside results.json and the reports) and in each `subfolders` entry
    and its children (model cards, artifact links); call only while holding the lock."""
    parents = [folder]
    for name in subfolders:
        parents += [folder / name, *(p for p in (folder / name).glob("*") if p.is_dir())]
    removed: list[Path] = []
    for parent in parents:
        if not parent.is_dir():
            continue
        for entry in parent.iterdir():
            if entry.name.startswith(_TMP_PREFIX) and not entry.name.startswith(_PROBE_PREFIX):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
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
        probe = path / f"{_PROBE_PREFIX}{uuid.uuid4().hex}"
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
