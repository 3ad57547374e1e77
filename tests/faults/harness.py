"""The fault-injection harness: run quantbench as a user would, with `preload/sitecustomize.py`
in every process it starts, and check what a fault left behind.

A study is first run uninterrupted with a trace of every write-side file operation in its
folder (`preload/sitecustomize.py` says which). That trace is the map of kill points: each
stage's operations, numbered, with their times. A kill point is one operation of one stage
(drawn with a seeded `random.Random`), an optional delay drawn inside the gap to the
stage's next operation (so the kill lands between two writes, often in the middle of the
stage's computation), and whom to kill. After a fault the folder must hold nothing that a
later run would trust wrongly (`untrusted_problems`), and a clean rerun must end with the
reference's results (`comparable`: every key, every figure; timings and provenance aside).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PRELOAD = Path(__file__).resolve().parent / "preload"
MAX_DELAY_S = 2.0
"""A delayed kill waits at most this long after its operation (the gap to the stage's next
operation bounds it too)."""

StageId = tuple[str, str | None]
"""(stage kind, stage key); the report has no key."""


@dataclass(frozen=True)
class TracedStage:
    """One stage's write operations in the uninterrupted run."""

    kind: str
    key: str | None
    role: str
    """'driver' (calibration, corpus, report) or 'worker' (quantize, metrics)."""
    times: tuple[float, ...]
    """Seconds from the stage's first operation to each of its operations."""
    events: tuple[str, ...]
    paths: tuple[str, ...]


@dataclass(frozen=True)
class KillPoint:
    id: str
    kind: str
    key: str | None
    n: int
    delay_s: float
    action: str
    label: str
    """Who the stage belongs to, for the log: a variant's name, or the stage kind."""
    at: str = ""
    """The operation the point follows in the reference run (event and path)."""

    def plan(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if k not in ("label", "at")}

    def __str__(self) -> str:
        delay = f" + {self.delay_s:.3f} s" if self.delay_s else ""
        return (
            f"{self.id}: {self.action} at operation {self.n} of {self.kind} "
            f"({self.label}){delay} [{self.at}]"
        )


def read_trace(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def traced_stages(trace: Sequence[Mapping[str, Any]]) -> dict[StageId, TracedStage]:
    """Each stage's operations, in the process that first worked on it."""
    grouped: dict[StageId, list[Mapping[str, Any]]] = {}
    owner: dict[StageId, int] = {}
    for row in trace:
        stage = (str(row["kind"]), row["key"])
        if owner.setdefault(stage, int(row["pid"])) == int(row["pid"]):
            grouped.setdefault(stage, []).append(row)
    return {
        stage: TracedStage(
            kind=stage[0],
            key=stage[1],
            role=str(rows[0]["role"]),
            times=tuple(float(r["t"]) - float(rows[0]["t"]) for r in rows),
            events=tuple(str(r["event"]) for r in rows),
            paths=tuple(str(r["path"]) for r in rows),
        )
        for stage, rows in grouped.items()
    }


def draw_point(
    rng: random.Random,
    stage: TracedStage,
    action: str,
    point_id: str,
    label: str,
    within: Callable[[str], bool] = lambda path: True,
) -> KillPoint:
    """A kill point inside `stage`: one of its operations (those on a path `within` accepts),
    then maybe a delay within the gap to the next one (half the points), so kills land both
    on and between writes."""
    count = len(stage.times)
    n = rng.choice([i + 1 for i, path in enumerate(stage.paths) if within(path)])
    gap = stage.times[n] - stage.times[n - 1] if n < count else 0.0
    delay = round(rng.uniform(0.0, min(gap, MAX_DELAY_S)), 3) if rng.random() < 0.5 else 0.0
    return KillPoint(
        id=point_id,
        kind=stage.kind,
        key=stage.key,
        n=n,
        delay_s=delay,
        action=action,
        label=label,
        at=f"{stage.events[n - 1]} {stage.paths[n - 1]}",
    )


def fault_environment(
    out: Path,
    fault_dir: Path,
    points: Iterable[KillPoint] = (),
    trace: Path | None = None,
) -> dict[str, str]:
    paths = [str(PRELOAD), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {
        **os.environ,
        "COLUMNS": "200",
        "PYTHONPATH": os.pathsep.join(paths),
        "QB_FAULT_OUT": str(out),
        "QB_FAULT_DIR": str(fault_dir),
        "QB_FAULT_PLAN": json.dumps([p.plan() for p in points]),
    }
    env.pop("QB_FAULT_DRIVER_PID", None)
    if trace is not None:
        env["QB_FAULT_TRACE"] = str(trace)
    return env


def run_quantbench(
    args: Sequence[str],
    out: Path,
    fault_dir: Path,
    points: Iterable[KillPoint] = (),
    trace: Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """`python -m quantbench ARGS --out OUT` with the fault preload (inert without points)."""
    fault_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "quantbench", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=fault_environment(out, fault_dir, points, trace),
    )


def carried_out(fault_dir: Path) -> dict[str, dict[str, Any]]:
    """The points whose action happened: id → the operation they fired at (pid, role, path)
    and how the action came (at the operation, after the delay, at the next operation)."""
    done = {}
    for marker in sorted(fault_dir.glob("*.done")):
        point_id = marker.name.removesuffix(".done")
        fired = fault_dir / f"{point_id}.fired"
        done[point_id] = {
            **json.loads(fired.read_text() or "{}"),
            **json.loads(marker.read_text().splitlines()[0]),
        }
    return done


# ------------------------------------------------------------------ study folders


def copy_study(reference: Path, dest: Path, drop: Iterable[StageId]) -> None:
    """A copy of the reference study's stages without `drop` (so a run recomputes exactly
    those), and without results and reports (so it writes them again)."""
    shutil.copytree(reference / "stages", dest / "stages")
    for kind, key in drop:
        shutil.rmtree(dest / "stages" / kind / str(key))


MODEL_CARD = "README.md"
"""Written by the report into committed quantize stages: not part of the stage."""


def stage_contents(folder: Path) -> dict[str, Any]:
    """What a committed stage holds, comparable across runs: JSON parsed (timings masked;
    a speed stage's figures are all timings), .npz files as their arrays' hashes (the
    archive's timestamps differ), others' bytes hashed; the report's model card left out."""
    timed = folder.parent.name in TIMED
    contents: dict[str, Any] = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = file.relative_to(folder).as_posix()
        if file.name == MODEL_CARD or file.name.startswith("."):
            continue  # the report's model card; the store's own bookkeeping
        if file.suffix == ".json":
            contents[name] = comparable(json.loads(file.read_text()), timed=timed)
        elif file.suffix == ".npz":
            with zipfile.ZipFile(file) as archive:
                contents[name] = {
                    member: hashlib.sha256(archive.read(member)).hexdigest()
                    for member in sorted(archive.namelist())
                }
        else:
            contents[name] = hashlib.sha256(file.read_bytes()).hexdigest()
    return contents


def committed_stages(out: Path) -> dict[StageId, Path]:
    """Stage folders a run trusts: `stages/<kind>/<key>/` with a manifest."""
    found: dict[StageId, Path] = {}
    for manifest in sorted((out / "stages").glob("*/*/manifest.json")):
        folder = manifest.parent
        if not folder.name.startswith("."):
            found[(folder.parent.name, folder.name)] = folder
    return found


def untrusted_problems(out: Path, reference: Mapping[StageId, Mapping[str, Any]]) -> list[str]:
    """Every committed stage in `out` must be one the reference has, with the same contents;
    results.json, when present, must be whole JSON. Unfinished folders are allowed (the next
    run sweeps them; `leftovers` lists them)."""
    problems = []
    for stage, folder in committed_stages(out).items():
        if stage not in reference:
            problems.append(f"{stage}: committed, but the uninterrupted run has no such stage")
            continue
        try:
            got = stage_contents(folder)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            problems.append(f"{stage}: committed but unreadable ({exc})")
            continue
        expected = reference[stage]
        if set(got) != set(expected):
            problems.append(f"{stage}: files {sorted(got)} instead of {sorted(expected)}")
        else:
            differ = [name for name in got if got[name] != expected[name]]
            if differ:
                problems.append(f"{stage}: {', '.join(differ)} differ from the uninterrupted run")
    results = out / "results.json"
    if results.exists():
        try:
            json.loads(results.read_text())
        except ValueError as exc:
            problems.append(f"results.json is not whole JSON ({exc})")
    return problems


def leftovers(out: Path) -> list[str]:
    """Unfinished stage folders and temporary files of atomic writes (results, reports, model
    cards, artifact links): a killed run's, which the next run must sweep."""
    patterns = ("stages/*/.tmp-*", ".tmp-*", "artifacts/.tmp-*", "artifacts/*/.tmp-*")
    return sorted(str(p.relative_to(out)) for pattern in patterns for p in out.glob(pattern))


VOLATILE = frozenset(
    {
        "created_at",
        "provenance",
        "wall_s",
        "phases",
        "peak_rss_bytes",
        "peak_anonymous_bytes",
        "load_s",
        "rss_loaded_bytes",
        "rss_peak_generating_bytes",
        "gpu_peak_bytes",
        "torch_threads",
        "cores",  # where a stage's threads ran: the scheduler's share, none on Ray
        "cores_raised_to",
        "attempt",
        "method_detail",  # names the memory available when the stage ran
        "files",  # a manifest's file list: sizes and hashes (.npz archives hold timestamps)
        "resumed_items",  # how many task items a run took from a killed run's saved chunks
    }
)
"""Timings, memory peaks and provenance: they differ between any two runs (so does every key
ending in `_s`: seconds, or a rate per second)."""
TIMED = frozenset({"speed"})
"""Subtrees that are all timings: their keys are compared, not their values."""


def comparable(value: Any, out: Path | None = None, timed: bool = False) -> Any:
    """`value` with volatile figures masked and the study folder's path written `<out>`, so
    two runs of one study compare equal exactly when every key and every figure agrees."""
    if isinstance(value, dict):
        return {
            k: "<volatile>"
            if k in VOLATILE or k.endswith("_s")
            else comparable(v, out, timed or (k in TIMED and isinstance(v, dict)))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [comparable(v, out, timed) for v in value]
    if timed and not isinstance(value, str | bool) and value is not None:
        return "<timed>"
    if isinstance(value, str) and out is not None:
        return value.replace(str(out), "<out>")
    return value


def results_of(out: Path) -> Any:
    return comparable(json.loads((out / "results.json").read_text()), out)


def differences(got: Any, expected: Any, where: str = "") -> list[str]:
    """Where two comparable results differ (keys and figures), at most a few lines."""
    if isinstance(got, dict) and isinstance(expected, dict):
        lines = [f"{where}/{k}: missing" for k in expected if k not in got]
        lines += [f"{where}/{k}: unexpected" for k in got if k not in expected]
        for k in got.keys() & expected.keys():
            lines += differences(got[k], expected[k], f"{where}/{k}")
        return lines
    if isinstance(got, list) and isinstance(expected, list) and len(got) == len(expected):
        return [
            line
            for i, (g, e) in enumerate(zip(got, expected, strict=True))
            for line in differences(g, e, f"{where}[{i}]")
        ]
    return [] if got == expected else [f"{where}: {str(got)[:120]} != {str(expected)[:120]}"]
