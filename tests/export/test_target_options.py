"""GPTQModel/AutoRound exports carry lm_head and desc_act; plans may be given as dicts."""

from __future__ import annotations

import pytest

from allocator import AllocatorError, Option, Plan, Unit, export_plan
from allocator.schema import DEFAULT_SIZE_MODEL, Assignment


def _plan(lm_head: str) -> Plan:
    units = [
        Unit(name="model.layers.0.mlp.down_proj", shape=(64, 128)),
        Unit(name="lm_head", shape=(128, 64)),
    ]
    options = [Option.parse("b4-g64-sym"), Option.parse(lm_head)]
    assignments = [
        Assignment(
            unit=u.name,
            option=o,
            numel=u.numel,
            cost_bits=DEFAULT_SIZE_MODEL.cost_bits(o, u),
            predicted_loss=0.0,
        )
        for u, o in zip(units, options, strict=True)
    ]
    return Plan.from_assignments(assignments, budget_bits=1e9, solver="fixture", status="feasible")


def test_gptqmodel_carries_lm_head_and_desc_act() -> None:
    quantized = export_plan(_plan("b8-g64-sym"), "gptqmodel").config
    assert quantized["lm_head"] is True and quantized["desc_act"] is True
    kept = export_plan(_plan("fp16").model_dump(), "gptqmodel", options={"desc_act": False})
    assert kept.config["lm_head"] is False and kept.config["desc_act"] is False
    assert any(k.startswith("-:") and "lm_head" in k for k in kept.config["dynamic"])


def test_autoround_asks_for_lm_head_when_planned() -> None:
    assert export_plan(_plan("b8-g64-sym"), "autoround").config["quant_lm_head"] is True
    assert "quant_lm_head" not in export_plan(_plan("fp16"), "autoround").config


def test_serving_variant_checks_vllm_rules_only_when_asked() -> None:
    plan = _plan("b8-g64")  # asymmetric 8-bit: fine for GPTQModel, not for vLLM
    export_plan(plan, "gptqmodel")
    with pytest.raises(AllocatorError, match=r"(?s)gptqmodel\+vllm.*8-bit must be symmetric"):
        export_plan(plan, "gptqmodel+vllm")
