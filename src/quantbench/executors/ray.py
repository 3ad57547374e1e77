"""The Ray executor: each variant's workers run as Ray tasks on a cluster.

`quantbench run --executor ray` starts a local Ray instance, or joins one with `--ray-
address auto|ray://host:10001|host:6379`. The study's jobs run concurrently in the driver
(`quantbench.schedule`); the worker process of each stage (quantize one variant, evaluate
one variant) runs inside a Ray task that asks for the stage's resources
(`executors.resources`), streams its progress events back through a Ray queue, and is
retried by Ray when the process running it dies. A retried stage starts from scratch: stage
folders are committed only when complete (manifest last), so partial output of a killed
attempt is never read. The worker's request and log live in a temporary folder on its node;
the log comes back with the result and is written where the driver keeps logs, so the driver
and workers need share no folder when the output folder is a URL.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.util.queue import Empty, Queue

from quantbench.errors import UserError
from quantbench.executors.base import Resources
from quantbench.process.workers import run_python_worker
from quantbench.schedule import Capacity

MAX_RETRIES = 3
"""Attempts after the first when the process running a stage dies (node loss, OOM kill)."""
POLL_S = 0.2
WORKER_DIED = -9


@ray.remote
def _run_worker(module: str, request: dict[str, Any], events: Queue) -> tuple[int, str]:
    """Run the worker in a temporary folder of this node; (exit status, its whole log)."""

    def on_event(event: dict[str, Any]) -> None:
        events.put(("event", event))

    def on_stderr(line: str) -> None:
        events.put(("stderr", line))

    with tempfile.TemporaryDirectory(prefix="quantbench-ray-") as folder:
        log = Path(folder) / "worker.log"
        returncode = run_python_worker(
            module, request, Path(folder) / "request.json", log, on_event, on_stderr
        )
        return returncode, log.read_text(errors="replace") if log.exists() else ""


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        try:
            ray.init(
                address=address,
                ignore_reinit_error=True,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                runtime_env={"env_vars": _forwarded_env()},
            )
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UserError(
                f"cannot reach the Ray cluster at {address or 'local'}: {exc}"
            ) from None
        self.address = address

    def capacity(self, memory_bytes: int | None, max_parallel: int | None) -> Capacity:
        """Ray places every job by the resources it asks for (`executors.resources`), so
        the scheduler gives no thread counts and counts no memory; jobs that measure time
        still run with nothing else of the study running."""
        return Capacity(cores=None, memory_bytes=None, max_parallel=max_parallel, gpus=None)

    def launch(
        self,
        module: str,
        request: dict[str, Any],
        request_path: Path,
        log_path: Path,
        on_event: Callable[[dict[str, Any]], None],
        on_stderr: Callable[[str], None] = lambda _: None,
        resources: Resources | None = None,
    ) -> int:
        request_path.parent.mkdir(parents=True, exist_ok=True)
        request_path.write_text(json.dumps(request, indent=2))
        events = Queue()
        options = _ray_options(resources or {})
        ref = _run_worker.options(max_retries=MAX_RETRIES, **options).remote(
            module, request, events
        )
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=POLL_S)
                _drain(events, on_event, on_stderr)
                if ready:
                    break
            try:
                returncode, text = ray.get(ref)
                log_path.write_text(text)
            except ray.exceptions.RayError as exc:
                log_path.write_text(f"Ray task failed after {MAX_RETRIES} retries: {exc}\n")
                returncode = WORKER_DIED
        except BaseException:
            ray.cancel(ref, force=True)
            raise
        finally:
            ray.kill(events.actor)  # type: ignore[arg-type]
        return returncode

    def describe(self) -> dict[str, Any]:
        resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
        return {
            "executor": "ray",
            "address": self.address or "local",
            "ray_version": ray.__version__,
            "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),  # type: ignore[no-untyped-call,misc]
            "cluster_resources": {k: resources[k] for k in ("CPU", "GPU") if k in resources},
        }

    def prestart(self) -> None:
        """Nothing to begin: each Ray task starts its own worker."""

    def close(self) -> None:
        ray.shutdown()


def _drain(
    events: Queue,
    on_event: Callable[[dict[str, Any]], None],
    on_stderr: Callable[[str], None],
) -> None:
    while True:
        try:
            batch = events.get_nowait_batch(events.qsize())
        except Empty:
            return
        if not batch:
            return
        for kind, payload in batch:
            if kind == "event":
                on_event(payload)
            else:
                on_stderr(payload)


def _ray_options(resources: Resources) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key in ("num_cpus", "num_gpus"):
        if key in resources:
            options[key] = resources[key]
    if resources.get("memory"):
        options["memory"] = int(resources["memory"])
    return options


def _forwarded_env() -> dict[str, str]:
    """Settings the workers must share with the driver (cache folder, offline switches)."""
    keys = ("QUANTBENCH_CACHE_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return {k: os.environ[k] for k in keys if k in os.environ}
