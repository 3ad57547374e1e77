"""Fault injection: SIGKILL the driver or a worker inside every stage kind, fill the disk,
start a second run on the same folder; after each fault the folder holds nothing a later run
would trust wrongly, and a clean rerun ends with the uninterrupted run's results.

How the kill points are found and drawn is in `faults/harness.py`; the hook that carries
them out lives in `faults/preload/sitecustomize.py` (test code: the product has none). Every
round starts from a copy of the uninterrupted study without the stages it targets, so a run
recomputes exactly those and the suite stays within a few minutes. Points are drawn with a
seeded generator (QUANTBENCH_FAULT_SEED, default below) and printed, so a failure names the
points and reruns with the same ones.
"""

from __future__ import annotations

import errno
import gzip
import io
import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import VOCAB, process_gone
from faults.harness import (
    KillPoint,
    StageId,
    TracedStage,
    carried_out,
    committed_stages,
    copy_study,
    differences,
    draw_point,
    fault_environment,
    leftovers,
    read_trace,
    results_of,
    run_quantbench,
    stage_contents,
    traced_stages,
    untrusted_problems,
)

SEED = int(os.environ.get("QUANTBENCH_FAULT_SEED", "20261203"))
SCHEMES: list[object] = [
    "bf16",
    "fp8-dynamic",
    "fp16",
    {"scheme": "w4a16-gptq", "group_size": 32},
]
BASELINE = "bf16"
EVAL_KINDS = ("size", "scores", "perplexity", "divergence", "generations", "speed", "tasks.gsm8k")
READS_FROM_BASELINE = {
    "scores": {"scores"},
    "perplexity": {"scores"},
    "divergence": {"scores"},
    "generations": {"generations"},
    "tasks.gsm8k": {"tasks.gsm8k"},
}
"""The baseline's stages each metric reads (`baseline_inputs` of the metrics)."""
CHAINS = 2
MIXED = 3


def _evaluation(task_data: Path, prompts: Path) -> dict[str, object]:
    return {
        "metrics": ["size", "perplexity", "divergence", "generations", "speed", "tasks"],
        "corpus": {
            "window": 64,
            "stride": 64,
            "max_tokens": 192,
            "top_k": VOCAB,
            "exact_check_tokens": 16,
        },
        "speed": {
            "prompt_tokens": 8,
            "output_tokens": 2,
            "batch_sizes": [1],
            "repeats": 1,
            "warmup": 0,
        },
        "generations": {"max_new_tokens": 4, "prompts": str(prompts)},
        "tasks": {
            "names": ["gsm8k"],
            "data_dir": str(task_data),
            "limit": 2,
            "num_fewshot": 0,
            "max_gen_tokens": 4,
        },
    }


@dataclass
class Round:
    """Faulted runs one after the other on one folder (each the rerun of the one before),
    then a clean rerun that must finish with the uninterrupted run's results."""

    name: str
    drop: list[StageId]
    """The stages removed from the copy of the uninterrupted study: what the runs recompute."""
    runs: list[list[KillPoint]]
    run_args: list[str] = field(default_factory=list)
    concurrent_at: str | None = None
    """A pause point: while a run is held there, a second `run` on the folder is tried."""

    @property
    def points(self) -> list[KillPoint]:
        return [p for run in self.runs for p in run]

    def kills(self) -> list[KillPoint]:
        return [p for p in self.points if p.action != "pause"]


@dataclass
class FaultStudy:
    """The uninterrupted run every round is measured against, and the rounds' plan."""

    root: Path
    config: Path
    reference: Path
    stages: dict[StageId, TracedStage]
    labels: dict[StageId, str]
    """Stage → the variant it belongs to (or its kind, for the driver's stages)."""
    contents: dict[StageId, Any]
    results: Any
    rounds: dict[str, Round] = field(default_factory=dict)

    def stage(self, kind: str, variant: str | None = None) -> StageId:
        (found,) = [s for s in self.stages if s[0] == kind and self.labels[s] == (variant or kind)]
        return found

    def variants(self) -> list[str]:
        return [self.labels[s] for s in self.stages if s[0] == "quantize"]

    def point(
        self, rng: random.Random, name: str, kind: str, variant: str | None, action: str
    ) -> KillPoint:
        stage = self.stages[self.stage(kind, variant)]
        # The report's own files, not the model cards: a run with a failed variant writes
        # fewer cards than the uninterrupted run, and a point past them would never act.
        within = (lambda path: "/" not in path) if kind == "report" else (lambda path: True)
        return draw_point(rng, stage, action, name, variant or kind, within)


def _write_inputs(root: Path) -> tuple[Path, Path]:
    """Two gsm8k rows of hand-written arithmetic (the shared/data layout) and two prompts."""
    rows = [
        {"question": f"Tom has {n} apples and buys 2 more. How many?", "answer": f"#### {n + 2}"}
        for n in range(1, 5)
    ]
    data = root / "task-data" / "gsm8k"
    data.mkdir(parents=True)
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    text = "".join(json.dumps(r) + "\n" for r in rows[2:])
    (data / "train.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"id": "capital", "prompt": "What is the capital of France?"})
        + "\n"
        + json.dumps({"id": "count", "prompt": "Count from one to five."})
        + "\n"
    )
    return root / "task-data", prompts


def make_fault_study(
    root: Path, model: str, schemes: list[object], timeout: float, chains: int, mixed: int
) -> FaultStudy:
    task_data, prompts = _write_inputs(root)
    config = root / "study.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": str(model),
                "schemes": schemes,
                "calibration": {"num_samples": 8, "seq_len": 64},
                "evaluation": _evaluation(task_data, prompts),
                # Figures are compared exactly with a rerun's, so every stage computes with
                # the same thread count in both: one stage at a time, every core.
                "execution": {"max_parallel": 1},
            }
        )
    )
    reference = root / "reference" / "out"
    trace = root / "reference.trace"
    result = run_quantbench(
        ["run", "--config", str(config)],
        reference,
        root / "reference",
        trace=trace,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stages = traced_stages(read_trace(trace))
    committed = committed_stages(reference)
    labels: dict[StageId, str] = {}
    quantize_keys = {
        v["stage_keys"]["quantize"]: v["name"]
        for v in json.loads((reference / "results.json").read_text())["variants"]
    }
    for stage in stages:
        kind, key = stage
        if kind == "quantize":
            labels[stage] = quantize_keys[key]
        elif stage in committed and kind not in ("calibration", "corpus"):
            labels[stage] = json.loads((committed[stage] / "manifest.json").read_text())["variant"]
        else:
            labels[stage] = kind
    assert set(committed) <= set(stages), "the trace missed a stage"
    study = FaultStudy(
        root=root,
        config=config,
        reference=reference,
        stages=stages,
        labels=labels,
        contents={stage: stage_contents(folder) for stage, folder in committed.items()},
        results=results_of(reference),
    )
    study.rounds = plan_rounds(study, chains, mixed)
    return study


def _mixed(
    study: FaultStudy, rng: random.Random, name: str, killed: str, kinds: Iterator[str]
) -> tuple[list[KillPoint], list[StageId]]:
    """One run's kills in five processes: `killed`'s quantize worker, the baseline's
    evaluation worker in one metric, every other variant's evaluation worker in one metric
    that does not read the baseline's killed stage, then the driver writing the report."""
    points = [study.point(rng, f"{name}-quantize-{killed}", "quantize", killed, "kill-self")]
    baseline_kind = next(kinds)
    points.append(study.point(rng, f"{name}-{BASELINE}", baseline_kind, BASELINE, "kill-self"))
    for variant in study.variants():
        if variant in (BASELINE, killed):
            continue
        kind = next(kinds)
        while baseline_kind in READS_FROM_BASELINE.get(kind, set()):
            kind = next(kinds)
        points.append(study.point(rng, f"{name}-{variant}", kind, variant, "kill-self"))
    drop = [study.stage(p.kind, p.label) for p in points]
    points.append(study.point(rng, f"{name}-report", "report", None, "kill-self"))
    return points, drop


def plan_rounds(study: FaultStudy, chains: int, mixed: int) -> dict[str, Round]:
    """Every round's kill points, drawn from the seed alone (any one round reruns with the
    same points). Chains kill the driver in calibration, then (in the rerun) in the corpus,
    then (in the next rerun) five processes; the evaluation stage kinds are dealt in a
    shuffled cycle, so every kind comes up."""
    rng = random.Random(SEED)
    kinds = list(EVAL_KINDS)
    rng.shuffle(kinds)
    deal = itertools.cycle(kinds)
    gptq = next(v for v in study.variants() if "gptq" in v)
    others = [v for v in study.variants() if v != BASELINE]
    rounds: dict[str, Round] = {}
    for number in range(chains):
        name = f"chain{number}"
        kills, drop = _mixed(study, rng, name, gptq, deal)
        runs = [
            [study.point(rng, f"{name}-calibration", "calibration", None, "kill-self")],
            [study.point(rng, f"{name}-corpus", "corpus", None, "kill-self")],
            kills,
        ]
        concurrent = None
        if number == 0:  # held at its first write while a second run is tried
            stage = study.stage("quantize", gptq)
            pause = KillPoint(f"{name}-pause", stage[0], stage[1], 1, 0.0, "pause", gptq)
            runs[2].insert(0, pause)
            concurrent = pause.id
        drop += [study.stage("calibration"), study.stage("corpus")]
        rounds[name] = Round(name, drop, runs, concurrent_at=concurrent)
    for number in range(mixed):
        name = f"mixed{number}"
        kills, drop = _mixed(study, rng, name, others[number % len(others)], deal)
        rounds[name] = Round(name, drop, [kills])
    baseline_kind = rng.choice(EVAL_KINDS)
    other_kind = rng.choice(
        [k for k in EVAL_KINDS if baseline_kind not in READS_FROM_BASELINE.get(k, set())]
    )
    ray = [
        study.point(rng, "ray-quantize", "quantize", gptq, "kill-parent"),
        study.point(rng, f"ray-{BASELINE}", baseline_kind, BASELINE, "kill-parent"),
        study.point(rng, "ray-fp8-dynamic", other_kind, "fp8-dynamic", "kill-driver"),
    ]
    rounds["ray"] = Round(
        "ray",
        [study.stage(p.kind, p.label) for p in ray],
        [ray],
        run_args=["--executor", "ray"],
    )
    return rounds


@pytest.fixture(scope="module")
def fault_study(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> FaultStudy:
    root = tmp_path_factory.mktemp("faults")
    study = make_fault_study(root, str(tiny_model), SCHEMES, 900, CHAINS, MIXED)
    log = [f"fault injection, seed {SEED}"]
    log += [str(p) for r in study.rounds.values() for p in r.points]
    (study.root / "kill-points.log").write_text("\n".join(log) + "\n")
    print("\n" + "\n".join(log))
    return study


# --------------------------------------------------------------------------- rounds


def _describe(points: list[KillPoint]) -> str:
    return "\n".join(str(p) for p in points)


def _try_a_second_run(study: FaultStudy, out: Path, fault_dir: Path) -> None:
    """While the first run is held: a second one on its folder is refused with one line and
    changes nothing there."""
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    second = run_quantbench(["run", "--config", str(study.config)], out, fault_dir / "second")
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "another quantbench run is using" in lines[0], lines
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def _run_with_faults(
    study: FaultStudy, round_: Round, points: list[KillPoint], out: Path, fault_dir: Path
) -> subprocess.CompletedProcess[str]:
    args = ["run", "--config", str(study.config), *round_.run_args]
    paused = [p for p in points if p.id == round_.concurrent_at]
    if not paused:
        return run_quantbench(args, out, fault_dir, points)
    fault_dir.mkdir(parents=True, exist_ok=True)
    first = subprocess.Popen(
        [sys.executable, "-m", "quantbench", *args, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=fault_environment(out, fault_dir, points),
    )
    held = fault_dir / f"{paused[0].id}.done"
    try:
        deadline = time.monotonic() + 600
        while not held.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert held.exists(), "the run never reached the point where it is held"
        _try_a_second_run(study, out, fault_dir)
    finally:
        (fault_dir / f"{paused[0].id}.release").touch()
        stdout, stderr = first.communicate(timeout=600)
    return subprocess.CompletedProcess(first.args, first.returncode, stdout, stderr)


def _await_killed_writers(out: Path, timeout_s: float = 30) -> None:
    """Wait until the workers of a killed run are gone: each unfinished stage folder is named
    `.tmp-<key>-<worker pid>-<nonce>`. A worker dies by its parent-death signal (on Ray, when
    Ray reaps the dead driver's tasks), asynchronously; a rerun that starts while one lives
    rightly leaves its folder alone, and the folder it is still writing outlives the rerun's
    sweep. The check is on what the next run sweeps, so the rerun must see a settled folder."""
    for folder in out.glob("stages/*/.tmp-*"):
        pid = folder.name.split("-")[-2]
        if pid.isdigit():
            assert process_gone(int(pid), timeout_s), f"worker {pid} outlived its driver"


def run_round(study: FaultStudy, round_: Round) -> list[set[StageId]]:
    """Every faulted run of the round, each checked for what it left; then the clean rerun.
    All of the round's points must act (a point that never acts is a plan that no longer
    matches the product: fail, do not count it)."""
    folder = study.root / round_.name
    out = folder / "out"
    copy_study(study.reference, out, round_.drop)
    committed = []
    for number, points in enumerate(round_.runs):
        fault_dir = folder / f"faults{number}"
        faulted = _run_with_faults(study, round_, points, out, fault_dir)
        done = carried_out(fault_dir)
        missing = [p.id for p in points if p.id not in done]
        assert not missing, f"{missing} never acted:\n{_describe(points)}\n{faulted.stderr[-2000:]}"
        assert faulted.returncode == -9, f"{_describe(points)}\n{faulted.stderr[-2000:]}"
        assert "Traceback" not in faulted.stderr, faulted.stderr[-3000:]
        problems = untrusted_problems(out, study.contents)
        assert not problems, f"after\n{_describe(points)}\n" + "\n".join(problems)
        committed.append(set(committed_stages(out)))
    args = ["run", "--config", str(study.config), *round_.run_args]
    _await_killed_writers(out)
    rerun = run_quantbench(args, out, folder / "clean")
    assert rerun.returncode == 0, f"after\n{_describe(round_.points)}\n{rerun.stderr[-3000:]}"
    assert not leftovers(out), leftovers(out)
    assert not untrusted_problems(out, study.contents)
    diff = differences(results_of(out), study.results)
    if round_.run_args:  # the round's own options (`--executor ray`) are in its config
        diff = [line for line in diff if not line.startswith("/config/execution/")]
    assert not diff, f"after\n{_describe(round_.points)}\n" + "\n".join(diff[:20])
    return committed
    """The committed stages after each faulted run."""


def test_the_plan_kills_30_times_in_every_stage_kind(fault_study: FaultStudy) -> None:
    kills = [p for r in fault_study.rounds.values() for p in r.kills()]
    kinds = {p.kind for p in kills}
    assert kinds >= {"calibration", "corpus", "quantize", "report", *EVAL_KINDS}, kinds
    assert len(kills) >= 30, len(kills)
    assert {p.action for p in kills} == {"kill-self", "kill-parent", "kill-driver"}


@pytest.mark.parametrize("number", range(CHAINS))
def test_driver_killed_in_calibration_then_corpus_then_five_kills_in_one_run(
    fault_study: FaultStudy, number: int
) -> None:
    """The driver killed in calibration; its rerun killed in tokenizing the corpus; that
    one's rerun loses a quantize worker, three evaluation workers and then the driver in the
    report (the first chain's is also held while a second `run` is refused); a clean rerun
    finishes the study."""
    run_round(fault_study, fault_study.rounds[f"chain{number}"])


@pytest.mark.parametrize("number", range(MIXED))
def test_five_kills_in_one_run_then_a_clean_rerun(fault_study: FaultStudy, number: int) -> None:
    run_round(fault_study, fault_study.rounds[f"mixed{number}"])


def test_ray_tasks_killed_are_retried_and_a_killed_driver_resumes(
    fault_study: FaultStudy,
) -> None:
    """With `--executor ray`: the process running a Ray task killed inside quantize and
    inside the baseline's evaluation (Ray retries both within the run), then the driver
    killed from inside another variant's evaluation task; a clean rerun on Ray finishes."""
    pytest.importorskip("ray", reason="the Ray executor needs `pip install quantbench[ray]`")
    round_ = fault_study.rounds["ray"]
    (committed,) = run_round(fault_study, round_)
    retried = [fault_study.stage(p.kind, p.label) for p in round_.points[:2]]
    assert set(retried) <= committed, "Ray did not retry a killed task within the run"


def _mount_tmpfs(mount: Path, size_mb: int) -> str | None:
    """Mount a tmpfs of `size_mb` at `mount`; why not, or None when mounted."""
    if os.geteuid() != 0:
        return "mounting a small tmpfs (a disk that fills up) needs root; CI runs as root"
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    return None if done.returncode == 0 else f"cannot mount a tmpfs: {done.stderr.strip()}"


def _fill(disk: Path, leave_bytes: int) -> None:
    """Fill the file system of `disk` with one file until `leave_bytes` are free."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    remaining = max(free - leave_bytes, 0)
    with open(disk / "filler", "wb") as handle:
        chunk = b"\0" * (1 << 20)
        while remaining > 0:
            remaining -= handle.write(chunk[: min(remaining, len(chunk))])


def _bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


FULL_DISK_CASES = [
    0,
    *(pytest.param(n, marks=[pytest.mark.slow, pytest.mark.soak]) for n in (1, 2, 3)),
]
"""One amount of room in CI; the soak run (`pytest -m soak`) tries three more."""


@pytest.mark.parametrize("case", FULL_DISK_CASES)
def test_a_full_disk_fails_cleanly_and_a_rerun_recovers(fault_study: FaultStudy, case: int) -> None:
    """The study folder on a small tmpfs with room for a random part of what the run writes
    (the GPTQ artifact, score arrays, generations, reports, logs): the run fails without a
    traceback and leaves nothing trusted wrongly; with room again, a rerun recovers."""
    study = fault_study
    gptq = next(v for s, v in study.labels.items() if s[0] == "quantize" and "gptq" in v)
    drop = [
        study.stage("quantize", gptq),
        study.stage("scores", "fp8-dynamic"),
        study.stage("generations", BASELINE),
    ]
    writes = sum(_bytes_under(study.reference / "stages" / k / str(v)) for k, v in drop)
    writes += sum(_bytes_under(p) for p in study.reference.iterdir() if p.name != "stages")
    rng = random.Random(f"{SEED}-disk-{case}")
    room = rng.randint(0, writes)
    print(f"full disk {case}: {room} of the {writes} bytes the run writes fit")
    disk = study.root / f"disk{case}"
    why_not = _mount_tmpfs(disk, 64)
    if why_not:
        pytest.skip(why_not)
    try:
        out = disk / "out"
        copy_study(study.reference, out, drop)
        _fill(disk, room)
        args = ["run", "--config", str(study.config)]
        full = run_quantbench(args, out, study.root / f"disk{case}-faults")
        assert full.returncode != 0, f"{room} bytes free: {full.stdout[-2000:]}"
        assert "Traceback" not in full.stderr, full.stderr[-3000:]
        assert not untrusted_problems(out, study.contents), room
        (disk / "filler").unlink()
        rerun = run_quantbench(args, out, study.root / f"disk{case}-clean")
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert not leftovers(out)
        diff = differences(results_of(out), study.results)
        assert not diff, "\n".join(diff[:20])
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
@pytest.mark.soak
def test_the_builtin_model_survives_kills_in_every_stage_kind(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The same rounds on the real built-in model (SmolLM2-135M-Instruct): its GPTQ pass
    and forward passes take seconds, so delayed kills land deep inside the computation."""
    schemes: list[object] = ["bf16", "fp8-dynamic", {"scheme": "w4a16-gptq", "group_size": 64}]
    root = tmp_path_factory.mktemp("faults-builtin")
    study = make_fault_study(root, "smollm2-135m-instruct", schemes, 1800, 2, 2)
    print("\n".join(str(p) for r in study.rounds.values() for p in r.points))
    for name, round_ in study.rounds.items():
        if name != "ray":
            run_round(study, round_)


class _FullDisk(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_worker_log_on_a_full_disk_stops_logging_but_keeps_reading() -> None:
    """The driver's reader of a worker's output goes on when the log cannot be written: a
    reader that stopped would leave the worker blocked on a full pipe and the run hanging."""
    from quantbench.process.workers import _pump

    lines: list[str] = []
    stream = io.BytesIO(b"".join(b'{"phase": "step %d"}\n' % n for n in range(50_000)))
    _pump(stream, _FullDisk(), lines.append, threading.Lock())
    assert len(lines) == 50_000 and lines[-1] == '{"phase": "step 49999"}'
