"""Worker side of a worker process: what a worker module calls from inside its child.

Kept apart from `workers.py` (the driver side) so that the fork server, which makes every
forked child die with its parent, imports nothing of the driver's.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any


def emit(event: str, **fields: Any) -> None:
    """One JSON progress event on stdout, which the driver's reader passes to its callback."""
    print(json.dumps({"phase": event, **fields}), flush=True)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphans)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def limit_threads(threads: int | None) -> None:
    """Use at most `threads` compute threads in this worker (None: leave torch's default):
    torch's intra-op pool, and the OpenMP/MKL variables that processes it starts inherit.
    The variables alone would not do: a worker forked from the fork server has torch
    imported already, and OpenMP read them then."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)


def run_on_cpus(cpus: Sequence[int] | None) -> None:
    """Run every thread of this worker (and what it starts later) on `cpus` only (None:
    leave them). Every thread is moved, not only the calling one: torch's OpenMP pool may
    have started already, and Linux keeps an affinity per thread."""
    if cpus is None or not hasattr(os, "sched_setaffinity"):
        return
    wanted = set(cpus)
    os.sched_setaffinity(0, wanted)
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return
    for tid in threads:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, wanted)


class CoreGrant:
    """Cores the scheduler lends this worker while it runs: it writes the worker's wider
    set of cores into a file the request names, and the worker reads it at its next
    progress event (between windows, prompts and task chunks) and moves its threads onto
    them. The thread count stays, so the figures do not change with the cores; the set
    never narrows: the scheduler lends cores only when no waiting job could use them."""

    def __init__(self, path: str | None, cpus: Sequence[int] | None) -> None:
        self.path = path
        self.cpus = tuple(cpus) if cpus is not None else None
        self._seen: tuple[float, int] | None = None

    @property
    def cores(self) -> int | None:
        """How many cores the worker runs on now (None: any)."""
        return None if self.cpus is None else len(self.cpus)

    def poll(self) -> int | None:
        """The count of cores now in force, when the file names cores the worker did not
        have; None otherwise (no file, unchanged, unreadable)."""
        if self.path is None or self.cpus is None:
            return None
        try:
            stat = os.stat(self.path)
            if self._seen == (stat.st_mtime, stat.st_size):
                return None
            self._seen = (stat.st_mtime, stat.st_size)
            with open(self.path) as handle:
                granted = tuple(int(cpu) for cpu in handle.read().split(","))
        except (OSError, ValueError):
            return None
        if set(granted) <= set(self.cpus):
            return None
        self.cpus = tuple(sorted({*self.cpus, *granted}))
        run_on_cpus(self.cpus)
        return self.cores


def grant_cores(path: str, cpus: Sequence[int]) -> None:
    """The scheduler's side of `CoreGrant`: the cores, written whole (a rename), so the
    worker never reads half of them."""
    partial = f"{path}.partial"
    try:
        with open(partial, "w") as handle:
            handle.write(",".join(str(cpu) for cpu in cpus))
        os.replace(partial, path)
    except OSError:
        pass  # the worker keeps its cores; nothing is measured wrong


def torch_threads() -> int:
    """torch's intra-op thread count in this worker now."""
    import torch

    return int(torch.get_num_threads())


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far, bytes (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def anonymous_rss_bytes() -> int | None:
    """This process's anonymous resident memory now, bytes (`RssAnon`; None off Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class AnonymousPeak:
    """The peak of this process's anonymous resident memory, sampled every `interval_s` by a
    daemon thread while the block runs.

    Peak RSS (`ru_maxrss`) also counts file-backed pages: transformers maps safetensors
    files, so weights read from them are resident twice over once a worker has copied or
    modified them, and the kernel can drop the file-backed half under memory pressure.
    Anonymous memory is the part it cannot drop, so this peak is what decides whether a
    worker fits. A sample every 50 ms can miss a spike shorter than that.
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak_bytes: int | None = anonymous_rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.update()

    def update(self) -> int | None:
        now = anonymous_rss_bytes()
        if now is not None and (self.peak_bytes is None or now > self.peak_bytes):
            self.peak_bytes = now
        return self.peak_bytes

    def __enter__(self) -> AnonymousPeak:
        if self.peak_bytes is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.update()
