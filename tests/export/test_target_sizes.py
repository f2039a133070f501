"""Each target's size model against what the target really writes, over real module trees.

For tiny real Hugging Face models of several families (``tests/helpers.tiny_model``), a random
plan that fits the target is exported; the export is resolved back onto the model's own module
names with the target's matching rules (GPTQModel ``dynamic``: ``re.match``, ``-:`` first;
compressed-tensors ``re:`` targets: ``re.match``; llama.cpp: ``re.search`` on GGUF names); each
resolved module is then written by the target's own code (AutoRound's GPTQ-format
``QuantLinear`` buffers, compressed-tensors' ``PackedQuantizationCompressor``, gguf's byte
shapes), and the bytes written must equal the size the target's size model predicts.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from allocator.export import export_plan, size_model_for
from allocator.schema import Option, Unit
from tests.helpers import tiny_model

from .conftest import random_plan

torch = pytest.importorskip("torch")

FAMILIES = ["llama", "qwen2", "gemma3", "phi3", "gpt_neox", "mixtral"]


def _units_and_names(family: str) -> tuple[list[Unit], list[str]]:
    from allocator.models.units import find_units

    model = tiny_model(family)
    units = find_units(model, include_lm_head=family == "llama")
    return units, [name for name, _ in model.named_modules()]


def _gptq_resolve(dynamic: dict[str, Any], name: str) -> dict[str, Any] | bool | None:
    """GPTQModel's dynamic_get: '-:' keys first, re.match on the full name, first match wins."""
    ordered = [k for k in dynamic if k.startswith("-:")] + [
        k for k in dynamic if not k.startswith("-:")
    ]
    for key in ordered:
        if re.match(key[2:] if key[:2] in ("-:", "+:") else key, name):
            return False if key.startswith("-:") else dynamic[key]
    return None


def _gptq_written_bits(bits: int, group: int, shape: tuple[int, int]) -> float:
    from auto_round_extension.torch.qlinear_torch_zp import QuantLinear

    out_features, in_features = shape
    group = group if group > 0 else in_features
    layer = QuantLinear(
        bits, group, in_features, out_features, False, g_idx=True
    )  # as AutoRound packs
    return 8.0 * sum(b.numel() * b.element_size() for b in layer.buffers())


@pytest.mark.parametrize("family", FAMILIES)
def test_gptq_size_model_matches_the_gptq_format(family: str) -> None:
    pytest.importorskip("auto_round_extension")
    units, names = _units_and_names(family)
    plan = random_plan(units, "gptqmodel", seed=3)
    config = export_plan(plan, "gptqmodel", units=units).config
    assert config["lm_head"] is any(
        a.unit == "lm_head" and not a.option.is_fp16 for a in plan.assignments
    )
    shapes = {u.name: u.shape for u in units}
    base = {k: config[k] for k in ("bits", "group_size", "sym")}
    size = size_model_for("gptqmodel")
    written = predicted = 0.0
    for name in names:
        hit = _gptq_resolve(config["dynamic"], name)
        if name not in shapes:
            assert hit is None, name
            continue
        option = plan.options_by_unit()[name]
        unit = next(u for u in units if u.name == name)
        predicted += size.cost_bits(option, unit)
        if hit is False:
            written += 16.0 * unit.numel  # skipped: stays fp16
            continue
        fields = {**base, **(hit or {})}
        assert fields["bits"] == option.bits
        written += _gptq_written_bits(fields["bits"], fields["group_size"], shapes[name])
    assert written == pytest.approx(predicted, rel=1e-12)


def _ct_written_bits(weights: dict[str, Any], shape: tuple[int, int]) -> float:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    args = QuantizationArgs(**weights)
    out_features, in_features = shape
    groups = 1 if args.group_size is None else math.ceil(in_features / args.group_size)
    state = {
        "weight": torch.randn(out_features, in_features, dtype=torch.bfloat16),
        "weight_scale": torch.full((out_features, groups), 0.01, dtype=torch.bfloat16),
        "weight_zero_point": torch.zeros((out_features, groups), dtype=torch.int8),
    }
    if args.symmetric:
        del state["weight_zero_point"]
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    written = PackedQuantizationCompressor.compress(state, scheme)
    return 8.0 * sum(t.numel() * t.element_size() for t in written.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_compressed_tensors_size_model_matches_the_compressor(family: str) -> None:
    pytest.importorskip("compressed_tensors")
    units, names = _units_and_names(family)
    plan = random_plan([u for u in units if u.name != "lm_head"], "compressed-tensors", seed=5)
    plan_units = {a.unit for a in plan.assignments}
    plan = plan.model_copy(
        update={"assignments": [a for a in plan.assignments if a.option.sparsity == 0]}
    )
    qc = export_plan(plan, "compressed-tensors", units=units).config["quantization_config"]
    size = size_model_for("compressed-tensors")
    by_name = {u.name: u for u in units}
    options = plan.options_by_unit()
    written = predicted = 0.0
    for name in names:
        groups = [
            g["weights"]
            for g in qc["config_groups"].values()
            if any(re.match(t.removeprefix("re:"), name) for t in g["targets"])
        ]
        assert len(groups) <= 1, name
        if name not in options:
            assert not groups or name not in plan_units, name
            continue
        unit = by_name[name]
        predicted += size.cost_bits(options[name], unit)
        if not groups:
            assert options[name].is_fp16, name
            written += 16.0 * unit.numel
            continue
        assert unit.shape is not None
        written += _ct_written_bits(groups[0], unit.shape)
    assert written == pytest.approx(predicted, rel=1e-12)


def test_llamacpp_size_model_matches_ggml_byte_shapes() -> None:
    gguf = pytest.importorskip("gguf")
    from gguf.quants import quant_shape_to_byte_shape

    from allocator.models.gguf_names import hf_to_gguf

    units, _ = _units_and_names("llama")
    units = [u for u in units if u.name != "lm_head"]
    # 256-wide rows so K-quants apply, and 64-wide rows that fall back to 32-block types
    wide = [
        u.model_copy(update={"shape": (u.shape[0], 256), "numel": u.shape[0] * 256})
        for u in units[:7]
    ]
    units = wide + units[7:]
    plan = random_plan(units, "llamacpp", seed=9)
    text = export_plan(plan, "llamacpp", units=units).files[""]
    rules = [
        (re.compile(p.lower()), t.upper())
        for p, _, t in (tok.partition("=") for tok in text.split())
    ]
    size = size_model_for("llamacpp")
    written = predicted = 0.0
    for a in plan.assignments:
        unit = next(u for u in units if u.name == a.unit)
        tensor = hf_to_gguf(a.unit, "llama")
        hits = [t for r, t in rules if r.search(tensor)]
        assert len(hits) == 1, tensor
        assert unit.shape is not None
        byte_shape = quant_shape_to_byte_shape(unit.shape, gguf.GGMLQuantizationType[hits[0]])
        written += 8.0 * math.prod(byte_shape)
        predicted += size.cost_bits(a.option, unit)
    assert written == pytest.approx(predicted, rel=1e-12)


def test_target_size_models_differ_where_the_formats_do() -> None:
    unit = Unit(name="model.layers.0.mlp.down_proj", shape=(576, 1536))
    sym, asym = Option.parse("b4-g128-sym"), Option.parse("b4-g128")
    gptq, ct = size_model_for("gptqmodel"), size_model_for("compressed-tensors")
    groups = 576 * 12
    assert gptq.cost_bits(sym, unit) == gptq.cost_bits(asym, unit)  # qzeros always stored
    assert gptq.cost_bits(sym, unit) == unit.numel * 4 + groups * (16 + 4) + 1536 * 32
    assert ct.cost_bits(sym, unit) == unit.numel * 4 + groups * 16 + 128
    assert ct.cost_bits(asym, unit) == unit.numel * 4 + groups * (16 + 4) + 128
    assert size_model_for("gptqmodel+vllm") == gptq
    assert size_model_for("gguf").cost_bits(asym, unit) == unit.numel * 4.5  # Q4_K
