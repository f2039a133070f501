"""Lagrange backend: hull correctness, certified bounds against brute force, scale smoke test."""

from __future__ import annotations

import numpy as np
import pytest

from allocator.errors import InfeasibleError, UnsupportedError
from allocator.solve import hull
from allocator.solve.backends import lagrange
from allocator.solve.backends.lagrange import LagrangeBackend
from allocator.solve.hull import dual_value, lower_hulls
from allocator.solve.problem import Problem
from benchmarks.instances import make_instance
from tests.solve.bruteforce import brute_force, random_problem


@pytest.mark.parametrize("integer", [False, True])
def test_hull_points_attain_every_penalized_minimum(integer: bool) -> None:
    rng = np.random.default_rng(7)
    for _ in range(150):
        problem = random_problem(rng, max_units=5, max_options=7, integer=integer)
        hulls = lower_hulls(problem.cost, problem.loss)
        for unit in range(problem.n_units):
            points = hulls.points(unit)
            cost, loss = problem.cost[unit], problem.loss[unit]
            assert cost[points[0]] == cost.min()
            assert loss[points[-1]] == loss.min()
            assert np.all(np.diff(cost[points]) > 0) and np.all(np.diff(loss[points]) < 0)
            valid = problem.valid[unit]
            for lam in (0.0, 0.01, 0.1, 1.0, 10.0):
                penalized = np.where(valid, loss + lam * np.where(valid, cost, 0.0), np.inf)
                assert penalized[points].min() == pytest.approx(penalized.min())
        segments = hulls.eff[hulls.eff > 0]
        assert np.all(np.diff(hulls.eff, axis=1) <= 0)
        assert np.all(segments > 0)


@pytest.mark.parametrize("integer", [False, True])
def test_bound_brackets_brute_force_optimum(integer: bool) -> None:
    rng = np.random.default_rng(11 + integer)
    checked = 0
    for _ in range(250):
        problem = random_problem(rng, integer=integer)
        best = brute_force(problem)
        if best is None:
            with pytest.raises(InfeasibleError):
                LagrangeBackend().solve(problem)
            continue
        solution = LagrangeBackend().solve(problem)
        assert problem.is_feasible(solution.choice)
        assert solution.objective == pytest.approx(problem.evaluate(solution.choice)[0])
        assert solution.lower_bound <= best[0] + 1e-9
        assert best[0] <= solution.objective + 1e-9
        if solution.status == "optimal":
            assert solution.objective == pytest.approx(best[0], abs=1e-9)
        checked += 1
    assert checked > 100


def test_dual_value_is_a_lower_bound_for_any_multiplier() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        problem = random_problem(rng)
        best = brute_force(problem)
        if best is None:
            continue
        for lam in (0.0, 0.003, 0.05, 0.5, 5.0):
            assert dual_value(problem.cost, problem.loss, lam, problem.budget) <= best[0] + 1e-9


@pytest.mark.parametrize(("n_units", "n_options"), [(300, 8), (2000, 32)])
def test_hull_dual_equals_raw_dual(n_units: int, n_options: int) -> None:
    problem = make_instance(n_units, n_options, seed=8, noise_sigma=0.3)
    relaxed = lagrange.relax(problem)
    raw = dual_value(problem.cost, problem.loss, relaxed.lam, problem.budget)
    assert relaxed.lower_bound == pytest.approx(min(raw, relaxed.objective), rel=1e-12)


def test_bracketed_search_matches_full_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = make_instance(20_000, 8, seed=5, noise_sigma=0.3)
    full = lagrange.relax(problem)
    monkeypatch.setattr(lagrange, "FULL_SORT_SEGMENTS", 1_000)
    monkeypatch.setattr(lagrange, "SAMPLE_SIZE", 512)
    bracketed = lagrange.relax(problem)
    assert bracketed.lam == full.lam
    assert bracketed.objective == pytest.approx(full.objective, rel=1e-12)
    assert bracketed.lower_bound == pytest.approx(full.lower_bound, rel=1e-12)
    assert problem.is_feasible(bracketed.choice)


def test_hundred_thousand_units_tiny_certified_gap() -> None:
    problem = make_instance(100_000, 8, seed=2)
    solution = LagrangeBackend().solve(problem)
    assert problem.is_feasible(solution.choice)
    assert solution.gap is not None and solution.gap < 1e-4
    assert solution.lower_bound <= solution.objective


def test_slack_budget_takes_least_loss_options() -> None:
    problem = make_instance(500, 8, seed=1)
    problem.budget = float(problem.cost.max(axis=1).sum())
    solution = LagrangeBackend().solve(problem)
    assert solution.status == "optimal"
    assert solution.objective == pytest.approx(problem.loss.min(axis=1).sum())


def test_budget_below_minimum_is_infeasible() -> None:
    problem = make_instance(50, 8, seed=1)
    problem.budget = float(problem.cost.min(axis=1).sum()) * 0.99
    with pytest.raises(InfeasibleError, match="smallest achievable size"):
        LagrangeBackend().solve(problem)


def test_refuses_resources_and_solves_max_distinct_by_subsets() -> None:
    base = make_instance(10, 8, seed=1)
    with_resources = Problem(
        base.cost,
        base.loss,
        base.valid,
        base.budget,
        resources=base.cost[None],
        resource_limits=[1e9],
    )
    with pytest.raises(UnsupportedError, match="resources"):
        LagrangeBackend().solve(with_resources)
    ids = np.tile(np.arange(8), (10, 1))
    capped = Problem(base.cost, base.loss, base.valid, base.budget, option_ids=ids, max_distinct=2)
    solved = LagrangeBackend().solve(capped)  # one relaxation per option subset
    assert capped.is_feasible(solved.choice)
    assert solved.lower_bound is not None and solved.lower_bound <= solved.objective


def test_missed_bracket_is_widened(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = make_instance(20_000, 8, seed=6, noise_sigma=0.3)
    full = lagrange.relax(problem)
    sampled = lagrange._sample_bracket
    calls: list[int] = []

    def first_wrong(prob: Problem, widen: int) -> tuple[float, float]:
        calls.append(widen)
        return (1e9, 1e10) if widen == 0 else sampled(prob, widen)

    monkeypatch.setattr(lagrange, "FULL_SORT_SEGMENTS", 1_000)
    monkeypatch.setattr(lagrange, "_sample_bracket", first_wrong)
    again = lagrange.relax(problem)
    assert calls[:2] == [0, 1]
    assert again.objective == pytest.approx(full.objective, rel=1e-12)
    assert again.lower_bound == pytest.approx(full.lower_bound, rel=1e-12)


def test_bracketed_search_with_slack_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = make_instance(20_000, 8, seed=6)
    problem.budget = float(problem.cost.max(axis=1).sum()) * 1.01
    monkeypatch.setattr(lagrange, "FULL_SORT_SEGMENTS", 1_000)
    relaxed = lagrange.relax(problem)
    assert relaxed.objective == pytest.approx(problem.loss.min(axis=1).sum(), rel=1e-12)


@pytest.mark.parametrize("integer", [False, True])
def test_pairwise_and_sorted_hulls_agree(integer: bool) -> None:
    rng = np.random.default_rng(17 + integer)
    for _ in range(300):
        problem = random_problem(rng, max_units=6, max_options=10, integer=integer)
        pairwise = hull._hull_columns_pairwise(problem.cost, problem.loss)
        chain = hull._hull_columns_sorted(problem.cost, problem.loss)
        np.testing.assert_array_equal(pairwise, chain)
