"""``--ray``: per-block work as Ray tasks on a local 2-CPU Ray instance gives the
single-process results (tables equal, checkpoints bit-identical). Skipped without ray."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from allocator.profile.api import profile
from tests.helpers import save_tiny_model
from tests.offload.conftest import in_memory, max_relative_gap, offloaded, same_folders

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("ray-model"), layers=3)["model"]


def _ids() -> torch.Tensor:
    return torch.randint(1, 300, (4, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("estimator", "options"),
    [("hessian", "bits=2,4 group=32 method=rtn,gptq"), ("hessian_diag", "bits=2,3 group=32"),
     ("fisher", "bits=2,3 group=32"), ("kfac", "bits=2,3 group=32"),
     ("kl", "bits=2 group=32"), ("block_error", "bits=2,4 group=32 method=gptq")],
)  # fmt: skip
def test_profile_on_ray_equals_one_process(folder: Path, estimator: str, options: str) -> None:
    kwargs = {"progress": False, "batch_size": 2}
    local = profile(str(folder), _ids(), estimator, options, **kwargs)
    spread = profile(str(folder), _ids(), estimator, options, ray="auto", **kwargs)
    assert max_relative_gap(local.losses, spread.losses) <= 1e-6
    both = profile(str(folder), _ids(), estimator, options, ray="auto", offload=True, **kwargs)
    assert max_relative_gap(local.losses, both.losses) <= 1e-6


def test_measured_rows_are_journaled_as_tasks_finish(folder: Path, tmp_path: Path) -> None:
    journal = tmp_path / "kl.journal.jsonl"
    kwargs = {"progress": False, "batch_size": 2, "journal": journal}
    first = profile(str(folder), _ids(), "kl", "bits=2,3 group=32", ray="auto", **kwargs)
    lines = journal.read_text().splitlines()
    assert len(lines) == 1 + len(first.units)
    again = profile(
        str(folder), _ids(), "kl", "bits=2,3 group=32", ray="auto", resume=True, **kwargs
    )
    assert again.losses == first.losses


@pytest.mark.parametrize(("method", "option"), [("rtn", "b4-g32"), ("gptq", "b3-g32"),
                                                ("sparsegpt", "b4-g32-2:4")])  # fmt: skip
def test_apply_on_ray_is_bit_identical(folder: Path, method: str, option: str) -> None:
    from allocator.quant.apply import apply_plan, uniform_plan
    from allocator.quant.checkpoint import save_checkpoint

    outs = []
    for model, address in ((in_memory(folder), None), (in_memory(folder), "auto"),
                           (offloaded(folder), "auto")):  # fmt: skip
        plan = uniform_plan(model, option)
        calib = None if method == "rtn" else _ids()
        apply_plan(model, plan, calib, method=method, progress=False, batch_size=2, ray=address)
        out = Path(tempfile.mkdtemp()) / "checkpoint"
        save_checkpoint(model, plan, out)
        outs.append(out)
    assert same_folders(outs[0], outs[1]) == []
    assert same_folders(outs[0], outs[2]) == []


def test_cli_ray(folder: Path, tmp_path: Path) -> None:
    import json

    from allocator.cli.main import main

    text = folder.parent / "calib.txt"
    tables = []
    for extra in ([], ["--ray", "auto"]):
        out = tmp_path / f"t{len(tables)}.json"
        args = ["profile", "--model", str(folder), "--text", str(text), "--estimator", "kl",
                "--options", "bits=2,3 group=32", "--windows", "2", "--seq-len", "24",
                "--out", str(out), "--quiet", *extra]  # fmt: skip
        assert main(args) == 0
        tables.append(json.loads(out.read_text())["losses"])
    assert tables[0] == tables[1]
