"""Checkpoint metadata cannot pick arbitrary torch/transformers attributes or module names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from allocator.errors import InputError
from allocator.models.trust import dtype_named, model_class_named, require_safetensors


def test_only_known_dtypes_and_model_classes() -> None:
    import torch

    assert dtype_named("bfloat16", where="x") is torch.bfloat16
    for bad in ("load", "__import__", "Tensor", 3):
        with pytest.raises(InputError, match="dtype"):
            dtype_named(bad, where="x")
    assert model_class_named("LlamaForCausalLM", where="x").__name__ == "LlamaForCausalLM"
    assert model_class_named(None, where="x") is None
    for bad in ("AutoTokenizer", "pipeline", "os.system", "logging"):
        with pytest.raises(InputError, match="model class"):
            model_class_named(bad, where="x")


def test_pickle_only_folders_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(InputError, match="safetensors"):
        require_safetensors(tmp_path)
    monkeypatch.setenv("ALLOCATOR_ALLOW_PICKLE", "1")
    require_safetensors(tmp_path)


def test_checkpoint_with_foreign_unit_name_is_refused(tmp_path: Path) -> None:
    from allocator.quant.apply import apply_plan, uniform_plan
    from allocator.quant.checkpoint import load_checkpoint, save_checkpoint
    from tests.helpers import tiny_model

    model = tiny_model("llama")
    plan = uniform_plan(model, "b4-g32")
    apply_plan(model, plan, progress=False)
    folder = tmp_path / "ckpt"
    save_checkpoint(model, plan, folder)
    meta_files = [p for p in folder.iterdir() if p.suffix == ".json" and "units" in p.read_text()]
    assert meta_files
    meta_path = meta_files[0]
    meta = json.loads(meta_path.read_text())
    meta["units"]["model.evil.__class__"] = next(iter(meta["units"].values()))
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError):
        load_checkpoint(folder)
