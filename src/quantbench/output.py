"""A study's output folder: a local path, or an fsspec URL worked on through a local mirror.

With a path (`--out runs/a`), quantbench writes there directly; with the Ray executor every
node must see that path (a shared filesystem). With a URL (`--out s3://bucket/runs/a`),
quantbench works in a mirror under the cache folder (`<cache>/outputs/<hash of the URL>/`)
and the URL is the store of record: stages are uploaded as they are committed
(`store.StageStore`), and results.json, the reports and the worker logs when the study
ends. Workers open the URL with a mirror on their own node, so nodes share no folder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from quantbench.errors import UserError
from quantbench.models import cache_dir
from quantbench.remote import RemoteFolder, is_url
from quantbench.store import StageRef, StageStore
from quantbench.study_files import save_results

if TYPE_CHECKING:
    from quantbench.results import StudyResults

STAGES_DIR = "stages"
LOGS_DIR = "logs"


@dataclass(frozen=True)
class OutputFolder:
    location: str
    """As given: a path or a URL; what workers receive to open the same folder."""
    local: Path
    """Where quantbench writes: the folder itself, or the URL's mirror."""
    remote: RemoteFolder | None = None

    @classmethod
    def open(cls, location: str | Path) -> OutputFolder:
        if is_url(location):
            url = str(location).rstrip("/")
            digest = hashlib.sha256(url.encode()).hexdigest()[:16]
            return cls(url, cache_dir() / "outputs" / digest, RemoteFolder(url))
        local = Path(location).expanduser().absolute()
        return cls(str(local), local)

    def __str__(self) -> str:
        return self.location

    def child(self, name: str) -> str:
        """Where something inside the folder is (a file for the user, or one model's study
        inside a study of several): a path or a URL."""
        return self.remote.url_of(name) if self.remote else str(self.local / name)

    def stages(self) -> StageStore:
        remote = self.remote.child(STAGES_DIR) if self.remote else None
        return StageStore(self.local / STAGES_DIR, remote)

    def check_stages(self, results: StudyResults) -> None:
        """Refuse, naming the first damaged file, when a stage the saved results came from
        no longer matches its manifest (artifacts, calibration samples, corpus); the
        results themselves are intact, so a report built from them stands."""

        refs: dict[StageRef, None] = {}
        for variant in results.variants:
            refs |= {StageRef(stage, key): None for stage, key in variant.stage_keys.items()}
            if variant.metrics.perplexity is not None:
                refs[StageRef("corpus", variant.metrics.perplexity.corpus_key)] = None
        store = self.stages()
        damaged = [d for d in map(store.verify, refs) if d is not None]
        if damaged:
            more = f" (and {len(damaged) - 1} more damaged stage(s))" if len(damaged) > 1 else ""
            raise UserError(
                f"{self.child(damaged[0].file)} {damaged[0].problem}{more}; run the study "
                f"again with --out {self} to recompute it"
            )

    def save(self, results: StudyResults, model_cards: bool = True, logs: bool = False) -> None:
        """Write results.json and the reports (`study_files.save_results`) and, with a URL,
        upload them (and the worker logs, with `logs`)."""

        written = save_results(self.local, results, model_cards=model_cards)
        self.publish([p.name for p in written] + ([LOGS_DIR] if logs else []))

    def publish(self, names: list[str]) -> None:
        """Upload top-level files and folders of the mirror (each file moved into place
        whole). results.json goes last, so a reader that finds it finds the reports too."""
        if self.remote is None:
            return
        ordered = sorted(names, key=lambda n: n == "results.json")
        for name in ordered:
            path = self.local / name
            if path.is_dir():
                for file in sorted(p for p in path.rglob("*") if p.is_file()):
                    self.remote.upload_file(file, *file.relative_to(self.local).parts)
            elif path.is_file():
                self.remote.upload_file(path, name)
