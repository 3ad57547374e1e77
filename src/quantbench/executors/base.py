"""How a study's independent variant jobs are run: in order here, across a cluster elsewhere."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Executor(Protocol):
    name: str

    def map(self, job: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
        """Run `job` on every item; results in the order of `items`."""
        ...
