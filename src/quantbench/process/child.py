"""Worker side of a worker process: what a worker module calls from inside its child.

Kept apart from `workers.py` (the driver side) so that the fork server, which makes every
forked child die with its parent, imports nothing of the driver's.
"""

from __future__ import annotations

import json
import os
import signal
import sys
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
