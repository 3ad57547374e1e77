"""The scheduler: which ready jobs start, with how many threads, and that timed jobs run alone."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import build_tiny_model, run_cli, tiny_study_yaml
from quantbench.process.child import CoreGrant, grant_cores, run_on_cpus, torch_threads
from quantbench.schedule import (
    Capacity,
    Claim,
    Job,
    JobRun,
    Placement,
    admit,
    lend,
    overlapping,
    run_jobs,
)
from quantbench.study_files import load_results


def job(name: str, **fields: object) -> Job:
    return Job(name, lambda placement: True, **fields)  # type: ignore[arg-type]


def started(
    ready: list[Job], running: list[Claim], capacity: Capacity
) -> list[tuple[str, int | None]]:
    return [(j.name, threads) for j, threads in admit(ready, running, capacity)]


TWO_CORES = Capacity(cores=2, memory_bytes=10_000, max_parallel=2)
HIDDEN_WIDE = 256


def test_ready_jobs_share_the_free_cores() -> None:
    four = [job(n) for n in "abcd"]
    assert started(four, [], TWO_CORES) == [("a", 1), ("b", 1)]
    assert started(four[:1], [], TWO_CORES) == [("a", 2)]
    one_running = [Claim("x", 1, 0, False, False)]
    assert started(four, one_running, TWO_CORES) == [("a", 1)]
    busy = [Claim("x", 2, 0, False, False)]
    assert started(four, busy, TWO_CORES) == []
    eight = Capacity(cores=8, memory_bytes=None, max_parallel=3)
    assert started(four, [], eight) == [("a", 2), ("b", 3), ("c", 3)]


def test_one_job_at_a_time_takes_every_core() -> None:
    serial = Capacity(cores=2, memory_bytes=None, max_parallel=1)
    assert started([job("a"), job("b")], [], serial) == [("a", 2)]
    assert started([job("b")], [Claim("a", 2, 0, False, False)], serial) == []


def test_a_fixed_thread_count_waits_for_its_cores_and_lets_smaller_jobs_by() -> None:
    ready = [job("engine", threads=2), job("small")]
    assert started(ready, [Claim("x", 1, 0, False, False)], TWO_CORES) == [("small", 1)]
    assert started(ready, [], TWO_CORES) == [("engine", 2)]
    assert started([job("many", threads=16)], [], TWO_CORES) == [("many", 2)]


def test_memory_admission_uses_the_estimates_but_never_blocks_a_job_alone() -> None:
    ready = [
        job("a", memory_bytes=6_000),
        job("b", memory_bytes=6_000),
        job("c", memory_bytes=3_000),
    ]
    assert started(ready, [], TWO_CORES) == [("a", 1), ("c", 1)]
    assert started([job("huge", memory_bytes=50_000)], [], TWO_CORES) == [("huge", 2)]


def test_one_gpu_job_at_a_time() -> None:
    ready = [job("a", gpu=True), job("b", gpu=True), job("c")]
    assert started(ready, [], TWO_CORES) == [("a", 1), ("c", 1)]


def test_a_timed_job_starts_only_on_an_idle_machine_after_the_other_ready_jobs() -> None:
    timed = job("time", alone=True)
    assert started([timed, job("a")], [], TWO_CORES) == [("a", 2)]
    assert started([timed], [Claim("a", 1, 0, False, False)], TWO_CORES) == []
    assert started([timed], [], TWO_CORES) == [("time", None)]
    assert started([job("time", alone=True, threads=1)], [], TWO_CORES) == [("time", 1)]
    assert started([job("a")], [Claim("time", 0, 0, True, False)], TWO_CORES) == []


def test_on_a_cluster_no_thread_counts_are_given() -> None:
    cluster = Capacity(cores=None, memory_bytes=None, max_parallel=None, gpus=None)
    assert started([job(n) for n in "abc"], [], cluster) == [("a", None), ("b", None), ("c", None)]
    two_gpu_jobs = [job("a", gpu=True), job("b", gpu=True)]
    assert started(two_gpu_jobs, [], cluster) == [("a", None), ("b", None)]


def test_run_jobs_follows_needs_runs_timed_jobs_alone_and_skips_after_a_failure() -> None:
    log: list[str] = []
    lock = threading.Lock()

    def work(name: str, ok: bool = True, seconds: float = 0.05) -> Job:
        def run(placement: Placement) -> bool:
            with lock:
                log.append(f"start {name} {placement.threads} {placement.cpus}")
            time.sleep(seconds)
            return ok

        return Job(name, run)

    jobs = [
        work("q1", seconds=0.3),
        work("q2", ok=False, seconds=0.01),
        Job("e1", work("e1").run, needs=("q1",)),
        Job("t1", work("t1").run, needs=("q1",), alone=True),
        Job("e2", work("e2").run, needs=("q2",)),
        Job("t2", work("t2").run, needs=("e2",), alone=True),
    ]
    skipped: list[str] = []
    runs = run_jobs(jobs, TWO_CORES, on_skip=lambda j: skipped.append(j.name))
    outcome = {r.name: r.outcome for r in runs}
    assert outcome == {
        "q1": "ok",
        "q2": "failed",
        "e1": "ok",
        "t1": "ok",
        "e2": "skipped",
        "t2": "skipped",
    }
    assert skipped == ["e2", "t2"]
    # side by side each on a core of its own, both with the study's two threads
    assert sorted(log[:2]) == ["start q1 2 (0,)", "start q2 2 (1,)"]
    assert log.index("start e1 2 (0, 1)") < log.index("start t1 None None")
    pairs = overlapping(runs)
    assert ("q1", "q2") in pairs
    assert not [pair for pair in pairs if "t1" in pair]


def test_free_cores_are_lent_only_when_no_waiting_job_could_use_them() -> None:
    one_each = [Claim("a", 1, 0, False, False), Claim("b", 1, 0, False, False)]
    alone_one = [Claim("a", 1, 0, False, False)]
    four = Capacity(cores=4, memory_bytes=None, max_parallel=4)
    assert lend([], alone_one, ["a"], TWO_CORES) == {"a": 2}
    assert lend([job("t", alone=True)], alone_one, ["a"], TWO_CORES) == {"a": 2}
    # an untimed job still waiting (for a running quantization) will want the core
    assert lend([job("e", needs=("q",))], alone_one, ["a"], TWO_CORES) == {}
    assert lend([], alone_one, [], TWO_CORES) == {}  # the running job cannot grow
    assert lend([], one_each, ["a", "b"], TWO_CORES) == {}  # no core is free
    assert lend([], one_each, ["a", "b"], four) == {"a": 2, "b": 2}
    assert lend([], one_each, ["b", "a"], Capacity(5, None, 5)) == {"b": 3, "a": 2}
    assert lend([], one_each, ["b"], four) == {"b": 3}
    timed = [Claim("t", 1, 0, True, False)]
    assert lend([], timed, ["t"], TWO_CORES) == {}  # a timed job keeps its threads
    cluster = Capacity(cores=None, memory_bytes=None, max_parallel=None, gpus=None)
    assert lend([], [Claim("a", 0, 0, False, False)], ["a"], cluster) == {}


def test_a_job_left_running_alone_is_lent_the_cores_of_those_that_ended() -> None:
    raised: list[tuple[str, int]] = []
    shown: list[tuple[str, int]] = []

    def sleeper(seconds: float) -> Callable[[Placement], bool]:
        def run(placement: Placement) -> bool:
            time.sleep(seconds)
            return True

        return run

    jobs = [
        Job("long", sleeper(0.4), grow=lambda cpus: raised.append(("long", len(cpus)))),
        Job("short", sleeper(0.05), grow=lambda cpus: raised.append(("short", len(cpus)))),
        Job("fixed", sleeper(0.05), threads=1, grow=lambda c: raised.append(("fixed", len(c)))),
        Job("timed", sleeper(0.01), alone=True, needs=("long",)),
    ]
    four = Capacity(cores=4, memory_bytes=None, max_parallel=4)

    def show(job: Job, placement: Placement) -> None:
        shown.append((job.name, len(placement.cpus or ())))

    runs = {r.name: r for r in run_jobs(jobs, four, on_raise=show)}
    # long and short start with 1 thread each beside fixed's 1: one core is free at once
    # and every waiting job runs alone, so long (started first) and short share it
    assert runs["long"].cores == 1 and runs["short"].cores == 1
    assert runs["long"].threads == 4 and runs["fixed"].threads == 1  # lending moves cores only
    assert raised[0] == ("long", 2)
    assert raised[-1] == ("long", 4)  # short and fixed ended: every core
    assert ("fixed", 2) not in raised  # a fixed count is never raised
    assert shown == raised
    assert [n for _, n in runs["long"].raised] == [n for name, n in raised if name == "long"]
    record = runs["long"].record()
    assert JobRun.from_record(record).raised == [(round(at, 2), n) for at, n in runs["long"].raised]
    assert "raised" not in runs["timed"].record()


def test_concurrent_jobs_get_cores_of_their_own_and_the_study_s_thread_count() -> None:
    """The thread count a job computes with never follows its share of the cores, so a
    variant's figures do not depend on what ran beside it; the cores never overlap."""
    placements: dict[str, Placement] = {}
    lock = threading.Lock()

    def record(name: str) -> Callable[[Placement], bool]:
        def run(placement: Placement) -> bool:
            with lock:
                placements[name] = placement
            time.sleep(0.1)
            return True

        return run

    four = Capacity(cores=4, memory_bytes=None, max_parallel=4, cpu_ids=(2, 3, 5, 7))
    jobs = [
        Job("a", record("a")),
        Job("b", record("b")),
        Job("engine", record("engine"), threads=2),
        Job("timed", record("timed"), alone=True),
    ]
    runs = {r.name: r for r in run_jobs(jobs, four)}
    assert placements["a"] == Placement(4, (2,)) and placements["b"] == Placement(4, (3,))
    assert placements["engine"] == Placement(2, (5, 7))
    assert placements["a"].shares_cores and not placements["engine"].shares_cores
    assert placements["timed"] == Placement(None, None)  # torch's default, as deployed
    assert not placements["timed"].shares_cores
    assert (runs["a"].threads, runs["a"].cores) == (4, 1)
    assert JobRun.from_record(runs["a"].record()).cores == 1
    assert Placement(2, (0,)).describe() == "2 threads on 1 core"
    assert Placement(2, (0, 1)).describe() == "2 threads"
    assert Placement().describe() == "torch's threads"


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs two cores to move threads between",
)
def test_a_worker_moves_every_thread_onto_the_cores_the_scheduler_lends(tmp_path: Path) -> None:
    before = os.sched_getaffinity(0)
    first, second = sorted(before)[:2]
    threads = torch_threads()
    path = str(tmp_path / "eval-x.cores")
    try:
        run_on_cpus([first])
        grant = CoreGrant(path, [first])
        assert grant.poll() is None  # no file yet
        grant_cores(path, [first, second])
        assert grant.poll() == 2
        for tid in os.listdir("/proc/self/task"):  # every thread, not only this one
            assert os.sched_getaffinity(int(tid)) == {first, second}
        assert grant.poll() is None  # unchanged since
        grant_cores(path, [first])
        assert grant.poll() is None and os.sched_getaffinity(0) == {first, second}  # never narrowed
        Path(path).write_text("half")
        assert grant.poll() is None
        assert CoreGrant(None, [first]).poll() is None
        assert torch_threads() == threads  # the cores change, the thread count does not
    finally:
        run_on_cpus(sorted(before))


def test_an_exception_in_a_job_waits_for_the_others_then_is_raised() -> None:
    finished: list[str] = []

    def slow(threads: int | None) -> bool:
        time.sleep(0.2)
        finished.append("slow")
        return True

    def broken(threads: int | None) -> bool:
        raise RuntimeError("bug")

    jobs = [Job("slow", slow), Job("broken", broken), Job("later", slow, needs=("slow",))]
    with pytest.raises(RuntimeError, match="bug"):
        run_jobs(jobs, TWO_CORES)
    assert finished == ["slow"]


def test_unknown_needs_are_refused() -> None:
    with pytest.raises(ValueError, match="missing"):
        run_jobs([job("a", needs=("missing",))], TWO_CORES)


# --- in a study ----------------------------------------------------------------------------


def schedule_of(out: Path) -> dict[str, Any]:
    schedule: dict[str, Any] = load_results(out).provenance["schedule"]
    return schedule


def test_jobs_1_runs_one_stage_at_a_time_with_every_core(tiny_model: Path, tmp_path: Path) -> None:
    config = tiny_study_yaml(
        tmp_path / "study.yaml", tiny_model, tmp_path / "out", ["bf16", "fp8-dynamic"]
    )
    result = run_cli("run", "--config", str(config), "--jobs", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    schedule = schedule_of(tmp_path / "out")
    runs = [JobRun.from_record(job) for job in schedule["jobs"]]
    assert [r.name for r in runs] == ["quantize bf16", "quantize fp8-dynamic"]
    assert overlapping(runs) == []
    assert {r.threads for r in runs} == {schedule["cores"]}
    assert {r.cores for r in runs} == {schedule["cores"]}
    assert schedule["max_parallel"] == 1


def test_gptq_gives_the_same_weights_on_one_core_beside_another_job_and_on_every_core(
    tmp_path: Path,
) -> None:
    """Side by side with bf16's quantization GPTQ gets half the cores, under `--jobs 1` all of
    them; it computes with the same threads on both, so the weights are the same byte for
    byte. The model is wider than the shared tiny one: with hidden size 96 too few weights
    sit near a rounding boundary for a difference to show at all."""
    model = build_tiny_model(tmp_path / "model", hidden_size=HIDDEN_WIDE)
    schemes: list[object] = ["bf16", {"scheme": "w4a16-gptq", "group_size": 32}]
    weights: dict[str, bytes] = {}
    placed: dict[str, tuple[int | None, int | None]] = {}
    for schedule, flags in (("alone", ["--jobs", "1"]), ("side by side", ["--jobs", "2"])):
        out = tmp_path / schedule
        config = tiny_study_yaml(tmp_path / f"{schedule}.yaml", model, out, schemes)
        result = run_cli("run", "--config", str(config), *flags)
        assert result.returncode == 0, result.stderr[-3000:]
        gptq = load_results(out).variant("w4a16-gptq-g32")
        assert gptq.quantization is not None
        placed[schedule] = (gptq.quantization.torch_threads, gptq.quantization.cores)
        weights[schedule] = (Path(gptq.artifact_path or "") / "model.safetensors").read_bytes()
    assert placed["side by side"][0] == placed["alone"][0], placed
    assert (placed["side by side"][1] or 0) < (placed["alone"][1] or 0), placed
    assert weights["alone"] == weights["side by side"], "GPTQ's weights moved with the cores"
