"""Where a job's worker runs: a local process (default) or a Ray task (``--ray``).

Both run the same command, ``python -m allocator.serve.worker JOB_DIR PARENT_PID``, so a job
behaves the same wherever it runs. With Ray the worker process is a child of a Ray task that
asks for the job's resources (a GPU for profile/apply/eval/run jobs on ``cuda``); Ray queues
and places the tasks, cancelling is ``ray.cancel(force=True)`` (the worker dies with its task),
and the data directory must be a path every Ray node sees (a shared filesystem). A Ray task
outlives a killed server; the restarted server's task for the same job waits on the job's lock
and then resumes from what the first one journaled."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

GPU_KINDS = ("profile", "apply", "eval", "run")


def worker_command(folder: Path, parent_pid: int) -> list[str]:
    """``-P``: the server's current folder stays off the worker's ``sys.path`` (from a checkout,
    its ``kernels/`` folder would shadow the ``kernels`` package transformers imports)."""
    return [sys.executable, "-P", "-m", "allocator.serve.worker", str(folder), str(parent_pid)]


class Handle(Protocol):
    def poll(self) -> int | None: ...
    def kill(self) -> None: ...
    def wait(self, timeout: float) -> None: ...


class LocalHandle:
    def __init__(self, folder: Path) -> None:
        self.proc = subprocess.Popen(
            worker_command(folder, os.getpid()), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> None:
        self.proc.wait(timeout=timeout)


class LocalLauncher:
    """One worker process per job; at most ``slots`` at a time (the scheduler counts)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots

    def launch(self, folder: Path, kind: str, settings: dict[str, Any]) -> Handle:
        return LocalHandle(folder)

    def close(self) -> None:
        pass


def _run_in_ray(folder: str) -> int:
    """The Ray task: run the worker as a child of this task's process and return its code."""
    return subprocess.run(
        worker_command(Path(folder), os.getpid()), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ).returncode  # fmt: skip


class RayHandle:
    def __init__(self, ray: Any, ref: Any) -> None:
        self.ray, self.ref = ray, ref
        self.code: int | None = None

    def poll(self) -> int | None:
        if self.code is None:
            ready, _ = self.ray.wait([self.ref], timeout=0)
            if ready:
                try:
                    self.code = int(self.ray.get(self.ref))
                except Exception:  # cancelled, or the node was lost
                    self.code = -1
        return self.code

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.ray.cancel(self.ref, force=True)

    def wait(self, timeout: float) -> None:
        self.ray.wait([self.ref], timeout=timeout)


class RayLauncher:
    """Jobs as Ray tasks with resource requests; Ray does the queueing and placement, so every
    queued job is handed to it at once (``slots`` is unbounded)."""

    slots = 1_000_000

    def __init__(self, address: str, **init: Any) -> None:
        import ray

        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=None if address == "local" else address, **init)
        self.task = ray.remote(max_retries=0)(_run_in_ray)

    def launch(self, folder: Path, kind: str, settings: dict[str, Any]) -> Handle:
        gpus = (
            1 if kind in GPU_KINDS and str(settings.get("device", "cpu")).startswith("cuda") else 0
        )
        ref = self.task.options(num_cpus=1, num_gpus=gpus).remote(str(folder))
        return RayHandle(self.ray, ref)

    def close(self) -> None:
        pass
