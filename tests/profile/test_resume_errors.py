from __future__ import annotations

import json

import pytest
import torch

from allocator.cli.main import main
from allocator.errors import InputError, UnsupportedError
from allocator.models.loader import LoadedModel
from allocator.profile.api import profile
from allocator.profile.estimators.kl import KLMeter
from tests.profile.conftest import GRID


class _Killed(Exception):
    pass


def test_killed_kl_run_resumes_where_it_stopped(tiny_model, tiny_ids, tmp_path, monkeypatch):
    journal = tmp_path / "kl.jsonl"
    reference = profile(tiny_model, tiny_ids, "kl", GRID, progress=False)
    original = KLMeter.measure_options
    calls: list[str] = []

    def dying(self, unit, options):
        if len(calls) == 3:
            raise _Killed
        calls.append(unit.name)
        return original(self, unit, options)

    monkeypatch.setattr(KLMeter, "measure_options", dying)
    with pytest.raises(_Killed):
        profile(tiny_model, tiny_ids, "kl", GRID, progress=False, journal=journal)
    lines = journal.read_text().splitlines()
    assert len(lines) == 1 + 3  # header + three finished units
    with journal.open("a") as handle:
        handle.write('{"unit": "torn')  # a write cut short by the kill

    def counting(self, unit, options):
        calls.append(unit.name)
        return original(self, unit, options)

    monkeypatch.setattr(KLMeter, "measure_options", counting)
    resumed = profile(
        tiny_model, tiny_ids, "kl", GRID, progress=False, journal=journal, resume=True
    )
    assert len(calls) == 14 and len(set(calls)) == 14  # 3 before the kill + 11 after
    for name, row in reference.losses.items():
        assert resumed.losses[name] == pytest.approx(row, rel=1e-5, abs=1e-9)
    assert all(json.loads(line) for line in journal.read_text().splitlines())


def test_resume_refuses_a_journal_from_other_settings(tiny_model, tiny_ids, tmp_path):
    journal = tmp_path / "kl.jsonl"
    profile(tiny_model, tiny_ids[:2], "kl", "bits=8 group=32", progress=False, journal=journal)
    with pytest.raises(InputError, match="other settings"):
        profile(tiny_model, tiny_ids[:2], "kl", "bits=4 group=32", progress=False,
                journal=journal, resume=True)  # fmt: skip


class _CharTokenizer:
    """Maps each character to an id below 128 (enough to cut windows from text)."""

    def __call__(self, text, return_tensors="pt", add_special_tokens=False):
        ids = torch.tensor([[ord(c) % 128 for c in text]])
        return type("Encoding", (), {"input_ids": ids})()


def test_text_shorter_than_one_window_is_an_input_error(tiny_model):
    loaded = LoadedModel(
        model=tiny_model, tokenizer=_CharTokenizer(), source="tiny", model_hash="x"
    )
    with pytest.raises(InputError, match="fewer than one window"):
        profile(loaded, "too short", "hessian", GRID, seq_len=64, progress=False)
    table = profile(loaded, "long enough " * 20, "hessian", GRID, windows=2, seq_len=64,
                    progress=False)  # fmt: skip
    assert table.provenance.settings["windows"] == 2


def test_group_larger_than_input_size_is_an_input_error(tiny_model, tiny_ids):
    with pytest.raises(InputError, match="exceeds the input size"):
        profile(tiny_model, tiny_ids, "hessian", "bits=4 group=128", progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_unsupported(tiny_model, tiny_ids):
    with pytest.raises(UnsupportedError, match="no CUDA GPU"):
        profile(tiny_model, tiny_ids, "hessian", GRID, device="cuda", progress=False)


def test_cli_errors_exit_with_one_line(tmp_path, capsys):
    out = str(tmp_path / "t.json")
    assert main(["profile", "--model", str(tmp_path / "missing"), "--out", out]) == 2
    assert "not a GGUF file" in capsys.readouterr().err
    assert main(["profile", "--options", "bits=3 group=0", "--out", out]) == 2
    assert "positive integer" in capsys.readouterr().err
    assert main(["profile", "--estimator", "nope", "--out", out]) == 4
    if not torch.cuda.is_available():
        assert main(["profile", "--device", "cuda", "--out", out]) == 4
        assert "no CUDA GPU" in capsys.readouterr().err


def test_calibrated_proxies_share_measured_points(tiny_model, tiny_ids, tmp_path, monkeypatch):
    journal = tmp_path / "points.jsonl"
    settings = {"kl_windows": 2, "kl_seq_len": 16}
    profile(tiny_model, tiny_ids, "hessian_kl", GRID, progress=False, journal=journal,
            settings=settings)  # fmt: skip

    def never(self, unit, options):
        raise AssertionError("measured again although the journal holds the points")

    monkeypatch.setattr(KLMeter, "measure_options", never)
    table = profile(tiny_model, tiny_ids, "hessian_kl", GRID, progress=False, journal=journal,
                    resume=True, settings={**settings, "proxy": "hessian_diag"})  # fmt: skip
    assert table.provenance.settings["proxy"] == "hessian_diag"
