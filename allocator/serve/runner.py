"""Runs queued jobs, each in its own worker process (``allocator.serve.worker``), at most
``slots`` at a time, from one scheduler thread. State lives in the JobStore; on start, jobs the
last server left running go back to the queue (their folders keep what was journaled, so
re-running resumes them), queued ones stay queued."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from allocator.schema.io import atomic_write_text
from allocator.serve.launch import Handle, LocalLauncher
from allocator.serve.store import JobStore, SqlJobStore

POLL_SECONDS = 0.2


class JobManager:
    def __init__(
        self, store: JobStore | SqlJobStore, jobs_dir: Path, slots: int, *,
        run_jobs: bool = True, launcher: Any = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.jobs_dir = jobs_dir
        self.launcher = launcher or LocalLauncher(slots)
        self.slots = self.launcher.slots
        self.run_jobs = run_jobs
        self._procs: dict[str, Handle] = {}
        self._cancelling: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        jobs_dir.mkdir(parents=True, exist_ok=True)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        for job_id in self.store.ids_in("running"):
            self.store.update(job_id, state="queued", stage="resuming")
        if self.run_jobs:
            self._thread = threading.Thread(target=self._loop, name="allocator-jobs", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Graceful shutdown: running jobs go back to the queue and resume on the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            for job_id, proc in list(self._procs.items()):
                self._kill(proc)
                self.store.transition(job_id, ("running",), state="queued", stage="resuming")
            self._procs.clear()

    def folder(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    # --- requests ----------------------------------------------------------------------------
    def submit(self, owner: str, kind: str, settings: dict[str, Any]) -> str:
        job_id = uuid.uuid4().hex
        folder = self.folder(job_id)
        (folder / "out").mkdir(parents=True)
        atomic_write_text(folder / "job.json", json.dumps({"kind": kind, "settings": settings}))
        self.store.insert(job_id, owner, kind, settings)
        self._wake.set()
        return job_id

    def cancel(self, job_id: str) -> bool:
        if self.store.transition(job_id, ("queued",), state="cancelled", finished_at=time.time()):
            return True
        with self._lock:
            proc = self._procs.get(job_id)
            if proc is None:
                return False
            self._cancelling.add(job_id)
            self._kill(proc)
        self._wake.set()
        return True

    def retry(self, job_id: str) -> bool:
        job = self.store.get(job_id)
        if job is None:
            return False
        ok = self.store.transition(
            job_id, ("failed", "cancelled"), state="queued", stage=None, error=None,
            finished_at=None, progress=0.0,
        )  # fmt: skip
        if ok:
            with contextlib.suppress(FileNotFoundError):
                (self.folder(job_id) / "result.json").unlink()
            self._wake.set()
        return ok

    def delete(self, job_id: str) -> None:
        self.cancel(job_id)
        with self._lock:
            proc = self._procs.pop(job_id, None)
            self._cancelling.discard(job_id)
        if proc is not None:
            proc.wait(timeout=30)
        self.store.delete(job_id)
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def alive(self) -> bool:
        """The scheduler thread runs (or jobs are not run by this server at all)."""
        return not self.run_jobs or (self._thread is not None and self._thread.is_alive())

    def running(self) -> int:
        with self._lock:
            return len(self._procs)

    # --- the scheduler thread ----------------------------------------------------------------
    def _kill(self, proc: Handle) -> None:
        proc.kill()

    def _launch(self, job_id: str) -> None:
        folder = self.folder(job_id)
        job = self.store.get(job_id)
        if job is None:
            return
        now = time.time()
        if not self.store.transition(
            job_id, ("queued",), state="running", started_at=now, attempts=job["attempts"] + 1,
            stage=job["stage"] or "starting",
        ):  # fmt: skip
            return
        with contextlib.suppress(FileNotFoundError):
            (folder / "result.json").unlink()
        proc = self.launcher.launch(folder, job["kind"], job["settings"])
        self._procs[job_id] = proc

    def _finish(self, job_id: str, proc: Handle) -> None:
        folder = self.folder(job_id)
        now = time.time()
        if job_id in self._cancelling:
            self._cancelling.discard(job_id)
            self.store.transition(job_id, ("running",), state="cancelled", finished_at=now)
            return
        try:
            result = json.loads((folder / "result.json").read_text())
        except (OSError, ValueError):
            result = {"ok": False, "error": f"the worker exited with code {proc.poll()}"}
        if result.get("ok"):
            self.store.transition(
                job_id, ("running",), state="succeeded", stage="done", progress=1.0,
                finished_at=now,
            )  # fmt: skip
        else:
            self.store.transition(
                job_id, ("running",), state="failed", error=str(result.get("error"))[:4000],
                finished_at=now,
            )  # fmt: skip

    def _poll(self) -> None:
        with self._lock:
            for job_id, proc in list(self._procs.items()):
                if proc.poll() is not None:
                    del self._procs[job_id]
                    self._finish(job_id, proc)
                    continue
                try:
                    status = json.loads((self.folder(job_id) / "status.json").read_text())
                except (OSError, ValueError):
                    continue
                self.store.update(job_id, stage=status["stage"], progress=status["progress"])
            while len(self._procs) < self.slots and not self._stop.is_set():
                queued = self.store.next_queued()
                if queued is None:
                    break
                self._launch(queued)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll()
            except Exception as exc:  # keep scheduling; the error is logged for the operator
                print(f"allocator jobs: scheduler error: {type(exc).__name__}: {exc}", flush=True)
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
