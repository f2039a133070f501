"""The public API: plan fields, determinism, solver choice, refusals and infeasibility."""

from __future__ import annotations

import subprocess
import sys

import pytest

import allocator
from allocator.data.example import CONSTRAINTS_PATH, TABLE_PATH, load_example
from allocator.errors import InfeasibleError, UnsupportedError
from allocator.schema.constraints import Budget, Constraints, ResourceLimit, UnitRule
from allocator.solve import backends
from allocator.solve.api import solve
from allocator.solve.checker import check_plan
from allocator.solve.registry import BACKENDS
from tests.solve.test_reductions import _table

backends.load_all()


def test_plan_has_every_field_and_passes_the_checker() -> None:
    table, constraints = load_example()
    plan = solve(table, constraints, solver="ilp")
    assert check_plan(plan, table, constraints) == []
    assert len(plan.assignments) == 210
    assert plan.status == "optimal" and plan.solver == "ilp"
    assert plan.size_bits <= plan.budget_bits
    assert plan.size_bytes == plan.size_bits / 8
    assert plan.avg_bits == pytest.approx(plan.size_bits / plan.total_numel)
    assert plan.lower_bound is not None and plan.gap is not None and plan.gap <= 1.01e-6
    assert plan.table_hash == table.content_hash()
    assert plan.constraints_hash == constraints.content_hash()
    assert {"allocator", "python", "numpy", "highspy"} <= set(plan.versions)
    first = plan.assignments[0]
    assert first.cost_bits == constraints.overhead.cost_bits(first.option, table.unit(first.unit))
    assert first.predicted_loss == table.losses[first.unit][first.option.key]


def test_same_inputs_give_the_same_plan() -> None:
    one = allocator.solve(TABLE_PATH, CONSTRAINTS_PATH, solver="ilp")
    two = allocator.solve(TABLE_PATH, CONSTRAINTS_PATH, solver="ilp")
    assert one.content_hash() == two.content_hash()


def test_auto_uses_mckp_for_budget_only_and_ilp_otherwise() -> None:
    table = _table(resources=True)
    plain = solve(table, Constraints.simple(4.0))
    expected = "mckp" if "mckp" in BACKENDS else "ilp"
    assert plain.solver == expected
    limited = Constraints.simple(4.0, resources=[ResourceLimit(name="latency", max=40)])
    assert solve(table, limited).solver == "ilp"
    assert solve(table, limited).predicted_loss == pytest.approx(
        solve(table, limited, solver="ilp").predicted_loss
    )


def test_backend_refuses_constraints_it_does_not_support() -> None:
    capped = Constraints.simple(4.0, max_distinct_options=2)
    with pytest.raises(UnsupportedError, match=r"cvxpy_relax.*max_distinct.*use one of:.*ilp"):
        solve(_table(), capped, solver="cvxpy_relax")


def test_unknown_solver_is_refused() -> None:
    with pytest.raises(UnsupportedError, match="unknown solver 'gurobi'"):
        solve(_table(), Constraints.simple(4.0), solver="gurobi")


def test_budget_below_minimum_names_the_minimum_and_binding_constraints() -> None:
    constraints = Constraints.simple(2.0, rules=[UnitRule(pattern="down_proj$", pin="b8-g128")])
    with pytest.raises(InfeasibleError) as info:
        solve(_table(), constraints)
    # five units at b2-g128 (2.25 bits) and down_proj at b8-g128 (8.25 bits)
    smallest = 128 * 256 * (5 * 2.25 + 8.25)
    assert info.value.min_size_bits == pytest.approx(smallest)
    assert f"{smallest / (6 * 128 * 256):.4f} avg bits" in str(info.value)
    assert info.value.binding == ["budget", "pins"]
    assert info.value.exit_code == 3


def test_resource_limit_below_its_floor_is_infeasible_at_any_size() -> None:
    constraints = Constraints.simple(16.0, resources=[ResourceLimit(name="latency", max=5)])
    with pytest.raises(InfeasibleError, match=r"at any size.*latency.*needs at least 12"):
        solve(_table(resources=True), constraints)


def test_distinct_cap_raising_the_minimum_is_reported_as_binding() -> None:
    rules = [UnitRule(pattern="down_proj$", pin="b8-g128")]
    constraints = Constraints(budget=Budget(avg_bits=3.0), rules=rules, max_distinct_options=1)
    with pytest.raises(InfeasibleError) as info:
        solve(_table(), constraints)
    assert info.value.min_size_bits == pytest.approx(6 * 128 * 256 * 8.25)
    assert "max_distinct_options = 1" in info.value.binding


def test_importing_allocator_does_not_import_torch_or_solvers() -> None:
    code = (
        "import sys, allocator; allocator.load_table; "
        "print('torch' in sys.modules, 'highspy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_public_api_names() -> None:
    for name in (
        "solve",
        "pareto",
        "check_plan",
        "load_table",
        "load_constraints",
        "load_plan",
        "save_plan",
    ):
        assert callable(getattr(allocator, name))


@pytest.mark.parametrize(
    "first", ["allocator.cost", "allocator.schema.constraints", "allocator.solve"]
)
def test_any_core_module_imports_first(first: str) -> None:
    """No circular import whichever core module a user imports first."""
    code = f"import {first}; from allocator.schema import Constraints; print(Constraints.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Constraints"
