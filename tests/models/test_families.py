"""Every family end to end on a tiny random-weight model: units, fisher and hessian tables, solve,
apply (RTN and GPTQ), checkpoint reload, outputs against the dequantized weights, exports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from allocator.errors import UnsupportedError
from allocator.export import export_plan
from allocator.models.adapters import needs_preparing, prepare_model
from allocator.models.units import find_units, unhandled_weights
from allocator.profile.api import profile
from allocator.quant.apply import apply_plan
from allocator.quant.checkpoint import load_checkpoint, save_checkpoint
from allocator.quant.quant_linear import QuantLinear
from allocator.schema.constraints import Constraints
from allocator.solve.api import solve
from tests.helpers import FAMILIES, tiny_ids, tiny_model

LLAMA_LIKE = {
    "self_attn.q_proj": (64, 64),
    "self_attn.k_proj": (32, 64),
    "self_attn.v_proj": (32, 64),
    "self_attn.o_proj": (64, 64),
    "mlp.gate_proj": (128, 64),
    "mlp.up_proj": (128, 64),
    "mlp.down_proj": (64, 128),
}
# units of block 0 (name inside the block -> (out, in)) and the block list's path
EXPECTED: dict[str, tuple[str, dict[str, tuple[int, int]]]] = {
    **{f: ("model.layers", LLAMA_LIKE) for f in ("llama", "qwen2", "qwen3", "mistral")},
    "gemma2": ("model.layers", LLAMA_LIKE),
    "gemma3": ("model.layers", LLAMA_LIKE),
    "phi3": (
        "model.layers",
        {
            "self_attn.qkv_proj": (128, 64),  # q 64 + k 32 + v 32, one fused unit
            "self_attn.o_proj": (64, 64),
            "mlp.gate_up_proj": (256, 64),  # gate 128 + up 128
            "mlp.down_proj": (64, 128),
        },
    ),
    "gpt2": (
        "transformer.h",
        {  # Conv1D weights are stored (in, out); units are (out, in)
            "attn.c_attn": (192, 64),
            "attn.c_proj": (64, 64),
            "mlp.c_fc": (256, 64),
            "mlp.c_proj": (64, 256),
        },
    ),
    "gpt_neox": (
        "gpt_neox.layers",
        {
            "attention.query_key_value": (192, 64),
            "attention.dense": (64, 64),
            "mlp.dense_h_to_4h": (128, 64),
            "mlp.dense_4h_to_h": (64, 128),
        },
    ),
    "mixtral": (
        "model.layers",
        {
            **{k: v for k, v in LLAMA_LIKE.items() if k.startswith("self_attn")},
            **{f"mlp.experts.{e}.gate_up_proj": (256, 64) for e in range(4)},
            **{f"mlp.experts.{e}.down_proj": (64, 128) for e in range(4)},
        },
    ),
    "qwen2_moe": (
        "model.layers",
        {  # routers (mlp.gate, mlp.shared_expert_gate) are not units
            **{k: v for k, v in LLAMA_LIKE.items() if k.startswith("self_attn")},
            **{f"mlp.experts.{e}.gate_up_proj": (64, 64) for e in range(4)},
            **{f"mlp.experts.{e}.down_proj": (64, 32) for e in range(4)},
            "mlp.shared_expert.gate_proj": (64, 64),
            "mlp.shared_expert.up_proj": (64, 64),
            "mlp.shared_expert.down_proj": (64, 64),
        },
    ),
    "bert": (
        "encoder.layer",
        {
            "attention.self.query": (64, 64),
            "attention.self.key": (64, 64),
            "attention.self.value": (64, 64),
            "attention.output.dense": (64, 64),
            "intermediate.dense": (128, 64),
            "output.dense": (64, 128),
        },
    ),
}
OPTIONS = "bits=2,3,4,8 group=32 sym=1"


def _outputs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _dequantized_reference(family: str, compressed: nn.Module) -> nn.Module:
    """A plain copy of the family's model whose unit weights are the dequantized ones."""
    model = prepare_model(tiny_model(family))
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, module in compressed.named_modules():
            if isinstance(module, QuantLinear):
                target = modules[name]
                target.weight.copy_(module.dequantized_weight(torch.float32))
            elif isinstance(module, nn.Linear) and name in modules:
                modules[name].weight.copy_(module.weight)
    return model


def test_expected_families_covered() -> None:
    assert set(EXPECTED) == set(FAMILIES)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_units(family: str) -> None:
    model = tiny_model(family)
    prefix, block0 = EXPECTED[family]
    units = find_units(model)
    assert {u.name: u.shape for u in units if u.layer == 0} == {
        f"{prefix}.0.{rel}": shape for rel, shape in block0.items()
    }
    assert len(units) == 4 * len(block0)
    assert not any(u.name.endswith((".gate", "router")) for u in units)  # MoE routers stay fp
    before = [u.model_dump() for u in units]
    assert unhandled_weights(model) == []  # every matrix in a block is a unit or a router
    prepare_model(model)
    assert not needs_preparing(model)
    assert [u.model_dump() for u in find_units(model)] == before  # same names either way
    for u in units:
        module = model.get_submodule(u.name)
        assert isinstance(module, nn.Linear) and tuple(module.weight.shape) == u.shape


def test_fused_shapes_follow_the_weights() -> None:
    """GPT-2 Conv1D holds W as (in, out): the unit and the converted Linear hold W^T."""
    model = tiny_model("gpt2")
    conv = model.transformer.h[1].mlp.c_fc
    weight = conv.weight.detach().clone()
    ids = tiny_ids(2)
    reference = _outputs(model, ids)
    prepare_model(model)
    linear = model.transformer.h[1].mlp.c_fc
    assert torch.equal(linear.weight, weight.T)
    assert torch.allclose(_outputs(model, ids), reference, atol=1e-5)


def _export_matches(plan, units, model: nn.Module) -> None:
    """The exports' regexes select exactly the plan's units among the model's module names."""
    from allocator.export.gptqmodel import option_fields

    names = [n for n, _ in model.named_modules() if n]
    config = export_plan(plan, "gptqmodel", units=units).config
    base = {k: config[k] for k in ("bits", "group_size", "sym")}
    overridden: dict[str, set[str]] = {}
    for key, fields in config["dynamic"].items():
        assert key.startswith("+:")  # no fp16 options in the grid: nothing skipped
        matched = {n for n in names if re.match(key[2:], n)}
        overridden.setdefault(str(sorted(fields.items())), set()).update(matched)
    wanted: dict[str, set[str]] = {}
    for a in plan.assignments:
        fields = option_fields(a.option)
        if fields != base:
            wanted.setdefault(str(sorted(fields.items())), set()).add(a.unit)
    assert overridden == wanted
    recipe = export_plan(plan, "llm-compressor", units=units).config
    modifier = recipe["recipe"]["quant_stage"]["quant_modifiers"]["QuantizationModifier"]
    covered: list[str] = []
    for group in modifier["config_groups"].values():
        for target in group["targets"]:
            covered += [n for n in names if re.match(target.removeprefix("re:"), n)]
    assert sorted(covered) == sorted(a.unit for a in plan.assignments)  # each once


@pytest.mark.parametrize("family", list(FAMILIES))
def test_profile_solve_apply_reload_export(family: str, tmp_path: Path) -> None:
    ids = tiny_ids(4, 24)
    model = tiny_model(family)
    reference = _outputs(model, ids)
    tables = {e: profile(model, ids, e, OPTIONS, progress=False) for e in ("fisher", "hessian")}
    for table in tables.values():
        losses = table.losses
        assert all(all(v >= 0 and v == v for v in row.values()) for row in losses.values())
        assert sum(r["b2-g32-sym"] for r in losses.values()) > sum(
            r["b4-g32-sym"] for r in losses.values()
        )
    moe = family in ("mixtral", "qwen2_moe")
    presets = ["qkv", "gate_up"] + (["moe_experts"] if moe else [])
    constraints = Constraints(budget={"avg_bits": 4.0}, tie_presets=presets, target="gptqmodel")
    plan = solve(tables["hessian"], constraints)
    chosen = {a.unit: a.option.key for a in plan.assignments}
    if moe:  # the same projection of every expert of a block shares one option
        for layer in range(4):
            for proj in ("gate_up_proj", "down_proj"):
                keys = {chosen[f"model.layers.{layer}.mlp.experts.{e}.{proj}"] for e in range(4)}
                assert len(keys) == 1
    errors = {}
    for method in ("rtn", "gptq"):
        compressed = tiny_model(family)
        apply_plan(compressed, plan, ids, method=method, progress=False)
        out = _outputs(compressed, ids)
        dequantized = _outputs(_dequantized_reference(family, compressed), ids)
        assert torch.allclose(out, dequantized, atol=1e-4, rtol=1e-4)
        errors[method] = float((out - reference).square().mean() / reference.square().mean())
        save_checkpoint(compressed, plan, tmp_path / method)
        loaded = load_checkpoint(tmp_path / method)
        assert type(loaded.model) is type(compressed)
        assert loaded.task == ("embedding" if family == "bert" else "causal_lm")
        assert torch.allclose(_outputs(loaded.model, ids), out, atol=1e-5)
    assert errors["gptq"] < errors["rtn"] < 1.0
    _export_matches(plan, tables["hessian"].units, compressed)


def test_unsupported_expert_layout_names_what_was_found() -> None:
    """Fused experts with biases and transposed weights (GPT-OSS style) are refused, named."""
    model = tiny_model("mixtral")
    experts = model.model.layers[1].mlp.experts
    experts.has_bias = True
    experts.is_transposed = True
    with pytest.raises(
        UnsupportedError, match=r"layers\.1\.mlp\.experts.*is_transposed=True.*has_bias"
    ):
        prepare_model(model)


def test_unknown_architecture_fails_fast(tmp_path: Path) -> None:
    import json
    import time

    from allocator.models.loader import load_model

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_arch"}))
    began = time.perf_counter()
    with pytest.raises(UnsupportedError, match=r"no_such_arch.*not supported"):
        load_model(tmp_path)
    assert time.perf_counter() - began < 10


def test_non_text_model_refused_before_work() -> None:
    from transformers import ViTConfig, ViTModel

    vit = ViTModel(
        ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, image_size=8, patch_size=4)
    )  # fmt: skip
    with pytest.raises(UnsupportedError, match=r"pixel_values.*text models"):
        profile(vit, tiny_ids(2, 8), "hessian", "b4-g32", progress=False)


def test_partly_handled_blocks_warn() -> None:
    """A block weight that is not a unit (here a bare 2-D parameter) is named in a warning."""
    model = tiny_model("llama")
    model.model.layers[0].mlp.extra = nn.Parameter(torch.zeros(4, 4))
    with pytest.warns(UserWarning, match=r"mlp\.extra \(4, 4\)"):
        profile(model, tiny_ids(2, 16), "hessian_diag", "b4-g32", progress=False)


def test_expert_hessians_count_every_token_of_the_block() -> None:
    """Each token reaches top-k experts; an expert's H is per token of the block, not routed."""
    from allocator.profile.capture import capture_stats

    model = prepare_model(tiny_model("mixtral"))
    ids = tiny_ids(4, 24)
    capture = capture_stats(model, ids, progress=False)
    routed = [capture.stats[f"model.layers.1.mlp.experts.{e}.down_proj"] for e in range(4)]
    assert sum(s.n_tokens for s in routed) == 2 * ids.numel()  # num_experts_per_tok = 2
    for stat in routed:
        assert stat.per_tokens == ids.numel() and stat.divisor == ids.numel()
    attention = capture.stats["model.layers.1.self_attn.q_proj"]
    assert attention.per_tokens is None and attention.n_tokens == ids.numel()
