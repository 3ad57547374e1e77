"""The local executor: one variant after another, each worker a child process here."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from quantbench.executors.base import Resources
from quantbench.process import forkserver
from quantbench.process.workers import run_python_worker, worker_environment

Item = TypeVar("Item")
Result = TypeVar("Result")


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

    def map(self, job: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
        return [job(item) for item in items]

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
        """Resources are not enforced here: one worker runs at a time on this machine."""
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
