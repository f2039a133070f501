"""End to end on the real SmolLM2-135M: apply (CLI and Python), checkpoint, evaluate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def smollm2():
    from allocator.models.loader import load_model

    return load_model("smollm2")


@pytest.fixture(scope="module")
def eval_ids(smollm2):
    from allocator.models.corpus import default_evaluation_text
    from allocator.models.windows import token_windows

    text = default_evaluation_text()
    return token_windows(smollm2.tokenizer, text, seq_len=128, n_windows=2, contiguous=True)


def test_cli_apply_eval_and_reload(tmp_path: Path, smollm2, eval_ids):
    from allocator.cli.main import main
    from allocator.quant.apply import uniform_plan
    from allocator.quant.checkpoint import load_checkpoint
    from allocator.schema.io import save_plan

    plan = uniform_plan(smollm2.model, "b4-g128")
    save_plan(plan, tmp_path / "plan.json")
    out = tmp_path / "ckpt"
    assert main(["apply", "--plan", str(tmp_path / "plan.json"), "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "quant_config.json").read_text())
    assert abs(meta["sizes"]["packed_bytes"] / plan.size_bytes - 1) < 0.01
    assert abs(meta["sizes"]["packed_file_bytes"] / plan.size_bytes - 1) < 0.01
    loaded = load_checkpoint(out)
    with torch.no_grad():
        logits = loaded.model(input_ids=eval_ids).logits
    assert torch.isfinite(logits).all()
    text = tmp_path / "eval.txt"
    from allocator.models.corpus import default_evaluation_text

    text.write_text(default_evaluation_text()[:20000])
    args = ["eval", "--model", str(out), "--text", str(text), "--windows", "2", "--seq-len", "128"]
    assert main([*args, "--reference", "smollm2", "--json", "--quiet"]) == 0


def test_cli_rejects_mismatched_plan(tmp_path: Path, smollm2, capsys):
    from allocator.cli.main import main
    from allocator.quant.apply import uniform_plan
    from allocator.schema.io import save_plan

    plan = uniform_plan(smollm2.model, "b4-g128")
    plan.assignments[0].unit = "model.layers.99.self_attn.q_proj"
    save_plan(plan, tmp_path / "plan.json")
    code = main(["apply", "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "o")])
    assert code == 5
    assert "model.layers.99.self_attn.q_proj" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_gptq_apply_on_real_model(eval_ids):
    """3-bit GPTQ on the first two blocks beats 3-bit RTN on the same blocks (rest kept fp16);
    the block-wise capture runs through all 30 blocks."""
    from allocator.evaluate import evaluate
    from allocator.models.corpus import default_calibration_text
    from allocator.models.loader import load_model
    from allocator.models.units import find_units
    from allocator.models.windows import token_windows
    from allocator.quant.apply import apply_plan, plan_for_options
    from allocator.quant.quant_linear import QuantLinear

    reference = load_model("smollm2")
    results = {}
    for method in ("@gptq", ""):
        loaded = load_model("smollm2")
        calib = token_windows(
            loaded.tokenizer, default_calibration_text(), seq_len=128, n_windows=4
        )
        choice = {
            u.name: f"b3-g128{method}" if (u.layer or 0) < 2 else "fp16"
            for u in find_units(loaded.model)
        }
        plan = plan_for_options(loaded.model, choice)
        apply_plan(loaded.model, plan, calib, progress=False)
        modules = dict(loaded.model.named_modules())
        assert all(
            isinstance(modules[name], QuantLinear) for name, key in choice.items() if key != "fp16"
        )
        results[method or "rtn"] = evaluate(loaded.model, eval_ids, reference.model, progress=False)
    gptq, rtn = results["@gptq"], results["rtn"]
    assert math.isfinite(gptq.perplexity) and gptq.kl is not None and rtn.kl is not None
    assert 0 < gptq.kl < rtn.kl
