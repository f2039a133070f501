"""ModelOpt auto_quantize candidate statistics and AutoRound AutoScheme scores as tables.

ModelOpt: ``mtq.auto_quantize`` really runs on a tiny Llama on CPU (about 20 s) and its search
state is imported. AutoRound: AutoScheme's per-scheme score files in ``data/autoscheme`` were
written by auto-round's own AutoScheme (cache format version 1) on a 2-block model with the
tiny Llama's shapes (``benchmarks/peers.py``); running AutoScheme here needs a dataset file and
minutes, so the test reads the files it wrote.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from allocator import Budget, Constraints, solve
from allocator.profile.importers.autoround_autoscheme import table_from_autoscheme
from allocator.profile.importers.modelopt_autoquant import table_from_auto_quantize

DATA = Path(__file__).with_name("data") / "autoscheme"


@pytest.mark.slow
def test_modelopt_auto_quantize_state_becomes_a_table() -> None:
    mtq = pytest.importorskip("modelopt.torch.quantization")
    from tests.helpers import tiny_ids, tiny_model

    model = tiny_model("llama")
    ids = tiny_ids(4, 24)
    batches = [ids[i : i + 2] for i in range(0, 4, 2)]
    int4 = copy.deepcopy(mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)
    _, state = mtq.auto_quantize(
        model,
        constraints={"effective_bits": 6.0},
        quantization_formats=["INT8_WEIGHT_ONLY_CFG", int4],
        data_loader=batches,
        forward_step=lambda m, b: m(input_ids=b, labels=b, use_cache=False),
        loss_func=lambda out, b: out.loss,
        disabled_layers=["*lm_head*"],
        num_calib_steps=2,
        num_score_steps=2,
        method="gradient",
        verbose=False,
    )
    table = table_from_auto_quantize(state, model)
    stats = state["candidate_stats"]
    names = [n for entry in stats.values() for n in entry["module_names"]]
    assert [u.name for u in table.units] == names and len(names) >= 28  # 4 blocks x 7 (+ lm_head)
    keys = {o.key for o in table.options}
    assert "fp16" in keys and "b8-gc-sym@int8_weight_only_cfg" in keys
    assert any(k.startswith("b4-g128-sym@") for k in keys)
    q = table.unit("model.layers.0.self_attn.q_proj")
    assert q.shape == (64, 64)
    for entry in stats.values():  # a group's score is split over its modules, the sum kept
        for recipe, score in zip(entry["formats"], entry["scores"], strict=True):
            key = next(o.key for o in table.options if o.method in str(recipe).lower() or (
                o.is_fp16 and str(recipe).startswith("NONE")))  # fmt: skip
            total = sum(table.losses[n][key] for n in entry["module_names"])
            assert math.isclose(total, max(score, 0.0), rel_tol=1e-9, abs_tol=1e-15)
    ties = [[f"^{n}$" for n in group] for group in table.provenance.settings["tie_groups"]]
    assert ["^model.layers.0.self_attn.q_proj$", "^model.layers.0.self_attn.k_proj$",
            "^model.layers.0.self_attn.v_proj$"] in ties  # fmt: skip
    plan = solve(table, Constraints(budget=Budget(avg_bits=6.0), ties=ties))
    assert plan.status == "optimal" and plan.avg_bits <= 6.0


def test_autoround_autoscheme_scores_become_a_table() -> None:
    files = sorted(DATA.glob("scheme_*.json"))
    assert len(files) == 3
    shapes = {}
    for layer in range(2):
        for proj, shape in (("q_proj", (64, 64)), ("k_proj", (32, 64)), ("v_proj", (32, 64)),
                            ("o_proj", (64, 64)), ("gate_proj", (128, 64)),
                            ("up_proj", (128, 64)), ("down_proj", (64, 128))):  # fmt: skip
            part = "self_attn" if proj[0] in "qkvo" else "mlp"
            shapes[f"model.layers.{layer}.{part}.{proj}"] = shape
    table = table_from_autoscheme(files, shapes=shapes)
    assert [o.key for o in table.options] == ["b2-g64-sym", "b4-g128-sym", "b8-g128-sym"]
    assert len(table.units) == 14
    raw = json.loads(files[0].read_text())["layer_scores"]
    name = "model.layers.0.self_attn.v_proj"
    assert table.losses[name]["b2-g64-sym"] == raw[name][1]
    assert table.resources["autoround_bits"][name]["b2-g64-sym"] == raw[name][0]
    unit = table.unit(name)  # AutoScheme's bits: values + per-group metadata, as ours count
    assert raw[name][0] / unit.numel == pytest.approx(2 + 18 / 64)
    without_shapes = table_from_autoscheme([json.loads(f.read_text()) for f in files])
    assert without_shapes.unit("model.layers.0.mlp.down_proj").numel >= 8192
    plan = solve(table, Constraints(budget=Budget(avg_bits=5.0)))
    assert plan.status == "optimal"
    capped = Constraints(
        budget=Budget(avg_bits=99.0), resources=[{"name": "autoround_bits", "max": 200000}]
    )
    assert solve(table, capped).resources["autoround_bits"] <= 200000
