"""Run a quantbench module as a child process and follow it.

Quantization and evaluation each run in a process of their own (a fresh interpreter, or a
fork of the fork server, `forkserver.py`, which has torch and transformers imported already):
llm-compressor keeps global state, peak-memory figures must belong to one variant, and a
crash must not take the study down. The child reads a JSON request, prints JSON progress
events on stdout (`child.emit`) and writes its result file last; its whole output is kept in
a log. Killing the parent kills the child (it asks Linux for SIGKILL on parent death,
`child.die_with_parent`), and an interrupted parent kills the child's process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from subprocess import Popen
from typing import IO, Any, TextIO

from quantbench.errors import StageFailed
from quantbench.process.forkserver import ForkedWorker, ForkServer, ForkServerUnavailable


def _pump(
    stream: IO[bytes], log: TextIO, on_line: Callable[[str], None], lock: threading.Lock
) -> None:
    """Read the child's stream to its end, passing each line on and copying it to the log.
    A log that cannot be written (a full disk) stops being written, with its last line
    saying so where it can, while reading goes on: a reader that stopped would leave the
    child blocked on a full pipe, and the run would hang instead of failing."""
    buffer = ""
    logging = True
    while True:
        chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
        if not chunk:
            break
        text = chunk.decode(errors="replace")
        buffer += text
        parts = re.split(r"[\r\n]", buffer)
        buffer = parts.pop()
        for part in parts:
            if part:
                on_line(part)
        if logging:
            with lock:
                try:
                    log.write(text)
                    log.flush()
                except OSError as exc:
                    logging = False
                    with contextlib.suppress(OSError):
                        log.write(f"\n[quantbench] log cut short: {exc.strerror}\n")
    if buffer:
        on_line(buffer)


def run_python_worker(
    module: str,
    request: dict[str, Any],
    request_path: Path,
    log_path: Path,
    on_event: Callable[[dict[str, Any]], None],
    on_stderr: Callable[[str], None] = lambda _: None,
    resources: dict[str, float] | None = None,
    fork_server: ForkServer | None = None,
    shares_cores: bool = False,
) -> int:
    """Run `python -m module request_path` to completion here; return its exit status.

    With `fork_server` the child is forked from it (torch and transformers already imported)
    instead of starting a fresh interpreter; a server that cannot do it is noted in the log
    and the fresh interpreter used. `resources` is accepted for the executors' `Launch`
    interface; a local child process takes what the machine has. `shares_cores`: the
    worker's threads outnumber its cores (`worker_environment`)."""
    request_path.write_text(json.dumps(request, indent=2))
    env = worker_environment(os.environ, shares_cores)
    lock = threading.Lock()

    def on_stdout(line: str) -> None:
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                on_event(json.loads(line))

    with open(log_path, "w") as log:
        child = _start_child(module, str(request_path), env, fork_server, log)
        readers = [
            threading.Thread(target=_pump, args=(child.stdout, log, on_stdout, lock), daemon=True),
            threading.Thread(target=_pump, args=(child.stderr, log, on_stderr, lock), daemon=True),
        ]
        try:
            for reader in readers:
                reader.start()
            returncode = child.wait()
        except BaseException:
            child.kill()
            child.wait()
            raise
        finally:  # the child's pipes are closed: the readers end before the log closes
            for reader in readers:
                if reader.is_alive():
                    reader.join(timeout=5)
            child.stdout.close()
            child.stderr.close()
    return returncode


SHARED_CORES_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}
"""For a worker with more threads than cores (`schedule.Placement.shares_cores`). OpenMP's
threads spin while they wait for each other at the end of every parallel region (GNU
OpenMP: 300,000 turns); taking turns on one core, the spinning thread holds the core that
the thread it waits for needs. Measured on the built-in model (2-core AMX Xeon, bf16, 2
threads on 1 core): 8.9 s per 4 x 512-token forward spinning, 1.2 s waiting passively
(1.36 s on 1 thread). Passive waiting slows a decode step by 70% on as many cores as
threads, so only such workers get it; OpenMP reads it when torch is imported, so they come
from a fork server of their own."""


def worker_environment(base: Mapping[str, str], shares_cores: bool = False) -> dict[str, str]:
    """A worker's environment: the driver's, unbuffered, with tokenizers' threads off (the
    driver may have used them before the fork), and OpenMP's threads waiting passively where
    they share cores."""
    environment = {**base, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if shares_cores:
        environment.update(SHARED_CORES_ENVIRONMENT)
    return environment


class _Child:
    """A started worker: its output streams, and how to wait for it or kill its group."""

    def __init__(self, stdout: IO[bytes], stderr: IO[bytes], process: Popen[bytes] | ForkedWorker):
        self.stdout, self.stderr, self._process = stdout, stderr, process

    def wait(self) -> int:
        return self._process.wait()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)


def _start_child(
    module: str, argument: str, env: dict[str, str], fork_server: ForkServer | None, log: TextIO
) -> _Child:
    if fork_server is not None:
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        try:
            forked = fork_server.spawn(module, [argument], env, out_write, err_write)
        except ForkServerUnavailable as exc:
            for fd in (out_read, err_read):
                os.close(fd)
            log.write(f"[quantbench] fork server unavailable ({exc}); starting a fresh python\n")
        else:
            stdout = open(out_read, "rb", buffering=0)  # noqa: SIM115 (the caller closes it)
            return _Child(stdout, open(err_read, "rb", buffering=0), forked)
        finally:
            os.close(out_write)
            os.close(err_write)
    process = subprocess.Popen(
        [sys.executable, "-m", module, argument],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    assert process.stdout is not None and process.stderr is not None
    return _Child(process.stdout, process.stderr, process)


def failure(what: str, returncode: int, log_path: Path) -> StageFailed:
    """A StageFailed naming the most telling line of the child's log."""
    tail = (
        log_path.read_text(errors="replace").strip().splitlines()[-15:] if log_path.exists() else []
    )
    reason = next(
        (line for line in reversed(tail) if "Error" in line or "error" in line),
        tail[-1] if tail else f"exit code {returncode}",
    )
    return StageFailed(f"{what} failed (exit code {returncode}): {reason.strip()}", str(log_path))
