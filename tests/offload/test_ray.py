"""``--ray``: per-block work as Ray tasks on a local 2-CPU Ray instance gives the
single-process results (tables equal, checkpoints bit-identical). Skipped without ray."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

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
def test_profile_on_ray_equals_one_process(
    folder: Path, estimator: str, options: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proxies: the 4 windows (2 batches) are split into 2 shards, one ``window_sums_task``
    each, whose sums the driver adds; then one rows task per block. Gaps measured: hessian
    and hessian_diag 0, kfac 0 (fp64 sums, used as fp32), fisher 1.5e-7 (fp32 sums)."""
    from allocator.distributed.pool import RayPool

    calls: list[tuple[str, int]] = []
    real_map = RayPool.map

    def counting_map(self, fn, tasks, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((fn.__name__, len(tasks)))
        return real_map(self, fn, tasks, **kwargs)

    monkeypatch.setattr(RayPool, "map", counting_map)
    kwargs = {"progress": False, "batch_size": 2}
    local = profile(str(folder), _ids(), estimator, options, **kwargs)
    spread = profile(str(folder), _ids(), estimator, options, ray="auto", **kwargs)
    assert max_relative_gap(local.losses, spread.losses) <= 1e-6
    both = profile(str(folder), _ids(), estimator, options, ray="auto", offload=True, **kwargs)
    assert max_relative_gap(local.losses, both.losses) <= 1e-6
    if estimator in ("kl", "block_error"):
        assert calls == [("measure_task", 3)] * 2
    else:
        assert calls == [("window_sums_task", 2), ("rows_task", 3)] * 2


def test_window_shards_are_whole_batches() -> None:
    from allocator.profile.distributed import window_shards

    assert window_shards(4, 2, 2) == [(0, 2), (2, 4)]
    assert window_shards(7, 2, 2) == [(0, 4), (4, 7)]  # 4 batches, the last one short
    assert window_shards(5, 4, 8) == [(0, 4), (4, 5)]  # never more shards than batches
    assert window_shards(3, 4, 2) == [(0, 3)]
    assert window_shards(9, 1, 4) == [(0, 3), (3, 5), (5, 7), (7, 9)]


def test_in_memory_model_keeps_window_sums_in_the_driver(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An nn.Module the workers cannot load: the driver computes the sums (and says so)."""
    import logging

    kwargs = {"progress": False, "batch_size": 2}
    local = profile(in_memory(folder), _ids(), "kfac", "bits=2 group=32", **kwargs)
    with caplog.at_level(logging.INFO, logger="allocator.profile.distributed"):
        spread = profile(in_memory(folder), _ids(), "kfac", "bits=2 group=32", ray="auto", **kwargs)
    assert "window statistics run in the driver" in caplog.text
    assert spread.losses == local.losses


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


@pytest.fixture(scope="module")
def checkpoint(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model compressed (RTN b3-g32) as a packed checkpoint folder."""
    from allocator.quant.apply import apply_plan, uniform_plan
    from allocator.quant.checkpoint import save_checkpoint

    model = in_memory(folder)
    plan = uniform_plan(model, "b3-g32")
    apply_plan(model, plan, None, progress=False)
    out = tmp_path_factory.mktemp("ray-ckpt") / "checkpoint"
    save_checkpoint(model, plan, out)
    return out


@pytest.mark.parametrize("extra", [["--batch-size", "2"], ["--batch-size", "3", "--offload"]])
def test_cli_eval_ray_equals_one_process(
    folder: Path, checkpoint: Path, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The windows' batches split over 2 tasks; each returns its batches' NLL/KL sums and the
    driver adds them in batch order: perplexity and KL equal the one-process values exactly."""
    import json

    from allocator.cli.main import main

    text = folder.parent / "calib.txt"
    records = []
    for ray_flag in ([], ["--ray", "auto"]):
        args = ["eval", "--model", str(checkpoint), "--reference", str(folder), "--text",
                str(text), "--windows", "5", "--seq-len", "16", "--json", "--quiet",
                *extra, *ray_flag]  # fmt: skip
        assert main(args) == 0
        record = json.loads(capsys.readouterr().out)
        records.append({k: v for k, v in record.items() if k != "seconds"})
    assert records[0]["windows"] == 5 and records[0]["kl"] > 0
    assert records[1] == records[0]


def test_eval_ray_splits_batches_across_tasks(folder: Path) -> None:
    from allocator.distributed.pool import pool_for
    from allocator.evaluate import evaluate
    from allocator.evaluate.distributed import evaluate_on_ray

    ids = torch.randint(1, 300, (7, 16), generator=torch.Generator().manual_seed(1))
    pool = pool_for("auto")
    calls: list[int] = []
    real_map = pool.map

    def counting_map(fn, tasks, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(tasks))
        return real_map(fn, tasks, **kwargs)

    pool.map = counting_map  # type: ignore[method-assign]
    spread = evaluate_on_ray({"model": str(folder)}, ids, pool=pool, batch_size=2)["model"]
    local = evaluate(in_memory(folder), ids, batch_size=2, progress=False)
    assert calls == [2]  # 4 batches on 2 CPUs: two tasks of two batches
    assert (spread.perplexity, spread.n_tokens) == (local.perplexity, local.n_tokens)


def test_run_ray_equals_one_process(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run --ray``: profile (hessian), apply (GPTQ) and the validation and evaluation passes
    as Ray tasks give the one-process run's table, plan, checkpoint and results."""
    import json

    from allocator.pipeline import RunSettings, run

    text = str(folder.parent / "calib.txt")
    fields: dict[str, object] = {
        "model": str(folder), "budget": 3.5, "estimator": "hessian",
        "options": "bits=2,3,4 group=32", "method": "gptq", "profile_windows": 4,
        "profile_seq_len": 16, "quant_windows": 4, "eval_windows": 3, "validate_windows": 3,
        "seq_len": 16, "calib_text": [text], "eval_text": [text],
    }  # fmt: skip
    import allocator.evaluate.distributed as distributed_eval

    passes: list[str] = []
    real = distributed_eval.evaluate_on_ray

    def spy(specs, *args, **kwargs):  # type: ignore[no-untyped-def]
        passes.append(",".join(sorted(specs)))
        return real(specs, *args, **kwargs)

    monkeypatch.setattr(distributed_eval, "evaluate_on_ray", spy)
    outs = []
    for ray_address in (None, "auto"):
        out = tmp_path / f"run-{ray_address}"
        settings = RunSettings(**fields, ray=ray_address)  # type: ignore[arg-type]
        results = run(settings, out, progress=False, log=lambda _m: None)
        results.pop("seconds")
        outs.append((out, results))
    assert passes == ["plan,uniform", "plan,uniform"]  # validation, then evaluation, on Ray
    (one, first), (spread, second) = outs
    assert second == first
    assert (
        json.loads((one / "table.json").read_text())["losses"]
        == json.loads((spread / "table.json").read_text())["losses"]
    )
    assert same_folders(one / "checkpoint", spread / "checkpoint") == []
    assert json.loads((one / "validation.json").read_text()) == json.loads(
        (spread / "validation.json").read_text()
    )


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _our_task_pids(task: str) -> list[int]:
    """PIDs of the Ray workers running ``task`` (process title ``ray::task``) that descend from
    this test process (its local Ray's raylet), never another session's workers."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(f"ray::{task}".encode()):
                continue
            pid = ancestor = int(entry.name)
            for _ in range(6):
                ancestor = _parent(ancestor)
                if ancestor == os.getpid():
                    pids.append(pid)
                    break
                if ancestor <= 1:
                    break
        except (OSError, ValueError, IndexError):
            continue
    return pids


def test_sigkilled_worker_is_retried_to_the_same_table(folder: Path, tmp_path: Path) -> None:
    """A worker SIGKILLed while it measures a block's kl rows: Ray retries the task
    (``max_retries``) on a new worker, the profile finishes and its table equals the
    uninterrupted run's; the driver journals every unit once."""
    import signal
    import threading
    import time

    options = "bits=2,3 group=32"
    kwargs = {"progress": False, "batch_size": 2}
    clean = profile(str(folder), _ids(), "kl", options, ray="auto", **kwargs)
    killed: list[int] = []
    done = threading.Event()

    def kill_one() -> None:
        while not done.is_set() and not killed:
            for pid in _our_task_pids("measure_task"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.005)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    journal = tmp_path / "kl.journal.jsonl"
    try:
        table = profile(str(folder), _ids(), "kl", options, ray="auto", journal=journal, **kwargs)
    finally:
        done.set()
        killer.join()
    assert len(killed) == 1, "no measure_task worker was seen running"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    assert table.losses == clean.losses
    assert len(journal.read_text().splitlines()) == 1 + len(table.units)


def _connect_refused(monkeypatch: pytest.MonkeyPatch, address: str, error: BaseException) -> Any:
    """The UnsupportedError ``connect(address)`` raises when ``ray.init`` raises ``error``."""
    ray = pytest.importorskip("ray")
    from allocator.distributed.pool import connect
    from allocator.errors import UnsupportedError

    def refuse(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(UnsupportedError) as info:
        connect(address)
    assert info.value.exit_code == 4
    return info.value


def test_unreachable_cluster_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A --ray address nobody answers ends with exit code 4 and the fix, not a traceback."""
    error = ConnectionError("Failed to connect to Ray cluster at 10.0.0.9:6379")
    message = str(_connect_refused(monkeypatch, "10.0.0.9:6379", error))
    assert re.search(r"10\.0\.0\.9:6379.*ray start --head", message)


def test_cluster_refusing_the_token_names_ray_auth_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """A `ray start` cluster (token authentication on) refusing the driver says how to send it."""
    cause = RuntimeError("RPC error: InvalidAuthToken: Authentication token is missing")
    error = ConnectionError("Failed to connect to Ray cluster at 10.0.0.9:6379")
    error.__cause__ = cause
    message = str(_connect_refused(monkeypatch, "10.0.0.9:6379", error))
    assert re.search(r"10\.0\.0\.9:6379.*RAY_AUTH_MODE=token.*InvalidAuthToken", message)


def test_address_naming_auth_is_not_a_token_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only Ray's refusal of the token is reported as one, not a host that spells 'auth'."""
    error = ConnectionError("Failed to connect to Ray cluster at oauth-gw:6379")
    assert "no Ray cluster answered" in str(_connect_refused(monkeypatch, "oauth-gw:6379", error))


def test_ray_authentication_error_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's own AuthenticationError (token mode without a token) ends with exit code 4 too."""
    ray = pytest.importorskip("ray")
    kind = getattr(ray.exceptions, "AuthenticationError", None)
    if kind is None:
        pytest.skip("this Ray has no token authentication")
    error = kind("Token authentication is enabled but no authentication token was found")
    assert "RAY_AUTH_MODE=token" in str(_connect_refused(monkeypatch, "10.0.0.9:6379", error))
