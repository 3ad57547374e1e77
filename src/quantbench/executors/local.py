"""The local executor: each worker a child process here, as many at once as the machine's
cores and memory allow (`quantbench.schedule`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantbench.executors.base import Resources
from quantbench.process import forkserver
from quantbench.process.workers import run_python_worker, worker_environment
from quantbench.schedule import Capacity, Placement


class LocalExecutor:
    """Workers are forked from a fork server (`forkserver.py`) where Linux allows it, so a
    study pays for importing torch and transformers once instead of twice per variant.
    Workers whose threads outnumber their cores come from a second server, whose OpenMP
    waits passively (`workers.SHARED_CORES_ENVIRONMENT`)."""

    name = "local"

    def __init__(self) -> None:
        supported = forkserver.supported()
        self._fork_server = forkserver.ForkServer() if supported else None
        self._shared_fork_server = forkserver.ForkServer() if supported else None

    def prestart(self) -> None:
        """Begin the fork servers' imports now, while the driver prepares the inputs (the
        second only where jobs can share cores: more than one core)."""
        if self._fork_server is not None:
            self._fork_server.start(worker_environment(os.environ))
        if self._shared_fork_server is not None and (Capacity.here(None, None).cores or 1) > 1:
            self._shared_fork_server.start(worker_environment(os.environ, shares_cores=True))

    def capacity(self, memory_bytes: int | None, max_parallel: int | None) -> Capacity:
        return Capacity.here(memory_bytes, max_parallel)

    def launch(
        self,
        module: str,
        request: dict[str, Any],
        request_path: Path,
        log_path: Path,
        on_event: Callable[[dict[str, Any]], None],
        on_stderr: Callable[[str], None] = lambda _: None,
        resources: Resources | None = None,
    ) -> int:
        """`resources` are for a cluster: here the scheduler has already made room and put
        the request's `threads` and `cpus`."""
        cpus = request.get("cpus")
        shares_cores = Placement(
            request.get("threads"), None if cpus is None else tuple(cpus)
        ).shares_cores
        return run_python_worker(
            module,
            request,
            request_path,
            log_path,
            on_event,
            on_stderr,
            fork_server=self._shared_fork_server if shares_cores else self._fork_server,
            shares_cores=shares_cores,
        )

    def describe(self) -> dict[str, Any]:
        return {"executor": "local", "fork_server": self._fork_server is not None}

    def close(self) -> None:
        for server in (self._fork_server, self._shared_fork_server):
            if server is not None:
                server.close()
