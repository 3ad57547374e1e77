"""Errors that a user can fix, kept apart from bugs.

The CLI prints a `UserError` as one line and exits with status 2; any other exception is a
bug in quantbench (or a library) and keeps its traceback under `--debug`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do next."""


class StageFailed(Exception):
    """A stage of one variant failed; the study records it and goes on with the others."""

    def __init__(self, message: str, log_path: str | None = None) -> None:
        super().__init__(message)
        self.log_path = log_path


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' for the closest choice, or '' when none is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{matches[0]}"?)' if matches else ""
