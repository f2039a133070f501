"""dp backend: exact on integer costs, clear refusals, resolution handling."""

from __future__ import annotations

import numpy as np
import pytest

from allocator.errors import InfeasibleError, UnsupportedError
from allocator.solve.backends.dp import DPBackend
from allocator.solve.backends.mckp import MCKPBackend
from allocator.solve.problem import Problem
from benchmarks.instances import make_instance
from tests.solve.bruteforce import brute_force, random_problem


def test_matches_brute_force_on_integer_costs() -> None:
    rng = np.random.default_rng(31)
    solved = 0
    for _ in range(400):
        problem = random_problem(rng, max_units=7, max_options=5, integer=True)
        best = brute_force(problem)
        if best is None:
            with pytest.raises(InfeasibleError):
                DPBackend().solve(problem)
            continue
        solution = DPBackend().solve(problem)
        assert solution.status == "optimal"
        assert problem.is_feasible(solution.choice)
        assert solution.objective == pytest.approx(best[0], abs=1e-12)
        assert solution.lower_bound == solution.objective
        solved += 1
    assert solved > 200


def test_matches_mckp_on_realistic_bit_costs() -> None:
    problem = make_instance(224, 8, seed=9)
    ours = DPBackend().solve(problem)
    assert ours.info["resolution"] > 1  # GCD of real bit costs keeps the table small
    assert ours.objective == pytest.approx(MCKPBackend().solve(problem).objective, rel=1e-12)


def test_exact_fractional_resolution_is_optimal() -> None:
    rng = np.random.default_rng(4)
    for _ in range(100):
        base = random_problem(rng, integer=True)
        problem = Problem(base.cost / 4, base.loss, base.valid, base.budget / 4)
        best = brute_force(problem)
        if best is None:
            continue
        solution = DPBackend(resolution=0.25).solve(problem)
        assert solution.status == "optimal"
        assert solution.objective == pytest.approx(best[0], abs=1e-12)


def test_inexact_resolution_rounds_up_and_stays_feasible() -> None:
    rng = np.random.default_rng(6)
    for _ in range(100):
        problem = random_problem(rng)
        best = brute_force(problem)
        if best is None:
            continue
        solution = DPBackend(resolution=0.5).solve(problem)
        assert problem.is_feasible(solution.choice)
        assert solution.status in {"feasible", "optimal"}
        assert solution.lower_bound <= best[0] + 1e-9 <= solution.objective + 2e-9


def test_refuses_fractional_costs_without_resolution() -> None:
    problem = Problem(np.array([[1.5, 2.25]]), np.array([[1.0, 0.0]]), np.ones((1, 2), bool), 3.0)
    with pytest.raises(UnsupportedError, match=r"integer costs.*mckp"):
        DPBackend().solve(problem)


def test_refuses_too_large_table_naming_its_size() -> None:
    problem = make_instance(224, 8, seed=9)
    with pytest.raises(UnsupportedError, match=r"224 units x \d+ cost cells.*mckp"):
        DPBackend(max_cells=1000).solve(problem)


def test_refuses_resources_and_infeasible_budget() -> None:
    base = make_instance(10, 8, seed=1)
    with pytest.raises(UnsupportedError, match="resources"):
        DPBackend().solve(
            Problem(
                base.cost,
                base.loss,
                base.valid,
                base.budget,
                resources=base.cost[None],
                resource_limits=[1e9],
            )
        )
    base.budget = float(base.cost.min(axis=1).sum()) - 1.0
    with pytest.raises(InfeasibleError, match="smallest achievable size"):
        DPBackend().solve(base)


def test_time_limit_falls_back_to_relaxation() -> None:
    problem = make_instance(224, 8, seed=9)
    solution = DPBackend().solve(problem, time_limit=0.0)
    assert solution.status == "time_limit"
    assert problem.is_feasible(solution.choice)
    assert solution.lower_bound <= solution.objective


@pytest.mark.parametrize("name", ["lagrange", "mckp", "dp", "equal_loss"])
def test_empty_and_single_option_problems(name: str) -> None:
    from allocator.solve import backends
    from allocator.solve.registry import BACKENDS

    backends.load_all()
    backend = BACKENDS.get(name)
    empty = Problem(np.zeros((0, 3)), np.zeros((0, 3)), np.ones((0, 3), bool), 10.0)
    solution = backend().solve(empty)
    assert solution.choice.shape == (0,) and solution.objective == 0.0
    single = Problem(np.array([[8.0], [16.0]]), np.array([[1.0], [2.0]]), np.ones((2, 1), bool), 24)
    solution = backend().solve(single)
    assert list(solution.choice) == [0, 0] and solution.objective == pytest.approx(3.0)
