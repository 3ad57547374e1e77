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
from quantbench.schedule import Capacity


class LocalExecutor:
    """Workers are forked from a fork server (`forkserver.py`) where Linux allows it, so a
    study pays for importing torch and transformers once instead of twice per variant."""

    name = "local"

    def __init__(self) -> None:
        self._fork_server = forkserver.ForkServer() if forkserver.supported() else None

    def prestart(self) -> None:
        """Begin the fork server's imports now, while the driver prepares the inputs."""
        if self._fork_server is not None:
            self._fork_server.start(worker_environment(os.environ))

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
        """`resources` are for a cluster: here the scheduler has already made room."""
        return run_python_worker(
            module,
            request,
            request_path,
            log_path,
            on_event,
            on_stderr,
            fork_server=self._fork_server,
        )

    def describe(self) -> dict[str, Any]:
        return {"executor": "local", "fork_server": self._fork_server is not None}

    def close(self) -> None:
        if self._fork_server is not None:
            self._fork_server.close()
