"""results.json on disk: saving it with the reports derived from it, and loading it back.

results.json names files of the study (artifacts, logs) relative to the study folder, so a
study folder copied, moved or synced elsewhere reads correctly there; `load_results` turns
them into locations on this machine (paths, or URLs for a study at a URL), and
`save_results` back into relative ones. Version 1 recorded absolute paths; it is migrated
here, on load, since what changed between the versions is how locations are written.

The records themselves are `results.py` (the schema, which does no I/O); the reports are
`report/`. This module sits above both: the pipeline and the command line call it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from quantbench.errors import UserError
from quantbench.remote import RemoteFolder, is_url
from quantbench.report.files import write_reports
from quantbench.results import SCHEMA_VERSION, StudyResults
from quantbench.store import write_json_atomic

RESULTS_FILE = "results.json"


def save_results(out: Path, results: StudyResults, model_cards: bool = True) -> list[Path]:
    """Write results.json, then every file derived from it (see `report.files`); the files
    written in `out` (model cards go into the artifacts). Paths are saved relative to `out`."""
    portable = portable_results(results, out)
    path = out / RESULTS_FILE
    write_json_atomic(path, portable.model_dump(mode="json"))
    written = write_reports(out, portable, model_cards=model_cards)
    return [path, *(p for p in written if p.parent == out)]


def _relocated(results: StudyResults, where: Callable[[str], str]) -> StudyResults:
    """`results` with every file location it records passed through `where`."""
    variants = [
        variant.model_copy(
            update={
                "artifact_path": where(variant.artifact_path) if variant.artifact_path else None,
                "log_path": where(variant.log_path) if variant.log_path else None,
            }
        )
        for variant in results.variants
    ]
    return results.model_copy(update={"variants": variants})


def portable_results(results: StudyResults, out: Path) -> StudyResults:
    """`results` as saved in the folder `out`: local paths relative to it (URLs as they are),
    and the study's own output folder recorded as `.` (wherever it is now)."""
    base = out.absolute()

    def relative(location: str) -> str:
        if is_url(location) or not Path(location).is_absolute():
            return location
        return Path(os.path.relpath(location, base)).as_posix()

    def here(config: dict[str, Any]) -> dict[str, Any]:
        if isinstance(config.get("out"), str) and not is_url(config["out"]):
            return {**config, "out": "."}
        return config

    provenance = results.provenance
    if isinstance(provenance.get("config"), dict):  # the config as run, copied into provenance
        provenance = {**provenance, "config": here(provenance["config"])}
    return _relocated(results, relative).model_copy(
        update={"config": here(results.config), "provenance": provenance}
    )


def _located(results: StudyResults, folder: str | Path) -> StudyResults:
    """`results` read from `folder` (a path or URL): relative locations made ones there."""

    def located(location: str) -> str:
        if is_url(location) or Path(location).is_absolute():
            return location
        if is_url(folder):
            return f"{str(folder).rstrip('/')}/{location}"
        return os.path.normpath(Path(folder).absolute() / location)

    return _relocated(results, located)


def _migrated_from_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 record with the absolute paths of the folder it was written in made
    relative to that folder (its `config.out`), so a copied old study reads its own files."""
    old_out = (data.get("config") or {}).get("out")
    if not isinstance(old_out, str) or is_url(old_out):
        return {**data, "schema_version": SCHEMA_VERSION}
    old = Path(old_out)

    def relative(location: Any) -> Any:
        if not isinstance(location, str) or is_url(location):
            return location
        path = Path(location)
        if path.is_absolute() and path.is_relative_to(old):
            return path.relative_to(old).as_posix()
        return location

    variants = [
        {
            **v,
            "artifact_path": relative(v.get("artifact_path")),
            "log_path": relative(v.get("log_path")),
        }
        if isinstance(v, dict)
        else v
        for v in data.get("variants") or []
    ]
    config = {**data["config"], "out": "."}
    return {**data, "schema_version": SCHEMA_VERSION, "variants": variants, "config": config}


def _with_study_groups(data: dict[str, Any]) -> dict[str, Any]:
    """Merged results written before variants recorded their `study` named it only as the
    part of the variant's name before its last '/' (`<study>/<variant>`): read it from there.
    A single study's variant names have no '/' (config names are checked)."""
    if not isinstance(data.get("variants"), list):
        return data
    variants = [
        {**v, "study": str(v["name"]).rsplit("/", 1)[0]}
        if isinstance(v, dict) and "study" not in v and "/" in str(v.get("name", ""))
        else v
        for v in data["variants"]
    ]
    return {**data, "variants": variants}


class DamagedResults(UserError):
    """A results.json that is cut short, or edited into something that is not a record."""

    def __init__(self, path: str, problem: str, folder: str | Path) -> None:
        super().__init__(
            f"{path} is damaged ({problem}); run the study again with --out {folder} to "
            "rebuild it: its finished stages are reused"
        )
        self.path = path
        self.problem = problem


def load_results(out: str | Path) -> StudyResults:
    """The saved results of a study: its output folder (path or URL) or a results.json;
    locations in it are made locations on this machine (see the module docstring)."""
    missing = f"no {RESULTS_FILE} in {out}; run `quantbench run --out {out}` first"
    folder: str | Path
    if is_url(out):
        remote = RemoteFolder(str(out))
        raw = remote.read_bytes(RESULTS_FILE)
        path = remote.url_of(RESULTS_FILE)
        folder = remote.url
    else:
        local = Path(out) / RESULTS_FILE if Path(out).is_dir() else Path(out)
        try:
            raw = local.read_bytes() if local.is_file() else None
        except OSError as exc:
            raise UserError(f"cannot read {local}: {exc.strerror}") from None
        path = str(local)
        folder = local.parent
    if raw is None:
        raise UserError(missing)
    try:
        data = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise DamagedResults(path, f"not valid JSON: {exc}", folder) from None
    if not isinstance(data, dict):
        raise DamagedResults(path, "not a JSON object", folder)
    version = data.get("schema_version")
    if version == 1:
        data = _migrated_from_v1(data)
    elif version != SCHEMA_VERSION:
        raise UserError(
            f"{path} has schema version {version}; this quantbench reads version {SCHEMA_VERSION}"
        )
    data = _with_study_groups(data)
    try:
        results = StudyResults.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the top level"
        count = exc.error_count()
        more = f" (and {count - 1} more problem{'s' if count > 2 else ''})" if count > 1 else ""
        raise DamagedResults(path, f"{where}: {first['msg']}{more}", folder) from None
    return _located(results, folder)
