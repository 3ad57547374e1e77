"""Run one untrusted Python program (prompt + model completion + tests) contained.

The program is model-written, so it is treated as hostile. Containment is layered, and
every layer is kept even where another one already covers the same attack:

1. bubblewrap: new pid, net, ipc, uts and cgroup namespaces; a read-only view of ``/``
   with the home directories, ``/tmp``, ``/var/tmp`` and ``/run`` replaced by empty
   tmpfs mounts (only the interpreter and its site-packages are bound back, read-only);
   a private temp dir as the only writable place; a cleared environment.
2. An unprivileged user: when we run as root, the program drops to ``nobody`` before
   any untrusted code runs, so file permissions apply and ``RLIMIT_NPROC`` is enforced.
3. Resource limits (address space, CPU seconds, file size, open files, processes).
4. A CPython audit hook denying process creation, sockets, ctypes, signals and writes
   outside the temp dir. Audit hooks are *not* a security boundary by themselves (code
   running in the same interpreter can subvert them); they only turn the common hostile
   actions into clean failures. The OS layers above are the boundary.
5. A wall-clock timeout in the parent that SIGKILLs the bubblewrap process group; the
   pid namespace then takes every descendant down with it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import resource
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

_NOBODY_ID = 65534
_FILE_SIZE_LIMIT_BYTES = 16 * 1024 * 1024
_OPEN_FILES_LIMIT = 256
_PROCESS_LIMIT = 64  # per real uid, so shared by all concurrent sandboxes running as nobody
_KILL_GRACE_S = 5.0
_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
_HIDDEN_DIRS = ("/root", "/home", "/tmp", "/var/tmp", "/run")

_BOOTSTRAP = r"""
import os, sys
program, workdir, uid, started_fd = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if uid >= 0:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
import ctypes, runpy, _posixsubprocess

def _no_fork_exec(*args, **kwargs):
    raise PermissionError("quantbench sandbox: process creation is not allowed")

_posixsubprocess.fork_exec = _no_fork_exec

def _guard(workdir):
    deny = frozenset({"os.fork", "os.forkpty", "os.system", "os.kill", "os.killpg",
        "signal.pthread_kill", "subprocess.Popen", "gc.get_objects", "gc.get_referrers",
        "gc.get_referents"})
    deny_prefixes = ("os.exec", "os.spawn", "os.posix_spawn", "pty.", "socket.", "ctypes.")
    path_events = frozenset({"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink",
        "os.link", "os.chmod", "os.chown", "os.truncate", "os.utime", "shutil.rmtree"})
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    inside, realpath, fsdecode = workdir.rstrip("/") + "/", os.path.realpath, os.fsdecode

    def outside(path):
        if isinstance(path, int):
            return False
        real = realpath(fsdecode(path))
        return real != "/dev/null" and not (real + "/").startswith(inside)

    def hook(event, args):
        if event in deny or event.startswith(deny_prefixes):
            raise PermissionError("quantbench sandbox: " + event + " is not allowed")
        if event == "import" and args[0] == "_posixsubprocess":
            raise PermissionError("quantbench sandbox: _posixsubprocess is not allowed")
        if event in ("object.__setattr__", "object.__delattr__") and args[0] is hook:
            raise PermissionError("quantbench sandbox: the audit hook is read-only")
        if event == "open" and args[2] & write_flags and outside(args[0]):
            raise PermissionError("quantbench sandbox: writing outside the temp dir")
        if event in path_events and any(
                outside(a) for a in args[:2] if isinstance(a, (str, bytes))):
            raise PermissionError("quantbench sandbox: " + event + " outside the temp dir")

    sys.addaudithook(hook)

_guard(workdir)
del _guard, _no_fork_exec
os.write(started_fd, b"1")
status_fd = os.dup2(started_fd, 64 + int.from_bytes(os.urandom(1), "big") % 150)
os.close(started_fd)
sys.argv = [program]
runpy.run_path(program, run_name="__main__")
os.write(status_fd, b"2")
"""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits.

    ``timeout_s`` is wall-clock seconds (the CPU-time limit is derived from it);
    ``memory_mb`` caps the address space (RLIMIT_AS) in MiB, so it counts reserved virtual
    memory, not only resident pages; ``max_output_bytes`` is how much of the end of stderr
    is kept.
    """

    timeout_s: float = 10.0
    memory_mb: int = 1024
    max_output_bytes: int = 64_000


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one contained run.

    ``status`` is "passed" iff the program ran to its end and exited with status 0 within the
    timeout (a program that calls ``sys.exit(0)`` or ``os._exit(0)`` before its tests ran
    has not passed them, as in lm-eval's ``code_eval``);
    "error" means the sandbox itself could not start, so the program was never judged.
    ``returncode`` is negative for death by signal (e.g. -9 after the timeout kill).
    """

    status: Literal["passed", "failed", "timeout", "error"]
    returncode: int | None
    wall_s: float
    stderr_tail: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _drop_to_nobody() -> bool:
    """Root ignores file permissions and RLIMIT_NPROC, so the program must not stay root."""
    return os.geteuid() == 0


def _visible_python_paths() -> list[str]:
    """Interpreter and site-packages dirs, which must stay readable inside the sandbox."""
    candidates = {
        Path(sys.executable).resolve().parent.parent,
        Path(sys.prefix),
        Path(sys.base_prefix),
        *(Path(p) for p in site.getsitepackages()),
    }
    real = sorted({str(p.resolve()) for p in candidates if p.exists()}, key=len)
    kept: list[str] = []
    for path in real:
        if not any(path == k or path.startswith(k + "/") for k in kept):
            kept.append(path)
    return kept


def _bwrap_args(workdir: str) -> list[str]:
    home = os.path.realpath(os.path.expanduser("~"))
    hidden = sorted({d for d in (*_HIDDEN_DIRS, home) if d != "/" and os.path.isdir(d)}, key=len)
    args = ["bwrap", "--ro-bind", "/", "/"]
    for directory in hidden:
        args += ["--tmpfs", directory]
    for path in _visible_python_paths():
        parent = next((d for d in hidden if path.startswith(d + "/")), None)
        if parent is None:
            continue
        for between in reversed(Path(path).parents):
            if len(str(between)) > len(parent):
                args += ["--perms", "0755", "--dir", str(between)]
        args += ["--ro-bind", path, path]
    args += ["--bind", workdir, workdir, "--chdir", workdir, "--proc", "/proc", "--dev", "/dev"]
    if _drop_to_nobody():
        args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
        args += ["--unshare-cgroup-try", "--cap-drop", "ALL"]
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-all"]
    args += ["--die-with-parent", "--new-session", "--clearenv"]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        **dict.fromkeys(_THREAD_ENV, "1"),
    }
    for key, value in env.items():
        args += ["--setenv", key, value]
    return args


def _limit_resources(limits: SandboxLimits) -> None:
    """Runs in the forked child before exec; every sandboxed process inherits the limits."""
    memory_bytes = limits.memory_mb * 1024 * 1024
    cpu_s = math.ceil(limits.timeout_s) + 1
    for kind, value in (
        (resource.RLIMIT_AS, memory_bytes),
        (resource.RLIMIT_CPU, cpu_s),
        (resource.RLIMIT_FSIZE, _FILE_SIZE_LIMIT_BYTES),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, _OPEN_FILES_LIMIT),
    ):
        resource.setrlimit(kind, (value, value))
    if _drop_to_nobody():
        # Counted per real uid, so only meaningful for nobody; a calling user's own threads
        # (a torch process has many) would make bwrap's clone fail. Without it, the pid
        # namespace and the timeout kill bound a fork bomb.
        resource.setrlimit(resource.RLIMIT_NPROC, (_PROCESS_LIMIT, _PROCESS_LIMIT))


def _read_tail(stream: IO[bytes], max_bytes: int) -> str:
    size = stream.seek(0, os.SEEK_END)
    stream.seek(max(0, size - max_bytes))
    return stream.read(max_bytes).decode("utf-8", errors="replace")


def run_untrusted(source: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run ``source`` as ``__main__`` inside the sandbox and report how it ended.

    Only stderr is kept (its last ``max_output_bytes``); stdout is discarded, since the
    verdict is the exit status. Output goes to an unlinked file, never a pipe, so a program
    that prints forever cannot block it; RLIMIT_FSIZE bounds that file.
    """
    workdir = tempfile.mkdtemp(prefix="quantbench-sandbox-")
    start = time.monotonic()
    try:
        program = Path(workdir) / "program.py"
        program.write_text(source, encoding="utf-8")
        uid = _NOBODY_ID if _drop_to_nobody() else -1
        if uid >= 0:
            os.chown(workdir, uid, _NOBODY_ID)
            os.chmod(workdir, 0o711)
        status_read, status_write = os.pipe()
        command = [
            *_bwrap_args(workdir),
            *(sys.executable, "-I", "-B", "-c", _BOOTSTRAP, str(program), workdir),
            *(str(uid), str(status_write)),
        ]
        with tempfile.TemporaryFile() as stderr:
            try:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    pass_fds=(status_write,),
                    start_new_session=True,
                    preexec_fn=functools.partial(_limit_resources, limits),
                )
            except OSError as exc:
                os.close(status_read)
                os.close(status_write)
                return SandboxResult("error", None, time.monotonic() - start, str(exc))
            os.close(status_write)
            timed_out = False
            try:
                returncode = proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                returncode = proc.wait(timeout=_KILL_GRACE_S)
            wall_s = time.monotonic() - start
            os.set_blocking(status_read, False)
            try:
                marks = os.read(status_read, 2)
            except BlockingIOError:
                marks = b""
            finally:
                os.close(status_read)
            started, finished = marks.startswith(b"1"), marks == b"12"
            tail = _read_tail(stderr, limits.max_output_bytes)
        if timed_out:
            return SandboxResult("timeout", returncode, wall_s, tail)
        if not started:
            return SandboxResult("error", returncode, wall_s, tail)
        passed = returncode == 0 and finished
        return SandboxResult("passed" if passed else "failed", returncode, wall_s, tail)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@functools.cache
def _bwrap_version() -> str | None:
    if shutil.which("bwrap") is None:
        return None
    done = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, timeout=10)
    return done.stdout.strip() or "bubblewrap (unknown version)"


@functools.cache
def sandbox_available() -> str | None:
    """None when untrusted code can run contained here, else why not and what to install.

    The check runs a trivial program through the full sandbox once per process, so it
    catches kernels or containers that forbid namespaces, not only a missing binary.
    """
    if not sys.platform.startswith("linux"):
        return "running untrusted code needs Linux (bubblewrap namespaces); use a Linux host"
    if _bwrap_version() is None:
        return (
            "bubblewrap (bwrap) is not installed; install it, e.g. `apt-get install bubblewrap` "
            "(Debian/Ubuntu) or `dnf install bubblewrap` (Fedora)"
        )
    probe = run_untrusted("pass\n", SandboxLimits(timeout_s=30.0))
    if probe.passed:
        return None
    detail = probe.stderr_tail.strip().splitlines()[-1:] or [f"status {probe.status}"]
    return (
        f"bubblewrap is installed but cannot start a sandbox here ({detail[0]}); allow user "
        "namespaces (sysctl kernel.unprivileged_userns_clone=1 or "
        "kernel.apparmor_restrict_unprivileged_userns=0) or run as root / in a container "
        "that permits namespaces"
    )


def describe_sandbox(limits: SandboxLimits = SandboxLimits()) -> dict[str, object]:
    """The containment layers in effect, for the provenance of evaluation results."""
    as_nobody = _drop_to_nobody()
    return {
        "isolation": _bwrap_version() or "unavailable",
        "namespaces": "pid, net, ipc, uts, cgroup" + ("" if as_nobody else ", user"),
        "network": "none (new network namespace)",
        "filesystem": "read-only root, private temp dir, home, /tmp, /var/tmp and /run hidden",
        "user": "nobody (uid 65534)" if as_nobody else "calling user in a user namespace",
        "environment": "cleared; PATH, HOME, TMPDIR, LANG and thread counts only",
        "audit_hook": "denies process creation, sockets, ctypes, signals, outside writes "
        "(not a security boundary on its own)",
        "timeout_s": limits.timeout_s,
        "cpu_limit_s": math.ceil(limits.timeout_s) + 1,
        "memory_mb": limits.memory_mb,
        "file_size_limit_bytes": _FILE_SIZE_LIMIT_BYTES,
        "open_files_limit": _OPEN_FILES_LIMIT,
        "process_limit": _PROCESS_LIMIT if as_nobody else "none (the pid namespace bounds it)",
        "max_output_bytes": limits.max_output_bytes,
    }
