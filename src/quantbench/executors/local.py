"""The local executor: one variant after another, each worker a child process here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from quantbench.executors.base import Resources
from quantbench.workers import run_python_worker

Item = TypeVar("Item")
Result = TypeVar("Result")


class LocalExecutor:
    name = "local"

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
        return run_python_worker(module, request, request_path, log_path, on_event, on_stderr)

    def describe(self) -> dict[str, Any]:
        return {"executor": "local"}

    def close(self) -> None:
        return None
