"""apply_plan on a tiny Llama (RTN and GPTQ, block by block), plan checks, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from allocator.errors import InputError, PlanCheckError
from allocator.models.units import find_units
from allocator.quant.apply import apply_plan, plan_for_options, uniform_plan
from allocator.quant.checkpoint import load_checkpoint, save_checkpoint
from allocator.quant.quant_linear import QuantLinear

from .conftest import make_tiny_llama


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _mixed_plan(model):
    keys = ["b3-g32", "fp16", "b2-g64-sym", "b4-g32-2:4", "b3-gc-s0.5", "b6-g32", "b8-g64"]
    units = [u.name for u in find_units(model)]
    return plan_for_options(model, {n: keys[i % len(keys)] for i, n in enumerate(units)})


def test_rtn_apply_replaces_units(tiny_llama, token_ids):
    plan = uniform_plan(tiny_llama, "b4-g32")
    apply_plan(tiny_llama, plan, progress=False)
    names = {a.unit for a in plan.assignments}
    replaced = {n for n, m in tiny_llama.named_modules() if isinstance(m, QuantLinear)}
    assert replaced == names and len(names) == 14
    assert torch.isfinite(_logits(tiny_llama, token_ids)).all()


def test_gptq_apply_beats_rtn_on_output_error(token_ids):
    reference = make_tiny_llama()
    clean = _logits(reference, token_ids)
    errors = {}
    for method in ("rtn", "gptq"):
        model = make_tiny_llama()
        apply_plan(model, uniform_plan(model, "b2-g32"), token_ids, method=method, progress=False)
        errors[method] = float((_logits(model, token_ids) - clean).pow(2).mean())
    assert errors["gptq"] < errors["rtn"]


def test_gptq_needs_calibration(tiny_llama):
    with pytest.raises(InputError, match="calibration"):
        apply_plan(tiny_llama, uniform_plan(tiny_llama, "b4-g32@gptq"), progress=False)


def test_plan_model_mismatch(tiny_llama):
    plan = uniform_plan(tiny_llama, "b4-g32")
    unknown = plan.model_copy(deep=True)
    unknown.assignments[0].unit = "model.layers.9.mlp.up_proj"
    with pytest.raises(PlanCheckError, match=r"layers\.9"):
        apply_plan(tiny_llama, unknown, progress=False)
    missing = plan.model_copy(deep=True)
    dropped = missing.assignments.pop(3).unit
    with pytest.raises(PlanCheckError, match=dropped.replace(".", r"\.")):
        apply_plan(tiny_llama, missing, progress=False)
    shape = plan.model_copy(deep=True)
    shape.assignments[1].numel += 1
    with pytest.raises(PlanCheckError, match="size differs"):
        apply_plan(tiny_llama, shape, progress=False)
    apply_plan(tiny_llama, plan, progress=False)
    with pytest.raises(PlanCheckError, match="already compressed"):
        apply_plan(tiny_llama, plan, progress=False)


def test_out_of_range_bits_rejected(tmp_path):
    from allocator.schema.io import load_plan

    model = make_tiny_llama()
    data = uniform_plan(model, "b4-g32").model_dump(mode="json")
    data["assignments"][0]["option"]["bits"] = 12
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="bits=12"):
        load_plan(path)


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_checkpoint_round_trip(tmp_path: Path, token_ids, method):
    model = make_tiny_llama()
    plan = _mixed_plan(model)
    apply_plan(model, plan, token_ids, method=method, progress=False)
    expected = _logits(model, token_ids)
    sizes = save_checkpoint(model, plan, tmp_path / "ckpt")
    assert abs(sizes.relative_error) < 0.01, sizes
    assert sizes.packed_file_bytes > sizes.packed_bytes
    assert sizes.rest_bytes > 0
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(_logits(loaded.model, token_ids), expected)
    assert not list(tmp_path.glob(".ckpt*")), "temporary folders left behind"


def test_corrupt_and_truncated_checkpoint(tmp_path: Path, tiny_llama):
    plan = uniform_plan(tiny_llama, "b4-g32")
    apply_plan(tiny_llama, plan, progress=False)
    save_checkpoint(tiny_llama, plan, tmp_path / "ckpt")
    packed = tmp_path / "ckpt" / "packed.safetensors"
    data = packed.read_bytes()
    packed.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"packed\.safetensors.*(corrupt|truncated)"):
        load_checkpoint(tmp_path / "ckpt")
    packed.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(InputError, match="checksum"):
        load_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "checksums.sha256").unlink()
    with pytest.raises(InputError, match="checksums"):
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(InputError, match="not an allocator checkpoint"):
        load_checkpoint(tmp_path)


def test_overwrite_refuses_foreign_folder(tmp_path: Path, tiny_llama):
    plan = uniform_plan(tiny_llama, "b4-g32")
    apply_plan(tiny_llama, plan, progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not an allocator checkpoint"):
        save_checkpoint(tiny_llama, plan, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    save_checkpoint(tiny_llama, plan, tmp_path / "ckpt")
    save_checkpoint(tiny_llama, plan, tmp_path / "ckpt")  # overwriting a checkpoint is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "mine"]
