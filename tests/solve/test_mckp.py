"""mckp backend: exact against brute force and against HiGHS on realistic instances."""

from __future__ import annotations

import numpy as np
import pytest

from allocator.errors import InfeasibleError, UnsupportedError
from allocator.solve import backends
from allocator.solve.backends import mckp
from allocator.solve.backends.mckp import MCKPBackend
from allocator.solve.problem import Problem
from allocator.solve.registry import BACKENDS
from benchmarks.instances import make_instance
from tests.solve.bruteforce import brute_force, random_problem


@pytest.mark.parametrize("integer", [False, True])
def test_matches_brute_force(integer: bool) -> None:
    rng = np.random.default_rng(21 + integer)
    cores = 0
    for _ in range(400):
        problem = random_problem(rng, max_units=7, max_options=5, integer=integer)
        best = brute_force(problem)
        if best is None:
            with pytest.raises(InfeasibleError):
                MCKPBackend().solve(problem)
            continue
        solution = MCKPBackend().solve(problem)
        assert solution.status == "optimal"
        assert problem.is_feasible(solution.choice)
        assert solution.objective == pytest.approx(best[0], rel=1e-9, abs=1e-12)
        assert solution.lower_bound == pytest.approx(solution.objective, rel=1e-9, abs=1e-12)
        cores += solution.info["core_units"] > 0
    assert cores > 30  # the core DP, not only the relaxation, was exercised


def test_matches_brute_force_on_near_convex_curves() -> None:
    """Many units with convex-ish curves: small LP gaps, where reductions do most of the work."""
    rng = np.random.default_rng(5)
    for seed in range(30):
        problem = make_instance(7, 8, seed=seed, noise_sigma=0.3, avg_bits=float(rng.uniform(2, 6)))
        problem.valid[:, 5:] = False  # keep brute force small: 5 options per unit
        problem = Problem(problem.cost, problem.loss, problem.valid, problem.budget)
        best = brute_force(problem)
        solution = MCKPBackend().solve(problem)
        assert best is not None
        assert solution.objective == pytest.approx(best[0], rel=1e-9)


@pytest.mark.parametrize(("n_units", "n_options"), [(224, 8), (1000, 32), (1000, 8)])
def test_matches_highs_on_realistic_instances(n_units: int, n_options: int) -> None:
    backends.load_all()
    if "ilp" not in BACKENDS:
        pytest.skip("ilp backend not available")
    problem = make_instance(n_units, n_options, seed=n_units)
    ours = MCKPBackend().solve(problem)
    reference = BACKENDS.get("ilp")().solve(problem)
    assert ours.status == "optimal"
    assert problem.is_feasible(ours.choice)
    assert ours.objective <= reference.objective * (1 + 1e-9)
    # HiGHS proves optimality only up to its LP tolerances: on these scales (losses ~1e-3, costs
    # ~1e5 bits) its "optimal" answer can be ~1e-6 worse than ours, never the other way round
    assert ours.objective >= reference.objective * (1 - 1e-5)


def test_time_limit_returns_incumbent_with_bound() -> None:
    problem = make_instance(3000, 8, seed=4)
    solution = MCKPBackend().solve(problem, time_limit=0.0)
    assert solution.status in {"time_limit", "optimal"}
    assert problem.is_feasible(solution.choice)
    assert solution.lower_bound is not None
    assert solution.lower_bound <= solution.objective


def test_state_cap_returns_feasible_with_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mckp, "MAX_STATES", 1)
    problem = make_instance(500, 8, seed=4)
    solution = MCKPBackend().solve(problem)
    assert solution.status in {"feasible", "optimal"}
    assert problem.is_feasible(solution.choice)
    assert solution.lower_bound <= solution.objective


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
        MCKPBackend().solve(problem)
