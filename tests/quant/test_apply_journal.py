"""A killed sequential apply resumes from its journal: finished blocks are restored, not
recompressed, and the result is bit-identical to an uninterrupted apply."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import allocator.quant.apply as apply_module
from allocator.errors import InputError
from allocator.quant.apply import apply_plan, uniform_plan
from allocator.quant.apply_journal import ApplyJournal
from tests.helpers import tiny_ids, tiny_model


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_killed_apply_resumes_bit_identical(tmp_path: Path, monkeypatch, family: str) -> None:
    ids = tiny_ids(n=4, seq_len=24)
    plan = uniform_plan(tiny_model(family), "b3-g32")
    expected = _state(apply_plan(tiny_model(family), plan, ids, method="gptq", progress=False))

    real = apply_module.compress_unit
    calls: list[str] = []

    def dies_in_block_1(model, name, *args, **kwargs):
        if ".1." in name:
            raise KeyboardInterrupt  # a kill between blocks 0 and 1
        calls.append(name)
        return real(model, name, *args, **kwargs)

    monkeypatch.setattr(apply_module, "compress_unit", dies_in_block_1)
    journal = ApplyJournal(tmp_path / "journal", "job-1")
    with pytest.raises(KeyboardInterrupt):
        apply_plan(tiny_model(family), plan, ids, method="gptq", progress=False, journal=journal)
    assert (tmp_path / "journal" / "block-0000.safetensors").is_file()
    assert not (tmp_path / "journal" / "block-0001.safetensors").exists()

    calls.clear()
    monkeypatch.setattr(apply_module, "compress_unit", lambda *a, **k: (calls.append(a[1]),
                                                                       real(*a, **k)))  # fmt: skip
    resumed = apply_plan(tiny_model(family), plan, ids, method="gptq", progress=False,
                         journal=ApplyJournal(tmp_path / "journal", "job-1"))  # fmt: skip
    assert calls and not any(".0." in name for name in calls), "block 0 was compressed again"
    state = _state(resumed)
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_journal_of_another_job_is_refused_or_discarded(tmp_path: Path) -> None:
    ids = tiny_ids(n=2, seq_len=16)
    plan = uniform_plan(tiny_model(), "b4-g32")
    apply_plan(tiny_model(), plan, ids, method="gptq", progress=False,
               journal=ApplyJournal(tmp_path / "j", "job-1"))  # fmt: skip
    with pytest.raises(InputError, match="journal of another apply job"):
        ApplyJournal(tmp_path / "j", "job-2")
    (tmp_path / "j" / "identity").write_text("job-2")  # a block file of job-1 under job-2's name
    with pytest.raises(InputError, match="journal of another apply job"):
        apply_plan(tiny_model(), plan, ids, method="gptq", progress=False,
                   journal=ApplyJournal(tmp_path / "j", "job-2"))  # fmt: skip
    (tmp_path / "j" / "identity").write_text("job-1")
    fresh = ApplyJournal(tmp_path / "j", "job-2", discard_other=True)
    assert not list(fresh.folder.glob("block-*"))
