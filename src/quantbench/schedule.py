"""Run a study's worker stages as a graph, side by side where the machine allows.

Every worker stage of the plan is a `Job`: quantize one variant, evaluate one variant's
untimed metrics, time one variant (its speed and load-time figures). A job starts when the
jobs it needs have finished and `admit` finds room for it:

- **cores**: each job is given cores to run on (its `Placement.cpus`), and the running jobs
  never hold more cores than the machine has. A job without a fixed count takes an even
  share of the free cores among the jobs that are ready, so one job alone gets every core
  and four ready jobs on two cores get one each (small models and GPTQ do not scale
  perfectly over cores, so two quantizations side by side on one core each finish sooner
  than one after the other on both).
- **threads**: the thread count a job computes with does not follow its share. Every job
  of the study computes on as many torch threads as the machine has cores, on whatever
  cores it was given (two threads on its one core, beside another job on the other):
  floating-point sums are split by thread count (oneDNN's bf16 matrix products on AMX
  CPUs, MKL's factorizations), so a share-sized count would make a variant's figures
  depend on what else was running. Timed jobs keep torch's default, as a deployment would.
- **memory**: the running jobs' pre-flight estimates (`quantbench.memory`) stay within
  what the study may use; a job alone is always admitted (pre-flight refused any job that
  could not fit by itself).
- **GPUs**: one GPU job at a time per visible GPU (workers use the default device).
- **alone**: a job whose figures are times runs with nothing else running, after every
  other ready job; nothing starts beside it.
- **max_parallel** caps the jobs running at once; 1 runs them one after the other in
  priority order with every core, as a plain script would.
- **lent cores**: when cores are free and every job still waiting runs alone (so none of
  them could use a core before the running jobs end), `lend` gives the free cores to the
  running jobs that can take more while they run (`Job.grow`: an evaluation widens the
  cores its threads run on between windows). Without it the study's last evaluation runs
  on one core while the others idle.

`admit` is a pure function of the ready jobs, the running ones and the capacity; `run_jobs`
is the loop that calls it as jobs finish. On a cluster (Ray) the cores and memory are
Ray's to place: the capacity then has no cores and jobs get no placement.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["ok", "failed", "skipped"]


@dataclass(frozen=True)
class Placement:
    """Where a job runs: the torch threads it computes with and the cores they run on."""

    threads: int | None = None
    """torch's intra-op threads (None: torch's default, or the executor sets them)."""
    cpus: tuple[int, ...] | None = None
    """The cores the worker may run on (None: any)."""

    @property
    def shares_cores(self) -> bool:
        """More threads than cores: the threads take turns, so they must not spin while
        they wait for each other (`quantbench.executors.local`)."""
        return self.cpus is not None and self.threads is not None and self.threads > len(self.cpus)

    def describe(self) -> str:
        """For the terminal: `2 threads on 1 core`, `2 threads`, `torch's threads`."""
        if self.threads is None:
            return "torch's threads"
        text = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        if self.cpus is not None and len(self.cpus) != self.threads:
            text += f" on {len(self.cpus)} core{'s' if len(self.cpus) != 1 else ''}"
        return text


@dataclass(frozen=True)
class Job:
    """One worker stage of the study. `run(placement)` does it and returns whether jobs
    that need it may run."""

    name: str
    run: Callable[[Placement], bool]
    needs: tuple[str, ...] = ()
    memory_bytes: int | None = None
    """Pre-flight's estimate of the job's peak memory, bytes (None: not estimated)."""
    threads: int | None = None
    """A fixed thread count, on as many cores (the user's `evaluation.threads`, or every
    core for a vLLM engine, which binds its own threads); None: the scheduler's share of
    the cores, with the study's thread count (`Capacity.cores`)."""
    alone: bool = False
    """The job measures time: it runs with no other job running."""
    gpu: bool = False
    grow: Callable[[tuple[int, ...]], None] | None = None
    """Widen the cores the running job may use to the given ones (None: they cannot change
    while it runs)."""


@dataclass(frozen=True)
class Capacity:
    """What the running jobs may use together."""

    cores: int | None
    """CPU cores to share out among the jobs, and the thread count each computes with;
    None: the executor places the work (Ray)."""
    memory_bytes: int | None = None
    max_parallel: int | None = None
    gpus: int | None = 1
    """GPU jobs at once (workers use the default device); None: the executor places them."""
    cpu_ids: tuple[int, ...] | None = None
    """The cores' ids, for pinning (None: 0 .. cores - 1)."""

    @classmethod
    def here(cls, memory_bytes: int | None, max_parallel: int | None) -> Capacity:
        """This machine: the cores this process may run on. `max_parallel` None runs as
        many jobs at once as there are cores."""
        if hasattr(os, "sched_getaffinity"):
            ids = tuple(sorted(os.sched_getaffinity(0)))
            return cls(len(ids), memory_bytes, max_parallel or len(ids), cpu_ids=ids)
        cores = os.cpu_count() or 1
        return cls(cores, memory_bytes, max_parallel or cores)

    def cpus(self) -> tuple[int, ...]:
        """The ids of the cores to share out (none on a cluster)."""
        if self.cores is None:
            return ()
        return self.cpu_ids if self.cpu_ids is not None else tuple(range(self.cores))


@dataclass(frozen=True)
class Claim:
    """What a running job holds."""

    name: str
    cores: int
    memory_bytes: int
    alone: bool
    gpu: bool


def admit(
    ready: Sequence[Job], running: Sequence[Claim], capacity: Capacity
) -> list[tuple[Job, int | None]]:
    """The jobs of `ready` (highest priority first) that start now, each with its count of
    cores, given the jobs `running`. See the module docstring for the rules."""
    if any(claim.alone for claim in running):
        return []
    ordinary = [job for job in ready if not job.alone]
    if not ordinary:
        if running or not ready:
            return []
        job = ready[0]
        return [(job, job.threads)]
    claims = list(running)
    started: list[tuple[Job, int | None]] = []
    for index, job in enumerate(ordinary):
        if capacity.max_parallel is not None and len(claims) >= capacity.max_parallel:
            break
        cores: int | None = None
        if capacity.cores is not None:
            free = capacity.cores - sum(claim.cores for claim in claims)
            if free < 1:
                break
            if job.threads is not None:
                cores = min(job.threads, capacity.cores)
                if cores > free:
                    continue
            else:
                room = len(ordinary) - index
                if capacity.max_parallel is not None:
                    room = min(room, capacity.max_parallel - len(claims))
                cores = max(1, free // min(room, free))
        memory = job.memory_bytes or 0
        if (
            claims
            and capacity.memory_bytes is not None
            and sum(claim.memory_bytes for claim in claims) + memory > capacity.memory_bytes
        ):
            continue
        if (
            job.gpu
            and capacity.gpus is not None
            and sum(claim.gpu for claim in claims) >= capacity.gpus
        ):
            continue
        claims.append(Claim(job.name, cores or 0, memory, False, job.gpu))
        started.append((job, cores))
    return started


def lend(
    waiting: Sequence[Job], running: Sequence[Claim], growable: Sequence[str], capacity: Capacity
) -> dict[str, int]:
    """The new core counts of running jobs named in `growable` (in start order) that get
    the free cores: only when every waiting job runs alone, so no waiting job could have
    used them; the free cores are shared evenly, the earliest started taking the rest."""
    if capacity.cores is None or any(not job.alone for job in waiting):
        return {}
    if any(claim.alone for claim in running):
        return {}
    free = capacity.cores - sum(claim.cores for claim in running)
    claims = {claim.name: claim for claim in running}
    takers = [name for name in growable if name in claims and claims[name].cores > 0]
    if free < 1 or not takers:
        return {}
    share, rest = divmod(free, len(takers))
    raised = {
        name: claims[name].cores + share + (index < rest) for index, name in enumerate(takers)
    }
    return {name: cores for name, cores in raised.items() if cores > claims[name].cores}


@dataclass
class JobRun:
    """When a job ran, relative to the start of `run_jobs` (seconds), and how."""

    name: str
    outcome: Outcome
    threads: int | None = None
    """torch threads the job computed with (None: torch's default)."""
    alone: bool = False
    started_s: float | None = None
    ended_s: float | None = None
    memory_bytes: int | None = None
    raised: list[tuple[float, int]] = field(default_factory=list)
    """(seconds, cores): when the job was lent cores while it ran, and its new count."""
    cores: int | None = None
    """Cores the job started on (None: any)."""

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> JobRun:
        """The run `record()` wrote into `provenance.schedule`."""
        return cls(
            record["job"],
            record["outcome"],
            record["threads"],
            record["alone"],
            record["started_s"],
            record["ended_s"],
            raised=[(at, cores) for at, cores in record.get("raised", [])],
            cores=record.get("cores"),
        )

    def record(self) -> dict[str, object]:
        return {
            "job": self.name,
            "outcome": self.outcome,
            "threads": self.threads,
            "cores": self.cores,
            "alone": self.alone,
            "started_s": None if self.started_s is None else round(self.started_s, 2),
            "ended_s": None if self.ended_s is None else round(self.ended_s, 2),
            **({"raised": [[round(at, 2), n] for at, n in self.raised]} if self.raised else {}),
        }


@dataclass
class _State:
    waiting: list[Job]
    running: dict[str, Claim] = field(default_factory=dict)
    runs: dict[str, JobRun] = field(default_factory=dict)
    growable: dict[str, Job] = field(default_factory=dict)
    cpus: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """The cores each running job holds (none on a cluster)."""

    def free_cpus(self, capacity: Capacity) -> list[int]:
        held = {cpu for cpus in self.cpus.values() for cpu in cpus}
        return [cpu for cpu in capacity.cpus() if cpu not in held]


def run_jobs(
    jobs: Sequence[Job],
    capacity: Capacity,
    on_start: Callable[[Job, Placement], None] = lambda job, placement: None,
    on_skip: Callable[[Job], None] = lambda job: None,
    on_raise: Callable[[Job, Placement], None] = lambda job, placement: None,
) -> list[JobRun]:
    """Run `jobs` (in priority order) under `capacity`; every job's run, in `jobs` order.

    A job whose needs failed or were skipped is skipped. An exception in a job stops new
    admissions; the running jobs are waited for, then it is raised here."""
    names = {job.name for job in jobs}
    unknown = sorted({need for job in jobs for need in job.needs} - names)
    if unknown:
        raise ValueError(f"jobs need unknown jobs: {', '.join(unknown)}")
    state = _State(
        waiting=list(jobs),
        growable={j.name: j for j in jobs if j.grow is not None and j.threads is None},
    )
    finished: queue.Queue[tuple[str, bool | BaseException]] = queue.Queue()
    clock = time.monotonic
    origin = clock()
    error: BaseException | None = None

    def work(job: Job, placement: Placement) -> None:
        try:
            finished.put((job.name, bool(job.run(placement))))
        except BaseException as exc:  # handed to the loop, which raises it
            finished.put((job.name, exc))

    while state.waiting or state.running:
        if error is None:
            _skip_orphans(state, on_skip)
            ready = [
                job
                for job in state.waiting
                if all(
                    n in state.runs and n not in state.running and state.runs[n].outcome == "ok"
                    for n in job.needs
                )
            ]
            for job, cores in admit(ready, list(state.running.values()), capacity):
                state.waiting.remove(job)
                placement = _place(job, cores, state.free_cpus(capacity), capacity)
                if placement.cpus is not None:
                    state.cpus[job.name] = placement.cpus
                state.running[job.name] = Claim(
                    job.name, cores or 0, job.memory_bytes or 0, job.alone, job.gpu
                )
                state.runs[job.name] = JobRun(
                    job.name,
                    "ok",
                    placement.threads,
                    job.alone,
                    clock() - origin,
                    None,
                    job.memory_bytes,
                    cores=None if placement.cpus is None else len(placement.cpus),
                )
                on_start(job, placement)
                threading.Thread(target=work, args=(job, placement), daemon=True).start()
            growable = [name for name in state.running if name in state.growable]
            for name, cores in lend(
                state.waiting, list(state.running.values()), growable, capacity
            ).items():
                grow = state.growable[name].grow
                assert grow is not None
                held = state.cpus.get(name, ())
                wider = held + tuple(state.free_cpus(capacity)[: cores - len(held)])
                grow(wider)
                state.cpus[name] = wider
                state.running[name] = dataclasses.replace(state.running[name], cores=cores)
                state.runs[name].raised.append((clock() - origin, cores))
                on_raise(state.growable[name], Placement(state.runs[name].threads, wider))
        else:
            state.waiting.clear()
        if not state.running:
            if state.waiting:  # nothing can start and nothing runs: a need can never be met
                raise RuntimeError(f"jobs cannot start: {[j.name for j in state.waiting]}")
            break
        name, outcome = finished.get()
        del state.running[name]
        state.cpus.pop(name, None)
        run = state.runs[name]
        run.ended_s = clock() - origin
        if isinstance(outcome, BaseException):
            run.outcome = "failed"
            error = error or outcome
        elif not outcome:
            run.outcome = "failed"
    if error is not None:
        raise error
    for job in jobs:
        state.runs.setdefault(job.name, JobRun(job.name, "skipped"))
    return [state.runs[job.name] for job in jobs]


def _place(job: Job, cores: int | None, free: Sequence[int], capacity: Capacity) -> Placement:
    """Where an admitted job runs: a timed job with torch's default threads anywhere (it runs
    alone); a fixed count on as many cores; any other job with the study's thread count
    (every core of the machine) on the `cores` it was given."""
    if capacity.cores is None or cores is None:
        return Placement(job.threads)
    threads = job.threads if job.threads is not None else capacity.cores
    return Placement(threads, tuple(free[:cores]))


def _skip_orphans(state: _State, on_skip: Callable[[Job], None]) -> None:
    """Skip every waiting job whose need failed or was skipped, until none is left."""
    changed = True
    while changed:
        changed = False
        for job in list(state.waiting):
            if any(
                n in state.runs and state.runs[n].outcome != "ok" and n not in state.running
                for n in job.needs
            ):
                state.waiting.remove(job)
                state.runs[job.name] = JobRun(job.name, "skipped")
                on_skip(job)
                changed = True


def overlapping(runs: Sequence[JobRun]) -> list[tuple[str, str]]:
    """Pairs of jobs that ran at the same time (for the record and its tests)."""
    timed = [r for r in runs if r.started_s is not None and r.ended_s is not None]
    pairs = []
    for i, first in enumerate(timed):
        for second in timed[i + 1 :]:
            assert first.started_s is not None and first.ended_s is not None
            assert second.started_s is not None and second.ended_s is not None
            if first.started_s < second.ended_s and second.started_s < first.ended_s:
                pairs.append((first.name, second.name))
    return pairs
