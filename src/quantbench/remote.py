"""Output folders at fsspec URLs (`s3://`, `gs://`, `abfs://`, `file://`, ...).

Object stores have no rename and no atomic folder; what they do guarantee is that one
object's upload is all or nothing. So quantbench writes every file that readers poll
(a stage's manifest, results.json) as a temporary object moved into place, and uploads a
stage's files into a folder of their own attempt (`<stage>/<key>/<attempt>/`) before the
manifest that names the attempt (`<stage>/<key>/manifest.json`). Two workers finishing the
same stage at once each upload a complete attempt and the last manifest wins; no reader ever
sees a half-uploaded stage or files of two attempts mixed.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from quantbench.errors import UserError

URL_MARK = "://"


def is_url(location: str | Path) -> bool:
    """Whether `location` names an fsspec URL rather than a local folder."""
    return isinstance(location, str) and URL_MARK in location


class RemoteFolder:
    """A folder at an fsspec URL, with the few operations the stage store needs."""

    def __init__(self, url: str) -> None:
        import fsspec.core

        self.url = url.rstrip("/")
        try:
            self.fs, self.base = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as exc:
            raise UserError(f"cannot open {self.url} through fsspec: {exc}") from None
        self.base = self.base.rstrip("/")

    def child(self, *parts: str) -> RemoteFolder:
        return RemoteFolder("/".join([self.url, *parts]))

    def _path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def url_of(self, *parts: str) -> str:
        return "/".join([self.url, *parts])

    def exists(self, *parts: str) -> bool:
        path = self._path(*parts)
        self.fs.invalidate_cache(path)
        return bool(self.fs.exists(path))

    def read_bytes(self, *parts: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        path = self._path(*parts)
        self.fs.invalidate_cache(path)
        try:
            data: bytes = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        return data

    def read_json(self, *parts: str) -> Any:
        data = self.read_bytes(*parts)
        return None if data is None else json.loads(data)

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Upload to a temporary name, then move into place: readers see all or nothing."""
        final = self._path(*parts)
        temporary = f"{final}.tmp-{uuid.uuid4().hex}"
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(temporary, data)
        self.fs.mv(temporary, final)

    def write_json(self, value: Any, *parts: str) -> None:
        text = json.dumps(value, indent=2, default=str) + "\n"
        self.write_bytes(text.encode(), *parts)

    def upload_file(self, local: Path, *parts: str) -> None:
        """Upload one local file (a temporary object moved into place)."""
        final = self._path(*parts)
        temporary = f"{final}.tmp-{uuid.uuid4().hex}"
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(str(local), temporary)
        self.fs.mv(temporary, final)

    def upload_folder(self, local: Path, *parts: str, skip: tuple[str, ...] = ()) -> int:
        """Upload every file under `local` (except top-level names in `skip`); bytes sent."""
        sent = 0
        for file in sorted(local.rglob("*")):
            relative = file.relative_to(local)
            if not file.is_file() or relative.parts[0] in skip:
                continue
            remote = self._path(*parts, *relative.parts)
            self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(file), remote)
            sent += file.stat().st_size
        return sent

    def copy_folder(self, source: tuple[str, ...], dest: tuple[str, ...]) -> int:
        """Copy every object under `source` to the same relative names under `dest`, inside
        the store (object stores copy server-side: nothing passes through this machine);
        objects copied."""
        prefix = self._path(*source)
        self.fs.invalidate_cache(prefix)
        copied = 0
        for path in sorted(self.fs.find(prefix)):
            target = self._path(*dest, path[len(prefix) :].lstrip("/"))
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self.fs.copy(path, target)
            copied += 1
        return copied

    def remove_folder(self, *parts: str) -> None:
        """Delete every object under `parts` (nothing when there is none)."""
        path = self._path(*parts)
        self.fs.invalidate_cache(path)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def download_folder(self, dest: Path, *parts: str) -> int:
        """Download every object under `parts` into `dest`; bytes received."""
        prefix = self._path(*parts)
        self.fs.invalidate_cache(prefix)
        received = 0
        for remote in sorted(self.fs.find(prefix)):
            relative = remote[len(prefix) :].lstrip("/")
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(target))
            received += target.stat().st_size
        return received
