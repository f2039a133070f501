"""``--offload-activations``: hidden states cached between blocks live in files; results equal."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from allocator.models.activations import DiskTensors
from allocator.profile.api import profile
from tests.offload.conftest import in_memory, max_relative_gap, offloaded, same_folders


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    seen: list[tuple[int, ...]] = []
    original = DiskTensors.append

    def append(self: DiskTensors, tensor: torch.Tensor) -> None:
        seen.append(tuple(tensor.shape))
        original(self, tensor)

    monkeypatch.setattr(DiskTensors, "append", append)
    return seen


def test_disk_tensors_round_trip(tmp_path: Path) -> None:
    items = DiskTensors(tmp_path)
    a, b = torch.randn(2, 3, 4), torch.randn(1, 3, 4).bfloat16()
    items.append(a)
    items.append(b)
    assert len(items) == 2 and items.shapes == [(2, 3, 4), (1, 3, 4)]
    assert torch.equal(items[0], a) and torch.equal(list(items)[1], b)
    items[0] = b
    assert torch.equal(items[0], b)
    folder = items.folder
    del items
    import gc

    gc.collect()
    assert not folder.exists()


@pytest.mark.parametrize("estimator", ["hessian", "kl", "block_error", "fisher", "kfac"])
def test_profile_with_activations_on_disk(folders, ids, writes, tmp_path, estimator) -> None:
    kwargs = {"progress": False, "batch_size": 1}
    ids = ids[:2, :16]
    a = profile(in_memory(folders["gemma3"]), ids, estimator, "bits=2,4 group=32", **kwargs)
    model = offloaded(folders["gemma3"], activations=tmp_path / "acts")
    b = profile(model, ids, estimator, "bits=2,4 group=32", **kwargs)
    assert max_relative_gap(a.losses, b.losses) <= 1e-6
    assert writes and all(len(s) == 3 for s in writes)


def test_gptq_apply_and_eval_with_activations_on_disk(folders, ids, writes, tmp_path) -> None:
    from allocator.evaluate import evaluate
    from allocator.quant.apply import apply_plan, uniform_plan
    from allocator.quant.checkpoint import save_checkpoint

    outs, results = [], []
    for model in (in_memory(folders["llama"]),
                  offloaded(folders["llama"], activations=tmp_path / "acts")):  # fmt: skip
        results.append(evaluate(model, ids, batch_size=2, progress=False).perplexity)
        plan = uniform_plan(model, "b3-g32")
        apply_plan(model, plan, ids, method="gptq", progress=False, batch_size=2)
        out = Path(tempfile.mkdtemp()) / "checkpoint"
        save_checkpoint(model, plan, out)
        outs.append(out)
    assert same_folders(*outs) == []
    assert results[0] == results[1]
    assert writes
