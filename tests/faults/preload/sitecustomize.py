"""Fault injection for quantbench's own processes, loaded by every interpreter the tests
start with this folder on PYTHONPATH (the driver, the fork server and its workers, Ray's
processes and their workers). Inert unless QB_FAULT_OUT names a study folder.

It installs a `sys.audit` hook that sees every write-side file operation Python makes
(`open` for writing, `os.mkdir`, `os.rename`/`os.replace`, `os.remove`, `shutil.rmtree`) on
a path inside the study folder and sorts it into a stage kind by where it lands:
`stages/<kind>/...` is that stage's work (calibration, corpus, quantize, size, scores,
perplexity, ...), writes into an already committed stage folder or next to results.json are
the report's. Each process numbers the operations of every (kind, stage key) from 1.

- QB_FAULT_TRACE=FILE: append one JSON line per operation (pid, role, kind, key, n, time).
- QB_FAULT_PLAN=JSON list of points {"id", "kind", "key", "n", "delay_s", "action"}: at
  operation n of that stage (key null: any stage of the kind), after delay_s seconds,
  `action` happens once per id (`<id>.fired` in QB_FAULT_DIR records the operation,
  `<id>.done` the action; a delayed action happens at this process's next operation if
  that comes first): "kill-self" SIGKILLs this process, "kill-driver" the `quantbench run` process,
  "kill-parent" this process's parent (a Ray task's process), "pause" waits until
  QB_FAULT_DIR/<id>.release exists.

Nothing here is part of the product: the product has no hook and no switch for this.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

_OUT = os.environ.get("QB_FAULT_OUT")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_EVENTS = frozenset(
    {"open", "os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree"}
)


def _is_write(event: str, args: tuple[object, ...]) -> bool:
    if event != "open":
        return True
    mode, flags = args[1], args[2]
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def _classify(relative: tuple[str, ...], event: str) -> tuple[str, str | None] | None:
    """(stage kind, stage key) of an operation on `out/<relative>`, or None to ignore it."""
    if (
        not relative
        or relative[0] in ("logs", ".quantbench.lock")
        or relative[0].startswith(".tmp-probe-")
    ):
        return None
    if relative[0] == "artifacts" and len(relative) <= 2:
        return ("artifacts", None)  # the driver links artifacts/<variant> after quantize
    if relative[0] != "stages":
        return ("report", None)
    if len(relative) < 3:
        return None  # creating stages/<kind>/ itself
    kind, name = relative[1], relative[2]
    if name.startswith(".lock-"):
        return None
    if name.startswith(".tmp-"):
        return (kind, name[len(".tmp-") :].split("-")[0])
    if name.startswith(".partial-"):  # a task stage's saved chunks (StageStore.partial)
        return (kind, name[len(".partial-") :])
    if event == "shutil.rmtree" or len(relative) == 3:
        return (kind, name)  # placing or sweeping a stage folder
    return ("report", None)  # a file into a committed stage: a model card


class _State:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.counts: dict[tuple[str, str | None], int] = {}
        self.busy = False
        self.lock = threading.Lock()
        self.acted: set[str] = set()
        self.delayed: list[dict[str, object]] = []


_state = _State()


def _plan() -> list[dict[str, object]]:
    raw = os.environ.get("QB_FAULT_PLAN")
    return json.loads(raw) if raw else []


def _append(path: str, record: dict[str, object]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def _claim(point_id: str, record: dict[str, object]) -> bool:
    """True for the first process to reach point `point_id` (its marker file records where)."""
    marker = os.path.join(os.environ["QB_FAULT_DIR"], f"{point_id}.fired")
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    os.write(fd, json.dumps(record).encode())
    os.close(fd)
    return True


def _act(point: dict[str, object], how: str) -> None:
    """Carry out `point` once: its marker `<id>.done` says what was done, and how it got
    there (at its operation, after its delay, or at this process's next operation when that
    came first)."""
    with _state.lock:
        if point["id"] in _state.acted:
            return
        _state.acted.add(str(point["id"]))
    folder = os.environ["QB_FAULT_DIR"]
    action = str(point["action"])
    record = {"pid": os.getpid(), "action": action, "how": how, "t": time.time()}
    _append(os.path.join(folder, f"{point['id']}.done"), record)
    if action == "pause":
        while not os.path.exists(os.path.join(folder, f"{point['id']}.release")):
            time.sleep(0.05)
        return
    target = {
        "kill-self": os.getpid(),
        "kill-parent": os.getppid(),
        "kill-driver": int(os.environ["QB_FAULT_DRIVER_PID"]),
    }[action]
    os.kill(target, signal.SIGKILL)
    if target == os.getpid():
        time.sleep(60)  # the signal is on its way: write nothing more meanwhile


def _hook(event: str, args: tuple[object, ...]) -> None:
    if event not in _EVENTS or _state.busy or not args:
        return
    path = args[0]
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str) or not _OUT:
        return
    if not path.startswith(_OUT + os.sep):
        if os.path.isabs(path) or not os.path.abspath(path).startswith(_OUT + os.sep):
            return
        path = os.path.abspath(path)
    if not _is_write(event, args):
        return
    where = _classify(tuple(path[len(_OUT) + 1 :].split(os.sep)), event)
    if where is None:
        return
    _state.busy = True
    try:
        _observe(event, path, where)
    finally:
        _state.busy = False


def _observe(event: str, path: str, where: tuple[str, str | None]) -> None:
    kind, key = where
    n = _state.counts.get(where, 0) + 1
    _state.counts[where] = n
    role = "driver" if os.environ.get("QB_FAULT_DRIVER_PID") == str(os.getpid()) else "worker"
    record = {
        "pid": os.getpid(),
        "role": role,
        "kind": kind,
        "key": key,
        "n": n,
        "event": event,
        "path": os.path.relpath(path, _OUT),
        "t": time.time(),
    }
    trace = os.environ.get("QB_FAULT_TRACE")
    if trace:
        _append(trace, record)
    for point in list(_state.delayed):  # this process got further than the delay
        _act(point, "at the next operation, before the delay ran out")
    for point in _plan():
        if point["kind"] != kind or point["n"] != n or point.get("key") not in (None, key):
            continue
        if not _claim(str(point["id"]), record):
            continue
        delay = float(point.get("delay_s") or 0.0)  # type: ignore[arg-type]
        if delay > 0:
            _state.delayed.append(point)
            threading.Thread(target=_delayed, args=(point, delay), daemon=True).start()
        else:
            _act(point, "at its operation")


def _delayed(point: dict[str, object], delay: float) -> None:
    time.sleep(delay)
    _act(point, "after its delay")


if _OUT:
    _OUT = os.path.abspath(_OUT)
    os.environ.setdefault("QB_FAULT_DRIVER_PID", str(os.getpid()))
    os.register_at_fork(after_in_child=_state.reset)
    sys.addaudithook(_hook)


def _chain_to_the_next_sitecustomize() -> None:
    """This module shadows any other sitecustomize (Debian's installs one): run that one too."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_chain_to_the_next_sitecustomize()
