"""The independent checker accepts solved plans and catches every kind of tampering."""

from __future__ import annotations

import pytest

from allocator.errors import PlanCheckError
from allocator.schema.constraints import Budget, Constraints, ResourceLimit, UnitRule
from allocator.schema.option import Option
from allocator.schema.plan import Plan
from allocator.solve.api import solve
from allocator.solve.checker import assert_plan_ok, check_plan
from tests.solve.test_reductions import NAMES, _table

CONSTRAINTS = Constraints(
    budget=Budget(avg_bits=4.5),
    rules=[UnitRule(pattern="down_proj$", pin="b8-g128"), UnitRule(pattern="q_proj$", min_bits=3)],
    tie_presets=["qkv"],
    resources=[ResourceLimit(name="latency", max=40)],
    max_distinct_options=3,
)


@pytest.fixture(scope="module")
def solved() -> Plan:
    return solve(_table(resources=True), CONSTRAINTS, solver="ilp")


def _edit(plan: Plan, name: str, **fields: object) -> Plan:
    copy = plan.model_copy(deep=True)
    for a in copy.assignments:
        if a.unit == name:
            for key, value in fields.items():
                setattr(a, key, value)
    return copy


def test_solved_plan_passes(solved: Plan) -> None:
    assert check_plan(solved, _table(resources=True), CONSTRAINTS) == []
    assert_plan_ok(solved, _table(resources=True), CONSTRAINTS)


def test_wrong_cost_and_loss_are_caught(solved: Plan) -> None:
    table = _table(resources=True)
    bad = _edit(solved, NAMES[1], cost_bits=1.0, predicted_loss=0.0)
    problems = check_plan(bad, table, CONSTRAINTS)
    assert any("cost_bits" in p for p in problems)
    assert any("predicted_loss" in p for p in problems)
    assert any("size_bits" in p for p in problems)  # totals no longer match


def test_pin_bound_tie_and_distinct_violations_are_caught(solved: Plan) -> None:
    table = _table(resources=True)
    bad = _edit(solved, NAMES[5], option=Option.parse("b2-g128"))
    assert any("pinned" in p for p in check_plan(bad, table, CONSTRAINTS))
    bad = _edit(solved, NAMES[0], option=Option.parse("b2-g128"))
    problems = check_plan(bad, table, CONSTRAINTS)
    assert any("min_bits" in p for p in problems)
    assert any("tied units" in p for p in problems)
    bad = solved.model_copy(deep=True)
    for a, key in zip(
        bad.assignments, ["b2-g128", "b3-g128", "b4-g128", "fp16", "b4-g64"], strict=False
    ):
        a.option = Option.parse(key)
    assert any("distinct options" in p for p in check_plan(bad, table, CONSTRAINTS))


def test_budget_and_resource_violations_are_caught(solved: Plan) -> None:
    table = _table(resources=True)
    tight = CONSTRAINTS.model_copy(
        update={"budget": Budget(avg_bits=3.0), "resources": [ResourceLimit(name="latency", max=5)]}
    )
    problems = check_plan(solved, table, tight)
    assert any("exceeds the budget" in p for p in problems)
    assert any("resource 'latency'" in p for p in problems)


def test_missing_duplicate_and_foreign_units_are_caught(solved: Plan) -> None:
    table = _table(resources=True)
    bad = solved.model_copy(deep=True)
    bad.assignments = [*bad.assignments[1:], bad.assignments[1]]
    problems = check_plan(bad, table, CONSTRAINTS)
    assert any("has no assignment" in p for p in problems)
    assert any("assigned 2 times" in p for p in problems)
    bad = _edit(solved, NAMES[2], unit="model.layers.9.self_attn.v_proj")
    assert any("not a selected table unit" in p for p in check_plan(bad, table, CONSTRAINTS))


def test_lower_bound_above_loss_and_wrong_gap_are_caught(solved: Plan) -> None:
    bad = solved.model_copy(update={"lower_bound": solved.predicted_loss * 2 + 1})
    assert any("lower_bound" in p for p in check_plan(bad, _table(resources=True), CONSTRAINTS))
    bad = solved.model_copy(update={"gap": 0.5})
    assert any("plan gap" in p for p in check_plan(bad, _table(resources=True), CONSTRAINTS))


def test_assert_plan_ok_raises_plan_check_error(solved: Plan) -> None:
    bad = _edit(solved, NAMES[5], option=Option.parse("b2-g128"))
    with pytest.raises(PlanCheckError, match="pinned"):
        assert_plan_ok(bad, _table(resources=True), CONSTRAINTS)
