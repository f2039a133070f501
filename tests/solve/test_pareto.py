"""The Pareto sweep: monotone frontier, infeasible budgets reported, CSV export."""

from __future__ import annotations

import itertools

import pytest

from allocator.data.example import load_example
from allocator.solve.pareto import points_csv, sweep


@pytest.mark.parametrize("solver", ["auto", "lagrange"])
def test_frontier_is_monotone_and_reports_infeasible_budgets(solver: str) -> None:
    table, constraints = load_example()
    points = sweep(table, constraints, [4.0, 2.0, 3.0, 3.25, 3.5, 5.0, 6.0], solver=solver)
    assert [p.budget_avg_bits for p in points] == [2.0, 3.0, 3.25, 3.5, 4.0, 5.0, 6.0]
    assert not points[0].feasible and "smallest plan" in (points[0].reason or "")
    feasible = [p for p in points if p.feasible]
    assert len(feasible) == 6
    losses = [p.predicted_loss for p in feasible]
    assert all(b <= a for a, b in itertools.pairwise(losses)), losses
    assert all(p.avg_bits <= p.budget_avg_bits + 1e-9 for p in feasible)
    assert all(p.plan is not None and p.plan.size_bits <= p.plan.budget_bits for p in feasible)


def test_points_csv_has_one_row_per_budget() -> None:
    table, constraints = load_example()
    text = points_csv(sweep(table, constraints, [2.0, 3.5]))
    lines = text.strip().splitlines()
    assert lines[0].startswith("budget_avg_bits,feasible,avg_bits")
    assert lines[1].startswith("2.0,False")
    assert lines[2].startswith("3.5,True,3.5")


def test_a_worse_plan_at_a_larger_budget_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """A heuristic that does worse with more budget must not bend the frontier upward."""
    from allocator.solve import pareto

    table, constraints = load_example()
    real_solve = pareto.solve

    def worse_at_four(table, constraints, **kwargs):
        plan = real_solve(table, constraints, **kwargs)
        if constraints.budget.avg_bits == 4.0:
            return plan.model_copy(
                update={"predicted_loss": 1e9, "status": "heuristic", "lower_bound": 0.1}
            )
        return plan

    monkeypatch.setattr(pareto, "solve", worse_at_four)
    points = pareto.sweep(table, constraints, [3.5, 4.0])
    assert points[1].predicted_loss == points[0].predicted_loss
    assert points[1].lower_bound == 0.1  # the larger budget's own bound, not the smaller one's
    assert points[1].plan is not None and "smaller budget" in points[1].plan.notes[-1]
    assert points[1].plan.budget_bits > points[0].plan.budget_bits
