"""Hostile programs must be contained by quantbench.sandbox and never score as passed."""

from __future__ import annotations

import functools
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from quantbench import sandbox
from quantbench.sandbox import SandboxLimits, describe_sandbox, run_untrusted, sandbox_available

_REASON = sandbox_available()
if _REASON is not None:
    pytest.skip(f"sandbox unavailable: {_REASON}", allow_module_level=True)

_SHORT = SandboxLimits(timeout_s=2.0)
_KILL_SLACK_S = 3.0


def _processes_mentioning(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if token.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _run_without_audit_hook(code: str, timeout_s: float = 5.0) -> tuple[int, str]:
    """The bubblewrap and rlimit layers alone, as if the audit hook had been bypassed."""
    workdir = tempfile.mkdtemp(prefix="quantbench-sandbox-")
    try:
        command = [*sandbox._bwrap_args(workdir), sys.executable, "-I", "-B", "-c", code]
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=functools.partial(sandbox._limit_resources, SandboxLimits()),
        )
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate(timeout=_KILL_SLACK_S)
        return proc.returncode, out.decode(errors="replace")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def ssh_secret() -> Iterator[tuple[Path, str]]:
    ssh_dir = Path.home() / ".ssh"
    created_dir = not ssh_dir.exists()
    if created_dir:
        ssh_dir.mkdir(mode=0o700)
    secret_file = ssh_dir / f"quantbench_sandbox_test_secret_{uuid.uuid4().hex}"
    content = f"SECRET-{uuid.uuid4().hex}"
    secret_file.write_text(content)
    secret_file.chmod(0o600)
    try:
        yield secret_file, content
    finally:
        secret_file.unlink(missing_ok=True)
        if created_dir:
            shutil.rmtree(ssh_dir, ignore_errors=True)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield server
    finally:
        server.close()


def _no_connection(server: socket.socket) -> bool:
    readable, _, _ = select.select([server], [], [], 0.5)
    return not readable


def test_describe_sandbox_lists_every_layer() -> None:
    layers = describe_sandbox(SandboxLimits(memory_mb=512))
    assert str(layers["isolation"]).startswith("bubblewrap")
    assert layers["network"] == "none (new network namespace)"
    assert "read-only root" in str(layers["filesystem"])
    assert layers["memory_mb"] == 512
    assert {"audit_hook", "user", "cpu_limit_s", "process_limit", "max_output_bytes"} <= set(layers)


@pytest.mark.parametrize(
    ("source", "status"),
    [
        ("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\n", "passed"),
        ("def add(a, b):\n    return a - b\nassert add(2, 3) == 5\n", "failed"),
        ("import sys\nsys.exit(3)\n", "failed"),
        ("import sys\nsys.exit(0)\nassert False\n", "failed"),
        ("import os\nos._exit(0)\nassert False\n", "failed"),
    ],
)
def test_only_a_program_that_runs_to_its_end_passes(source: str, status: str) -> None:
    result = run_untrusted(source)
    assert result.status == status
    assert result.passed is (status == "passed")


def test_numpy_works_inside() -> None:
    source = "import numpy as np\nassert np.allclose(np.linalg.inv(np.eye(3) * 2), np.eye(3) / 2)\n"
    result = run_untrusted(source)
    assert result.passed, result.stderr_tail


def test_writing_and_reading_in_cwd_works() -> None:
    source = (
        "with open('f.txt', 'w') as f:\n    f.write('hi')\nassert open('f.txt').read() == 'hi'\n"
    )
    result = run_untrusted(source)
    assert result.passed, result.stderr_tail


def test_temp_dir_is_removed_after_each_run() -> None:
    for source, limits in [
        ("import os, sys\nsys.stderr.write(os.getcwd())\n", SandboxLimits()),
        (
            "import os, sys\nsys.stderr.write(os.getcwd())\nsys.stderr.flush()\nwhile True: pass\n",
            _SHORT,
        ),
    ]:
        result = run_untrusted(source, limits)
        workdir = result.stderr_tail.strip()
        assert "quantbench-sandbox-" in workdir
        assert not os.path.exists(workdir)


def test_environment_is_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTBENCH_TEST_TOKEN", "leak")
    result = run_untrusted("import os\nassert 'QUANTBENCH_TEST_TOKEN' not in os.environ\n")
    assert result.passed, result.stderr_tail


def test_infinite_loop_times_out() -> None:
    result = run_untrusted("while True:\n    pass\n", _SHORT)
    assert result.status == "timeout"
    assert not result.passed
    assert result.wall_s < _SHORT.timeout_s + _KILL_SLACK_S


def test_printing_forever_is_bounded() -> None:
    limits = SandboxLimits(timeout_s=3.0, max_output_bytes=1000)
    start = time.monotonic()
    result = run_untrusted(
        "import sys\nwhile True:\n    print('x' * 999, file=sys.stderr)\n", limits
    )
    assert not result.passed
    assert len(result.stderr_tail) <= limits.max_output_bytes
    assert time.monotonic() - start < limits.timeout_s + _KILL_SLACK_S


def test_memory_bomb_fails_quickly() -> None:
    result = run_untrusted("x = bytearray(4 * 1024**3)\n")
    assert not result.passed
    assert "MemoryError" in result.stderr_tail
    assert result.wall_s < 5.0


def test_fork_bomb_is_contained_and_leaves_nothing() -> None:
    token = uuid.uuid4().hex
    result = run_untrusted(f"import os\n# {token}\nwhile True:\n    os.fork()\n", _SHORT)
    assert not result.passed
    assert _processes_mentioning("quantbench-sandbox-") == []


@pytest.mark.parametrize(
    "source",
    [
        "import subprocess\nsubprocess.run(['true'], check=True)\n",
        "import os\nassert os.system('true') == 0\n",
        "import os\nos.posix_spawn('/bin/true', ['true'], {})\n",
        "import os\nos.execv('/bin/true', ['true'])\n",
        "import pty\npty.spawn('/bin/true')\n",
        "import os, signal\nos.kill(1, signal.SIGKILL)\n",
        "import ctypes\nctypes.CDLL(None).system(b'true')\n",
    ],
)
def test_process_creation_signals_and_ctypes_are_denied(source: str) -> None:
    result = run_untrusted(source)
    assert not result.passed
    assert "quantbench sandbox" in result.stderr_tail


def test_timeout_kills_every_descendant() -> None:
    token = uuid.uuid4().hex
    code = f"import os, time\n# {token}\nfor _ in range(3):\n    os.fork()\ntime.sleep(300)\n"
    returncode, _ = _run_without_audit_hook(code, timeout_s=1.0)
    assert returncode == -signal.SIGKILL
    deadline = time.monotonic() + _KILL_SLACK_S
    while _processes_mentioning(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_mentioning(token) == []


@pytest.mark.parametrize("how", ["open", "os.open"])
def test_writing_outside_is_denied(tmp_path: Path, how: str) -> None:
    targets = [tmp_path / "escape.txt", Path(f"/tmp/quantbench-escape-{uuid.uuid4().hex}")]
    for target in targets:
        if how == "open":
            source = f"open({str(target)!r}, 'w').write('x')\n"
        else:
            source = f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))\n"
        result = run_untrusted(source)
        assert not result.passed
        assert not target.exists()
    code = f"open({str(targets[0])!r}, 'w').write('x')\n"
    returncode, _ = _run_without_audit_hook(code)
    assert returncode != 0
    assert not targets[0].exists()


def test_network_is_unreachable(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
    result = run_untrusted(code)
    assert not result.passed
    assert _no_connection(listener)
    returncode, output = _run_without_audit_hook(code)
    assert returncode != 0, output
    assert _no_connection(listener)


def test_home_secrets_are_hidden(ssh_secret: tuple[Path, str]) -> None:
    secret_file, content = ssh_secret
    for path in (f"~/.ssh/{secret_file.name}", str(secret_file)):
        code = f"import os, sys\nsys.stderr.write(open(os.path.expanduser({path!r})).read())\n"
        result = run_untrusted(code)
        assert not result.passed
        assert content not in result.stderr_tail
        assert "FileNotFoundError" in result.stderr_tail
        returncode, output = _run_without_audit_hook(code)
        assert returncode != 0
        assert content not in output
