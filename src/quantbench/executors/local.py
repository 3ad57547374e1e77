"""The local executor: one variant after another, in this process."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class LocalExecutor:
    name = "local"

    def map(self, job: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
        return [job(item) for item in items]
