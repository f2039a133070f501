"""The objects the golden files under tests/schema/golden/ must hold."""

from __future__ import annotations

from allocator.schema.constraints import Budget, Constraints, OptionFilter, ResourceLimit, UnitRule
from allocator.schema.option import Option
from allocator.schema.plan import Assignment, Plan
from allocator.schema.size import SizeModel
from allocator.schema.table import Provenance, SensitivityTable
from allocator.schema.unit import Unit


def golden_table() -> SensitivityTable:
    units = [
        Unit(name="model.layers.0.self_attn.q_proj", shape=(64, 128)),
        Unit(name="model.layers.0.mlp.down_proj", shape=(128, 256)),
        Unit(name="lm_head", numel=4096),
    ]
    options = [Option.parse(k) for k in ("b3-g64", "b4-g128", "b4-gc-sym", "b4-g128-2:4", "fp16")]
    losses = {
        "model.layers.0.self_attn.q_proj": {"b3-g64": 0.25, "b4-g128": 0.125, "fp16": 0.0},
        "model.layers.0.mlp.down_proj": {"b3-g64": 0.5, "b4-gc-sym": 0.375, "b4-g128-2:4": 0.75},
        "lm_head": {"b4-g128": 1.5, "fp16": 0.0},
    }
    return SensitivityTable(
        units=units,
        options=options,
        losses=losses,
        provenance=Provenance(estimator="golden", settings={"note": "hand-made"}),
    )


def golden_constraints() -> Constraints:
    return Constraints(
        budget=Budget(avg_bits=4.5),
        allowed=OptionFilter(bits=[3, 4, 16], group_size=[64, 128]),
        rules=[
            UnitRule(pattern="down_proj$", min_bits=3, max_sparsity=0.5),
            UnitRule(pattern="^lm_head$", pin="fp16"),
            UnitRule(pattern="q_proj", allow=OptionFilter(keys=["b3-g64", "b4-g128"]), max_bits=4),
        ],
        ties=[["q_proj$", "down_proj$"]],
        tie_presets=["qkv"],
        target="vllm",
        overhead=SizeModel(),  # the files spell it out, so the target's own model does not apply
        resources=[ResourceLimit(name="bops", max=2.0e6)],
        max_distinct_options=2,
        exclude=["^lm_head$"],
    )


def golden_plan() -> Plan:
    option = Option.parse("b4-g128")
    return Plan(
        assignments=[
            Assignment(
                unit="model.layers.0.self_attn.q_proj",
                option=option,
                numel=8192,
                cost_bits=34816.0,
                predicted_loss=0.125,
                resources={"bops": 524288.0},
            )
        ],
        predicted_loss=0.125,
        size_bits=34816.0,
        size_bytes=4352.0,
        total_numel=8192,
        avg_bits=4.25,
        budget_bits=36864.0,
        resources={"bops": 524288.0},
        solver="ilp",
        status="optimal",
        lower_bound=0.125,
        gap=0.0,
        solve_seconds=0.01,
        table_hash="0" * 64,
        constraints_hash="1" * 64,
        versions={"allocator": "0.1.0"},
        notes=["golden"],
    )
