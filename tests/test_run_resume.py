"""A killed ``allocator run`` resumes: finished stages are skipped and the results equal an
uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from allocator.pipeline import RunSettings, run
from tests.helpers import sample_text, save_tiny_model

SCRIPT = """
import sys, time
sys.path.append({root!r})  # behind site-packages: the checkout's kernels/ shadows
import allocator.quant.apply as apply
real = apply.compress_unit
def slow(*args, **kwargs):
    time.sleep(0.3)
    return real(*args, **kwargs)
apply.compress_unit = slow
from allocator.pipeline import RunSettings, run
run(RunSettings.model_validate_json({settings!r}), {out!r}, progress=False)
"""


def _settings(saved: dict[str, Path], held_out: Path) -> RunSettings:
    return RunSettings(
        model=str(saved["model"]), budget=3.5, estimator="hessian",
        options="bits=2,3,4,5 group=32", profile_windows=4, profile_seq_len=32,
        quant_windows=4, eval_windows=4, seq_len=32, calib_text=[str(saved["calib"])],
        eval_text=[str(held_out)],
    )  # fmt: skip


def test_killed_run_resumes_to_the_same_results(tmp_path: Path) -> None:
    saved = save_tiny_model(tmp_path / "model", layers=2)
    held_out = tmp_path / "eval.txt"
    held_out.write_text(sample_text(2))
    settings = _settings(saved, held_out)
    out = tmp_path / "killed"
    root = str(Path(__file__).resolve().parents[1])
    code = SCRIPT.format(root=root, settings=settings.model_dump_json(), out=str(out))
    proc = subprocess.Popen([sys.executable, "-P", "-c", code], cwd=root, stdout=subprocess.DEVNULL)
    state = out / "state.json"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if state.is_file() and "solve" in json.loads(state.read_text() or "{}"):
            break
        time.sleep(0.1)
    time.sleep(0.5)  # inside apply: every unit sleeps 0.3 s before it is compressed
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "solve" in json.loads(state.read_text()), "the run never finished its solve stage"
    assert not (out / "results.json").exists(), "the kill came too late to test resuming"

    logs: list[str] = []
    resumed = run(settings, out, progress=False, log=logs.append)
    assert any(m.startswith("profile: table.json is up to date") for m in logs)
    assert any(m.startswith("solve: solved_plan.json is up to date") for m in logs)
    fresh = run(settings, tmp_path / "fresh", progress=False, log=lambda _m: None)
    assert resumed["rows"] == fresh["rows"]
    assert (out / "plan.json").read_text() == (tmp_path / "fresh" / "plan.json").read_text()
    assert not list(out.glob("**/*.tmp*")), "an interrupted write left a temp file behind"


@pytest.mark.parametrize("changed", ["quantizers", "apply"])
def test_new_quantizer_revision_reapplies(tmp_path: Path, monkeypatch, changed: str) -> None:
    """A finished run resumed by code whose quantizers changed (``allocator.quant.REVISION``,
    which ``APPLY_REVISION`` contains) profiles, applies and evaluates again instead of loading
    what the old quantizers made; when only apply changed (``APPLY_REVISION``), the profile
    table is kept and the plan applied and evaluated again."""
    import allocator.pipeline as pipeline
    import allocator.pipeline.stages as stages

    saved = save_tiny_model(tmp_path / "model", layers=2)
    held_out = tmp_path / "eval.txt"
    held_out.write_text(sample_text(2))
    settings = _settings(saved, held_out)
    out = tmp_path / "run"
    run(settings, out, progress=False, log=lambda _m: None)
    same: list[str] = []
    run(settings, out, progress=False, log=same.append)
    assert any(m.startswith("evaluate: results.json is up to date") for m in same)

    if changed == "quantizers":
        monkeypatch.setattr(stages, "QUANT_REVISION", stages.QUANT_REVISION + 1)
    monkeypatch.setattr(pipeline, "APPLY_REVISION", pipeline.APPLY_REVISION + "-next")
    monkeypatch.setattr(stages, "APPLY_REVISION", stages.APPLY_REVISION + "-next")
    logs: list[str] = []
    run(settings, out, progress=False, log=logs.append)
    redone = ("apply plan: checkpoint", "evaluate: results.json")
    assert not any(m.startswith(redone) and "up to date" in m for m in logs)
    assert any(m.startswith("apply plan: gptq in") for m in logs)
    kept = any(m.startswith("profile: table.json is up to date") for m in logs)
    assert kept == (changed == "apply")
