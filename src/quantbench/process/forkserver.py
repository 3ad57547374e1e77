"""Start workers by forking a process that has already imported torch and transformers.

A worker started as a fresh `python -m quantbench.<worker>` spends 6-12 s importing torch
and transformers before it does any work (measured on the 2-core CPUs these machines come
in), and a study starts two workers per variant. The fork server pays those imports once,
in the background while the driver prepares calibration data and the corpus, then forks a
child per worker. The child gets what `python -m` would give it: its own session (process
group), the request's environment, working directory and argv, stdin from /dev/null,
stdout and stderr on the caller's pipes, and SIGKILL when its parent dies (the server dies
with the driver the same way). It runs the worker module as `__main__` and exits with its
status, which the server reports once it has reaped the child.

Only modules that every worker imports anyway are preloaded. A forked worker's peak RSS is
lower than a fresh interpreter's (about 110 MB for a tiny model here): library pages it
shares with the server and never touches are not counted as its own. Linux only (it needs
pidfds and parent-death signals); elsewhere, with QUANTBENCH_FORK_SERVER=0, or when the
server cannot start, workers start as fresh interpreters.

Server side: `python -m quantbench.process.forkserver CONTROL_FD MODULE...`. Over CONTROL_FD (a Unix
SOCK_SEQPACKET socket) it first sends `{"ready": true}` or `{"error": "..."}`; then each
message `{"module", "argv", "env", "cwd"}` carries three descriptors (a reply socket, stdout,
stderr), and the server answers on the reply socket with `{"pid": N}` and, later,
`{"exit": status}` (negative: killed by that signal, as subprocess reports it).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from quantbench.process.child import die_with_parent

PRELOAD = (
    "torch",
    "transformers",
    "transformers.modeling_utils",
    "transformers.generation",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
)
"""What both workers import before their first line of work (quantization adds llm-compressor,
under a second; evaluation adds nothing this large)."""

READY_TIMEOUT_S = 300.0
"""How long the driver waits for the preload; past it, workers start as fresh interpreters."""

_MESSAGE_BYTES = 1 << 20
_POLL_S = 1.0
"""How often a driver thread waiting on the server checks that the server still lives."""


def _receive(sock: socket.socket, server: subprocess.Popen[bytes] | None) -> bytes:
    """The next message on `sock`, or b"" once `server` has exited: a dead server's reply
    sockets do not always read as closed (a descriptor still in flight in an unread message
    keeps them open), and a driver thread must never wait on one for ever."""
    sock.settimeout(_POLL_S)
    try:
        while True:
            try:
                return sock.recv(_MESSAGE_BYTES)
            except TimeoutError:
                if server is None or server.poll() is not None:
                    return b""
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(None)


def supported() -> bool:
    """Whether workers may start from a fork server here."""
    if os.environ.get("QUANTBENCH_FORK_SERVER", "1") == "0":
        return False
    return sys.platform.startswith("linux") and hasattr(os, "pidfd_open")


SET_BY_PRELOAD = frozenset({"KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK", "TORCHINDUCTOR_CACHE_DIR"})
"""Variables importing torch sets in the process that imports it. The driver imports torch
after starting the server (to tokenize), so its environment gains them; the server imported
torch too, and a worker gets the driver's environment whole, so they are no reason to start
the server again (which costs the whole preload, several seconds)."""


def _same_environment(first: Mapping[str, str], second: Mapping[str, str]) -> bool:
    keys = (set(first) | set(second)) - SET_BY_PRELOAD
    return all(first.get(key) == second.get(key) for key in keys)


class ForkServerUnavailable(RuntimeError):
    """The server could not start or died; the caller starts a fresh interpreter instead."""


class ForkedWorker:
    """A child of the fork server, seen from the driver: a pid, a process group, a status."""

    def __init__(
        self, pid: int, reply: socket.socket, server: subprocess.Popen[bytes] | None = None
    ) -> None:
        self.pid = pid
        self._reply = reply
        self._server = server
        self.returncode: int | None = None

    def wait(self) -> int:
        """Block until the server reports the exit status (a killed server: SIGKILL)."""
        if self.returncode is None:
            data = _receive(self._reply, self._server)
            if data:
                self.returncode = int(json.loads(data)["exit"])
            else:  # the server died, and its children with it (parent-death signal)
                self.kill()
                self.returncode = -signal.SIGKILL
            self._reply.close()
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the child's whole process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


class ForkServer:
    """The driver's handle on one fork server. Building it starts nothing; `start` begins the
    preload in the background; `spawn` waits for it, then forks a worker."""

    def __init__(self, preload: Sequence[str] = PRELOAD) -> None:
        self.preload = tuple(preload)
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._env: dict[str, str] | None = None
        self._ready = False
        self._broken: str | None = None
        self._lock = threading.Lock()
        # Linux sends the parent-death signal the server asks for (`die_with_parent`) when
        # the *thread* that started it exits, not the process: a server restarted from a
        # short-lived job thread would die with that job. It is always started from this
        # pool's one thread, which lives as long as the handle.
        self._starter: ThreadPoolExecutor | None = None

    def start(self, env: Mapping[str, str]) -> None:
        """Start the server with `env` (it is what the preloaded modules saw at import);
        a server started with another environment is replaced."""
        with self._lock:
            self._start(dict(env))

    def _start(self, env: dict[str, str]) -> None:
        if (
            self._process is not None
            and self._env is not None
            and _same_environment(self._env, env)
            and self._broken is None
        ):
            return
        self._stop()
        self._env, self._ready, self._broken = env, False, None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if self._starter is None:
            self._starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fork-server")
        try:
            self._process = self._starter.submit(
                subprocess.Popen,
                [sys.executable, "-m", __name__, str(theirs.fileno()), *self.preload],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            ).result()
        except OSError as exc:
            ours.close()
            self._broken = f"could not start: {exc}"
        else:
            self._control = ours
        finally:
            theirs.close()

    def spawn(
        self,
        module: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        stdout_fd: int,
        stderr_fd: int,
    ) -> ForkedWorker:
        """Fork `python -m module *argv` with `env`; raise ForkServerUnavailable if the
        server cannot do it (the caller then starts a fresh interpreter)."""
        with self._lock:
            self._start(dict(env))
            control = self._await_ready()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            request = {"module": module, "argv": list(argv), "env": dict(env), "cwd": os.getcwd()}
            try:
                socket.send_fds(
                    control, [json.dumps(request).encode()], [theirs.fileno(), stdout_fd, stderr_fd]
                )
                data = _receive(ours, self._process)
            except OSError as exc:
                ours.close()
                raise self._fail(f"lost the server: {exc}") from None
            finally:
                theirs.close()
            if not data:
                ours.close()
                raise self._fail("the server died")
            return ForkedWorker(int(json.loads(data)["pid"]), ours, self._process)

    def _await_ready(self) -> socket.socket:
        if self._broken is not None or self._control is None:
            raise ForkServerUnavailable(self._broken or "not started")
        if not self._ready:
            self._control.settimeout(READY_TIMEOUT_S)
            try:
                data = self._control.recv(_MESSAGE_BYTES)
            except OSError as exc:
                raise self._fail(f"no answer in {READY_TIMEOUT_S:.0f} s: {exc}") from None
            finally:
                self._control.settimeout(None)
            message = json.loads(data) if data else {"error": "it exited while importing"}
            if "error" in message:
                raise self._fail(f"preload failed: {message['error']}")
            self._ready = True
        return self._control

    def _fail(self, reason: str) -> ForkServerUnavailable:
        self._stop()
        self._broken = reason
        return ForkServerUnavailable(reason)

    def _stop(self) -> None:
        if self._control is not None:
            self._control.close()  # the server reads EOF and exits
            self._control = None
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def close(self) -> None:
        """Stop the server; workers it started and that still run are not waited for."""
        with self._lock:
            self._stop()
            if self._starter is not None:
                self._starter.shutdown(wait=False)
                self._starter = None


# --- server side ---------------------------------------------------------------------------


def _serve(control: socket.socket, preload: Sequence[str]) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for name in preload:
            importlib.import_module(name)
    except BaseException:
        control.send(json.dumps({"error": traceback.format_exc(limit=3)}).encode())
        return
    sys.stdout.flush()
    sys.stderr.flush()
    control.send(b'{"ready": true}')
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, None)
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, reply socket)
    while True:
        for key, _ in selector.select():
            if key.data is None:
                data, fds, _, _ = socket.recv_fds(control, _MESSAGE_BYTES, 3)
                if not data:
                    return
                reply = socket.socket(fileno=fds[0])
                pid = os.fork()
                if pid == 0:
                    for pidfd, (_, other) in children.items():
                        os.close(pidfd)
                        other.close()
                    selector.close()
                    control.close()
                    reply.close()
                    _run_child(json.loads(data), fds[1], fds[2])
                os.close(fds[1])
                os.close(fds[2])
                pidfd = os.pidfd_open(pid)
                children[pidfd] = (pid, reply)
                selector.register(pidfd, selectors.EVENT_READ, pid)
                with contextlib.suppress(OSError):
                    reply.send(json.dumps({"pid": pid}).encode())
            else:
                pid, reply = children.pop(key.fd)
                selector.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):
                    reply.send(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode())
                reply.close()


def _run_child(request: dict[str, Any], stdout_fd: int, stderr_fd: int) -> None:
    """In the forked child: become the worker `python -m module` would have started."""
    import runpy

    code = 1
    try:
        os.setsid()
        die_with_parent()
        _name_process(request["module"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        for fd in {devnull, stdout_fd, stderr_fd} - {0, 1, 2}:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [request["module"], *request["argv"]]
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _name_process(module: str) -> None:
    """Name the child after its worker in top and /proc (`quantbench.quantize` shows as
    `qb-quantize`): its command line is still the server's, which fork cannot change."""
    import ctypes

    pr_set_name = 15
    name = ("qb-" + module.rsplit(".", 1)[-1])[:15].encode()
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_name, ctypes.c_char_p(name), 0, 0, 0)


if __name__ == "__main__":
    _serve(socket.socket(fileno=int(sys.argv[1])), sys.argv[2:])
