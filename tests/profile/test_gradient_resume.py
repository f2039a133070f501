"""A killed ``fisher``, ``kfac`` or ``hutchinson`` profile resumes from its checkpoint of running sums and gives
the uninterrupted table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from allocator.errors import InputError
from allocator.profile.api import profile

GRID = "bits=2,4 group=32"

SCRIPT = """
import sys, torch
sys.path.append({root!r})  # behind site-packages: the checkout's kernels/ shadows
from tests.helpers import tiny_model, tiny_ids
from allocator.profile.api import profile
ids = tiny_ids(n=40, seq_len=24)
import allocator.profile.estimators.fisher as fisher
import allocator.profile.estimators.kfac as kfac
real = fisher._window_loss
def slow(*args, **kwargs):
    import time; time.sleep(0.25)
    return real(*args, **kwargs)
fisher._window_loss = kfac._window_loss = slow
profile(tiny_model("llama"), ids, {estimator!r}, {grid!r}, progress=False, journal={journal!r},
        resume=True, settings={{"checkpoint_every_s": 0}})
"""


@pytest.mark.parametrize("estimator", ["fisher", "kfac", "hutchinson"])
def test_killed_estimator_resumes_to_the_same_table(tmp_path: Path, estimator: str) -> None:
    from tests.helpers import tiny_ids, tiny_model

    journal = tmp_path / f"{estimator}.jsonl"
    checkpoint = Path(f"{journal}.{estimator}.safetensors")
    root = str(Path(__file__).resolve().parents[2])
    code = SCRIPT.format(root=root, grid=GRID, journal=str(journal), estimator=estimator)
    proc = subprocess.Popen([sys.executable, "-P", "-c", code], cwd=root)
    deadline = time.monotonic() + 120
    while not checkpoint.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.is_file(), "the run never saved a checkpoint"
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as handle:
        done = int(handle.metadata()["done"])
    assert 0 < done < 40
    ids = tiny_ids(n=40, seq_len=24)
    settings = {"checkpoint_every_s": 0}
    resumed = profile(tiny_model("llama"), ids, estimator, GRID, progress=False,
                      journal=journal, resume=True, settings=settings)  # fmt: skip
    fresh = profile(tiny_model("llama"), ids, estimator, GRID, progress=False, settings=settings)
    for unit, row in fresh.losses.items():
        for key, value in row.items():
            assert resumed.losses[unit][key] == pytest.approx(value, rel=1e-4)


def test_existing_checkpoint_without_resume_is_an_error(tmp_path: Path) -> None:
    from tests.helpers import tiny_ids, tiny_model

    journal = tmp_path / "f.jsonl"
    Path(f"{journal}.fisher.safetensors").write_bytes(b"x")
    with pytest.raises(InputError, match="--resume"):
        profile(tiny_model("llama"), tiny_ids(), "fisher", GRID, progress=False, journal=journal)
    assert torch.is_tensor(tiny_ids())


def test_finished_profile_discards_its_checkpoint(tmp_path: Path) -> None:
    """The running-sum checkpoint (one float per weight) goes once the table is saved, so a
    rerun starts over without --resume; the unit journal of measured points is not touched."""
    from allocator.cli.main import main
    from tests.helpers import save_tiny_model

    tiny = save_tiny_model(tmp_path / "tiny", layers=2)
    out = tmp_path / "fisher.json"
    args = ["profile", "--model", str(tiny["model"]), "--text", str(tiny["calib"]),
            "--estimator", "fisher", "--options", GRID, "--windows", "2", "--seq-len", "16",
            "--quiet", "--out", str(out), "--set", "checkpoint_every_s=0"]  # fmt: skip
    assert main(args) == 0
    assert out.is_file() and not list(tmp_path.glob("*.safetensors"))
    assert main(args) == 0  # no "a checkpoint of an earlier run exists"
