"""equal_loss backend: closed form, feasibility, closeness to the optimum on exponential models."""

from __future__ import annotations

import numpy as np
import pytest

from allocator.errors import InfeasibleError, UnsupportedError
from allocator.solve.backends.equal_loss import (
    EqualLossBackend,
    continuous_costs,
    fit_exponential,
)
from allocator.solve.backends.mckp import MCKPBackend
from allocator.solve.problem import Problem
from benchmarks.instances import make_instance
from tests.solve.bruteforce import brute_force, random_problem


def test_fit_recovers_exponential_model() -> None:
    rng = np.random.default_rng(0)
    numel = np.array([1024.0, 4096.0, 256.0])
    scale = rng.lognormal(size=3)
    bits = np.arange(2, 9, dtype=np.float64)
    cost = numel[:, None] * bits[None, :]
    loss = scale[:, None] * np.exp2(-2 * bits)[None, :]
    intercept, slope = fit_exponential(Problem(cost, loss, np.ones(cost.shape, bool), 1e9))
    assert slope == pytest.approx(2 * np.log(2) / numel)
    assert np.exp(intercept) == pytest.approx(scale)


def test_continuous_solution_is_the_baq_formula() -> None:
    """Equal unit sizes, no clamping: b_i = b_bar + 1/2 log2(C_i / geomean(C))."""
    numel, n_units, avg_bits = 4096.0, 50, 4.0
    rng = np.random.default_rng(1)
    scale = rng.lognormal(sigma=0.5, size=n_units)
    slope = np.full(n_units, 2 * np.log(2) / numel)
    costs, _ = continuous_costs(
        np.log(scale), slope, np.zeros(n_units), np.full(n_units, 1e9), avg_bits * numel * n_units
    )
    expected = avg_bits + 0.5 * np.log2(scale / np.exp(np.log(scale).mean()))
    assert costs / numel == pytest.approx(expected, abs=1e-6)


def test_feasible_and_bound_valid_on_random_problems() -> None:
    rng = np.random.default_rng(41)
    for _ in range(200):
        problem = random_problem(rng)
        best = brute_force(problem)
        if best is None:
            with pytest.raises(InfeasibleError):
                EqualLossBackend().solve(problem)
            continue
        solution = EqualLossBackend().solve(problem)
        assert solution.status == "heuristic"
        assert problem.is_feasible(solution.choice)
        assert solution.lower_bound <= best[0] + 1e-9 <= solution.objective + 2e-9


@pytest.mark.parametrize(("n_units", "avg_bits"), [(224, 3.0), (1000, 3.5), (1000, 4.25)])
def test_close_to_optimum_on_exponential_instances(n_units: int, avg_bits: float) -> None:
    problem = make_instance(n_units, 8, avg_bits=avg_bits, seed=n_units)
    ours = EqualLossBackend().solve(problem)
    optimum = MCKPBackend().solve(problem).objective
    assert problem.is_feasible(ours.choice)
    assert ours.objective <= optimum * 1.01


def test_refuses_resources() -> None:
    base = make_instance(10, 8, seed=1)
    problem = Problem(
        base.cost,
        base.loss,
        base.valid,
        base.budget,
        resources=base.cost[None],
        resource_limits=[1e9],
    )
    with pytest.raises(UnsupportedError, match="resources"):
        EqualLossBackend().solve(problem)
