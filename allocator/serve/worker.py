"""One job in its own process: ``python -m allocator.serve.worker JOB_DIR PARENT_PID``.

Reads ``JOB_DIR/job.json`` (kind and validated settings), writes artifacts into ``JOB_DIR/out``,
its stage and progress into ``status.json``, stdout/stderr into ``log.txt`` and the outcome into
``result.json``. It dies with the server (PR_SET_PDEATHSIG) and holds ``lock`` while it works, so
a restarted server's worker for the same job waits instead of writing beside a stale one. Work
that was journaled (profile journals, ``run``'s stage state) is reused: re-running a job into
the same folder resumes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from allocator.schema.io import atomic_write_text

RUN_STAGES = ("profile", "solve", "apply", "validate", "evaluate")


class Status:
    """Writes ``status.json``: ``status(stage, progress, span)`` starts a stage at ``progress``
    that may advance by ``span``; progress bars inside it report their fraction (``within``)."""

    def __init__(self, job_dir: Path) -> None:
        self.path = job_dir / "status.json"
        self.stage, self.base, self.span, self.progress = "starting", 0.0, 0.0, 0.0
        self._written = 0.0

    def __call__(self, stage: str, progress: float, span: float = 0.0) -> None:
        self.stage, self.base, self.span = stage, progress, span
        self.progress = progress
        self._write()

    def within(self, fraction: float) -> None:
        value = self.base + self.span * min(max(fraction, 0.0), 1.0)
        if value > self.progress:
            self.progress = value
            if time.monotonic() - self._written > 0.5:
                self._write()

    def _write(self) -> None:
        self._written = time.monotonic()
        payload = {"stage": self.stage, "progress": round(min(max(self.progress, 0.0), 1.0), 4)}
        atomic_write_text(self.path, json.dumps(payload))


def track_progress_bars(status: Status) -> None:
    """Route every outermost tqdm bar's fraction to ``status`` (installed before the library
    modules that create bars are imported)."""
    import tqdm
    import tqdm.auto

    base = tqdm.auto.tqdm

    class Tracked(base):  # type: ignore[misc, valid-type]
        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            if not self.disable and self.total and getattr(self, "pos", 0) == 0:
                status.within(self.n / self.total)
            return shown

    tqdm.auto.tqdm = Tracked
    tqdm.tqdm = Tracked


def _die_with_parent(parent_pid: int) -> None:
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the server died before prctl took effect
        os._exit(1)


def _texts(paths: list[str] | None) -> Any:
    return list(paths) if paths else None


def run_profile(s: dict[str, Any], out: Path, status: Status) -> None:
    from allocator.profile.api import profile
    from allocator.profile.estimators import ESTIMATORS, load_all
    from allocator.schema.io import save_table

    load_all()
    spec = ESTIMATORS.get(s["estimator"])
    status("profile", 0.05, 0.9)
    table = profile(
        s["model"], _texts(s["text"]), s["estimator"], s["options"], windows=s["windows"],
        seq_len=s["seq_len"], seed=s["seed"], device=s["device"], progress=True,
        batch_size=s["batch_size"], settings=dict(s["settings"]),
        journal=out / "table.journal.jsonl" if spec.journaled else None, resume=True,
    )  # fmt: skip
    save_table(table, out / "table.json")


def run_solve(s: dict[str, Any], out: Path, status: Status) -> None:
    from allocator.schema.io import save_plan
    from allocator.serve.compute import do_solve
    from allocator.serve.models import SolveRequest

    status("solve", 0.1)
    save_plan(do_solve(SolveRequest.model_validate(s)), out / "plan.json")


def run_pareto(s: dict[str, Any], out: Path, status: Status) -> None:
    from allocator.serve.compute import do_pareto
    from allocator.serve.models import ParetoRequest

    status("pareto", 0.05, 0.9)
    request = ParetoRequest.model_validate(s)
    points = do_pareto(request, progress=True)
    atomic_write_text(
        out / "pareto.json",
        json.dumps([p.model_dump(mode="json") for p in points], indent=1) + "\n",
    )


def run_apply(s: dict[str, Any], out: Path, status: Status) -> None:
    from allocator.pipeline.tasks import calibration_windows, load_any
    from allocator.quant import DEFAULT_CALIBRATION
    from allocator.quant.apply import apply_plan
    from allocator.quant.checkpoint import save_checkpoint
    from allocator.schema.plan import Plan

    plan = Plan.model_validate(s["plan"])
    status("load", 0.05)
    loaded = load_any(s["model"])
    windows = calibration_windows(
        loaded, plan, s["method"], text=s["calib_text"], windows=s["calib_windows"],
        seq_len=s["seq_len"], seed=s["seed"], bos=s["bos"],
    )  # fmt: skip
    status("apply", 0.2, 0.7)
    apply_plan(loaded.model, plan, windows, method=s["method"], act_order=s["act_order"],
               calibration=s.get("calibration", DEFAULT_CALIBRATION))  # fmt: skip
    status("save", 0.9)
    sizes = save_checkpoint(loaded.model, plan, out / "checkpoint", tokenizer=loaded.tokenizer)
    atomic_write_text(out / "sizes.json", json.dumps(sizes.__dict__, default=str, indent=1))


def run_eval(s: dict[str, Any], out: Path, status: Status) -> None:
    from allocator.pipeline.tasks import evaluate_spec

    status("evaluate", 0.05, 0.9)
    record = evaluate_spec(
        s["model"], reference=s["reference"], text=s["text"], windows=s["windows"],
        seq_len=s["seq_len"], batch_size=s["batch_size"], bos=s["bos"],
    )  # fmt: skip
    atomic_write_text(out / "results.json", json.dumps(record, indent=1) + "\n")


def run_run(s: dict[str, Any], out: Path, status: Status) -> None:
    from allocator.pipeline import RunSettings, run

    def log(message: str) -> None:
        print(message, flush=True)
        stage = message.split(":", 1)[0].strip()
        if stage in RUN_STAGES and stage != status.stage:
            status(stage, RUN_STAGES.index(stage) / len(RUN_STAGES), 1 / len(RUN_STAGES))

    from allocator.report import report_run_folder

    status("profile", 0.0, 1 / len(RUN_STAGES))
    run(RunSettings.model_validate(s), out, progress=True, log=log)
    status("report", 0.98)
    report_run_folder(out, log=log)


def run_export(s: dict[str, Any], out: Path, status: Status) -> None:
    from allocator.export import export_plan
    from allocator.schema.plan import Plan

    status("export", 0.1)
    result = export_plan(Plan.model_validate(s["plan"]), s["to"], model_type=s["model_type"])
    written = result.write(out / "export")
    print("\n".join(result.report), flush=True)
    print("\n".join(f"wrote {p}" for p in written), flush=True)


RUNNERS = {"profile": run_profile, "solve": run_solve, "pareto": run_pareto, "apply": run_apply,
           "eval": run_eval, "run": run_run, "export": run_export}  # fmt: skip


def main(job_dir: Path, parent_pid: int) -> int:
    _die_with_parent(parent_pid)
    lock = open(job_dir / "lock", "w")  # noqa: SIM115 - held for the process's life
    fcntl.flock(lock, fcntl.LOCK_EX)
    log = open(job_dir / "log.txt", "a", buffering=1)  # noqa: SIM115
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    job = json.loads((job_dir / "job.json").read_text())
    out = job_dir / "out"
    out.mkdir(exist_ok=True)
    status = Status(job_dir)
    track_progress_bars(status)
    print(f"[{time.strftime('%H:%M:%S')}] {job['kind']} job starts (pid {os.getpid()})")
    result: dict[str, Any]
    try:
        RUNNERS[job["kind"]](job["settings"], out, status)
        status("done", 1.0)
        result = {"ok": True}
    except Exception as exc:
        from allocator.errors import AllocatorError

        if not isinstance(exc, AllocatorError):
            traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(f"[{time.strftime('%H:%M:%S')}] {job['kind']} job ends: {result}")
    atomic_write_text(job_dir / "result.json", json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), int(sys.argv[2])))
