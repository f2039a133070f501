"""Property: whatever the random table and constraints, solve returns a plan that passes the
checker and fits the budget, or raises a clear user error; never an over-budget plan."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allocator.errors import InfeasibleError, InputError, UnsupportedError
from allocator.solve.api import solve
from allocator.solve.checker import check_plan
from tests.solve._random_cases import brute_force, random_constraints, random_table


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n_units=st.integers(1, 6),
    with_resource=st.booleans(),
    solver=st.sampled_from(["auto", "ilp", "lagrange", "cvxpy_relax"]),
)
def test_every_returned_plan_passes_the_checker(
    seed: int, n_units: int, with_resource: bool, solver: str
) -> None:
    rng = np.random.default_rng(seed)
    table = random_table(rng, n_units=n_units, with_resource=with_resource)
    constraints = random_constraints(rng, table)
    try:
        plan = solve(table, constraints, solver=solver)
    except InfeasibleError as exc:
        assert brute_force(table, constraints) is None
        assert "infeasible" in str(exc)
        return
    except (InputError, UnsupportedError):
        return
    assert check_plan(plan, table, constraints) == []
    assert plan.size_bits <= plan.budget_bits * (1 + 1e-9)
