"""Workers forked from the fork server behave as `python -m module` would: argv, environment,
working directory, output, exit status, own process group, death with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import process_gone
from quantbench.process import forkserver
from quantbench.process.forkserver import ForkServer, ForkServerUnavailable
from quantbench.process.workers import run_python_worker, worker_environment

pytestmark = pytest.mark.skipif(not forkserver.supported(), reason="needs Linux pidfds")

WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    request = json.loads(open(sys.argv[1]).read())
    print(json.dumps({"phase": "started", "pid": os.getpid(), "pgid": os.getpgid(0),
                      "cwd": os.getcwd(), "marker": os.environ.get("QB_TEST_MARKER"),
                      "name": __name__, "preloaded": "email.mime.text" in sys.modules,
                      "comm": open("/proc/self/comm").read().strip()}),
          flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    if request["action"] == "sleep":
        time.sleep(600)
    if request["action"] == "raise":
        raise ValueError("boom")
    sys.exit(request.get("code", 0))
    """
)


@pytest.fixture
def worker_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "qb_fake_worker.py").write_text(WORKER)
    monkeypatch.setenv("PYTHONPATH", str(package))
    monkeypatch.setenv("QB_TEST_MARKER", "first")
    return "qb_fake_worker"


def _run(
    module: str, tmp_path: Path, server: ForkServer | None, **request: object
) -> tuple[int, list[dict[str, object]], str]:
    events: list[dict[str, object]] = []
    log = tmp_path / "worker.log"
    code = run_python_worker(
        module, dict(request), tmp_path / "request.json", log, events.append, fork_server=server
    )
    return code, events, log.read_text()


def test_a_forked_worker_is_what_python_m_would_start(
    worker_module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ForkServer(preload=("email.mime.text",))
    try:
        monkeypatch.chdir(tmp_path)
        code, events, log = _run(worker_module, tmp_path, server, action="exit", code=0)
        assert code == 0, log
        (event,) = events
        assert event["name"] == "__main__" and event["preloaded"] is True
        assert event["comm"] == "qb-qb_fake_work"  # named after its module, 15 bytes at most
        assert event["pid"] == event["pgid"] != os.getpgid(0)  # a session of its own
        assert event["cwd"] == str(tmp_path) and event["marker"] == "first"
        assert "to stderr" in log and "fork server unavailable" not in log

        assert _run(worker_module, tmp_path, server, action="exit", code=3)[0] == 3
        code, _, log = _run(worker_module, tmp_path, server, action="raise")
        assert code == 1 and "ValueError: boom" in log

        monkeypatch.setenv("QB_TEST_MARKER", "second")  # a new environment: a new server
        _, events, _ = _run(worker_module, tmp_path, server, action="exit")
        assert events[0]["marker"] == "second"
    finally:
        server.close()


def test_an_interrupted_driver_kills_the_forked_worker(worker_module: str, tmp_path: Path) -> None:
    server = ForkServer(preload=())
    started: list[int] = []

    def on_event(event: dict[str, object]) -> None:
        started.append(int(event["pid"]))  # type: ignore[call-overload]
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the worker runs

    # A runner started as a background shell job inherits SIGINT ignored; then Ctrl-C never
    # reaches Python and this test would wait out the worker's 600-s sleep.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt, match=r"^$"):  # SIGINT carries no message
            run_python_worker(
                worker_module,
                {"action": "sleep"},
                tmp_path / "request.json",
                tmp_path / "worker.log",
                on_event,
                fork_server=server,
            )
        assert started and process_gone(started[0], 10)
    finally:
        signal.signal(signal.SIGINT, previous)
        server.close()


DRIVER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from quantbench.process.forkserver import ForkServer
    from quantbench.process.workers import run_python_worker
    server = ForkServer(preload=())
    folder = Path(sys.argv[1])
    run_python_worker(sys.argv[2], {"action": "sleep"}, folder / "request.json",
                      folder / "worker.log", lambda event: print(event["pid"], flush=True),
                      fork_server=server)
    """
)


def test_a_killed_driver_takes_the_server_and_its_workers_along(
    worker_module: str, tmp_path: Path
) -> None:
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path), worker_module],
        stdout=subprocess.PIPE,
        text=True,
        env=worker_environment(os.environ),
    )
    assert driver.stdout is not None
    worker_pid = int(driver.stdout.readline())
    server_pid = _parent_of(worker_pid)
    driver.kill()
    driver.wait()
    assert process_gone(server_pid, 10), "the fork server outlived its driver"
    assert process_gone(worker_pid, 10), "the worker outlived its driver"


def _parent_of(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).ppid())


def test_a_server_that_cannot_preload_falls_back_to_a_fresh_python(
    worker_module: str, tmp_path: Path
) -> None:
    server = ForkServer(preload=("no_such_module_anywhere",))
    try:
        with pytest.raises(ForkServerUnavailable, match="no_such_module_anywhere"):
            server.spawn(worker_module, [], worker_environment(os.environ), 1, 2)
        code, events, log = _run(worker_module, tmp_path, server, action="exit")
        assert code == 0 and events[0]["preloaded"] is False
        assert "fork server unavailable" in log and "starting a fresh python" in log
    finally:
        server.close()


def test_the_environment_switch_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTBENCH_FORK_SERVER", "0")
    assert not forkserver.supported()
    from quantbench.executors.local import LocalExecutor

    executor = LocalExecutor()
    assert executor.describe() == {"executor": "local", "fork_server": False}
    executor.prestart()
    executor.close()


def test_server_exit_status_is_reported_like_subprocess(tmp_path: Path) -> None:
    """A worker killed by a signal reads as -signal, as subprocess.Popen reports it."""
    (tmp_path / "qb_suicide.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**worker_environment(os.environ), "PYTHONPATH": str(tmp_path)}
    server = ForkServer(preload=())
    try:
        read, write = os.pipe()
        worker = server.spawn("qb_suicide", [], env, write, write)
        os.close(write)
        assert worker.wait() == -signal.SIGKILL
        os.close(read)
    finally:
        server.close()


def test_a_server_started_from_a_thread_that_ended_still_serves(
    worker_module: str, tmp_path: Path
) -> None:
    """Jobs run in threads of the driver: the server a job's thread started (or restarted for
    a new environment) must outlive that thread, whose exit Linux would otherwise answer with
    the server's parent-death signal."""
    server = ForkServer(preload=())
    try:
        thread = threading.Thread(target=server.start, args=(worker_environment(os.environ),))
        thread.start()
        thread.join()
        time.sleep(0.5)  # a parent-death signal would have landed by now
        for _ in range(2):
            code, events, log = _run(worker_module, tmp_path, server, action="exit", code=0)
            assert code == 0 and events, log
            assert "fork server unavailable" not in log
    finally:
        server.close()


def test_variables_torch_sets_on_import_do_not_restart_the_server() -> None:
    before = {"PATH": "/bin"}
    after = {**before, "KMP_DUPLICATE_LIB_OK": "True", "TORCHINDUCTOR_CACHE_DIR": "/tmp/x"}
    assert forkserver._same_environment(before, after)
    assert not forkserver._same_environment(before, {**before, "HF_HOME": "/elsewhere"})
