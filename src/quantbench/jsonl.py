"""Reading JSON-lines files (plain or gzipped) with errors that name the file and line."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from quantbench.errors import UserError


def json_lines(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ('path:line', row) for every non-blank line of `path` (`.gz`: gzipped); a line
    that is not JSON is a `UserError` naming it."""
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: not valid JSON ({exc.msg})") from None
