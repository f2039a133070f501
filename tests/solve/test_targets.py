"""``target:`` in the constraints: solved plans fit the target's exporter; the checker and the
infeasibility report know about it."""

from __future__ import annotations

from pathlib import Path

import pytest

from allocator.data.example import load_example
from allocator.errors import InfeasibleError, InputError
from allocator.export import export_plan
from allocator.schema.constraints import Budget, Constraints, OptionFilter, UnitRule
from allocator.schema.io import load_constraints
from allocator.schema.targets import check_plan as check_target
from allocator.schema.targets import get_rules
from allocator.solve.api import solve
from allocator.solve.checker import check_plan

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.mark.parametrize("target", ["vllm", "gptqmodel", "llamacpp", "hqq", "compressed-tensors"])
def test_solved_plan_exports_to_its_target(target: str) -> None:
    table, _ = load_example()
    plan = solve(table, Constraints(budget=Budget(avg_bits=4.8), target=target))
    assert check_target(plan, get_rules(target)) == []
    export_plan(plan, target, units=table.units)  # raises when anything does not fit


def test_vllm_example_file() -> None:
    table, _ = load_example()
    constraints = load_constraints(EXAMPLES / "constraints_vllm.yaml")
    plan = solve(table, constraints)
    options = plan.options_by_unit()
    assert {o.bits for o in options.values()} <= {4, 8, 16}
    for unit in table.units:  # SmolLM2's 576-wide inputs cannot take 128-wide groups in vLLM
        group = options[unit.name].group_size
        assert group is None or unit.shape[1] % group == 0
    for layer in range(30):
        qkv = {options[f"model.layers.{layer}.self_attn.{p}_proj"].key for p in "qkv"}
        assert len(qkv) == 1


def test_checker_flags_plans_that_break_the_target() -> None:
    table, _ = load_example()
    plan = solve(table, Constraints(budget=Budget(avg_bits=3.5)))
    violations = check_plan(plan, table, Constraints(budget=Budget(avg_bits=3.5), target="vllm"))
    assert any("not allowed" in v for v in violations)


def test_target_combines_with_the_users_allowed_filter() -> None:
    table, _ = load_example()
    constraints = Constraints(
        budget=Budget(avg_bits=8.5), target="vllm", allowed=OptionFilter(bits=[8, 16])
    )
    plan = solve(table, constraints)
    assert {o.bits for o in plan.options_by_unit().values()} <= {8, 16}
    too_narrow = constraints.model_copy(update={"allowed": OptionFilter(bits=[3])})
    with pytest.raises(Exception, match="target = 'vllm' admits none"):
        solve(table, too_narrow)


def test_target_binds_in_the_infeasibility_report() -> None:
    table, _ = load_example()
    with pytest.raises(InfeasibleError) as info:
        solve(table, Constraints(budget=Budget(avg_bits=3.5), target="vllm"))
    assert any("target 'vllm'" in b for b in info.value.binding)
    assert info.value.min_size_bits / sum(u.numel for u in table.units) > 4.0


def test_unknown_target_is_refused() -> None:
    # refused as bad input when the constraints are built (a SchemaError naming the field)
    with pytest.raises(InputError, match="target 'tensorrt' is unknown"):
        Constraints(budget=Budget(avg_bits=4.0), target="tensorrt")


def test_a_target_rule_is_blamed_not_the_users_pin() -> None:
    """Pinning an asymmetric 8-bit option is fine for GPTQModel; with '+vllm' the error names
    the target's serving rule rather than the user's pin."""
    table, _ = load_example()
    pin = [UnitRule(pattern=r"layers\.0\.mlp\.down_proj$", pin="b8-g128")]
    plain = solve(table, Constraints(budget=Budget(avg_bits=4.5), target="gptqmodel", rules=pin))
    assert plain.options_by_unit()["model.layers.0.mlp.down_proj"].key == "b8-g128"
    served = Constraints(budget=Budget(avg_bits=4.5), target="gptqmodel+vllm", rules=pin)
    with pytest.raises(InputError, match=r"not accepted by target 'gptqmodel\+vllm'.*symmetric"):
        solve(table, served)
