"""The ilp backend's model and its reduced-cost fixing: never loses the optimum."""

from __future__ import annotations

import numpy as np
import pytest

from allocator.solve.backends._mip import build_mip
from allocator.solve.backends.ilp import IlpBackend, _highs, fix_by_reduced_cost
from allocator.solve.problem import Problem


def _problem(
    seed: int, n: int = 60, k: int = 12, resources: bool = False, distinct: bool = False
) -> Problem:
    """Convex-ish decreasing losses with noise (dominated options and near-ties included)."""
    rng = np.random.default_rng(seed)
    bits = np.linspace(2, 8, k)
    numel = rng.choice([4096, 16384, 65536], size=n).astype(float)
    cost = numel[:, None] * (bits[None, :] + rng.choice([0.25, 0.5], size=k)[None, :])
    loss = (
        rng.lognormal(0, 1.5, n)[:, None] * 4.0 ** (-bits)[None, :] * rng.lognormal(0, 0.1, (n, k))
    )
    valid = rng.random((n, k)) < 0.85
    valid[:, 0] = True
    kwargs: dict = {}
    if resources:
        latency = rng.uniform(1, 3, (1, n, k)) * bits[None, None, :]
        kwargs.update(resources=latency, resource_limits=np.array([latency[0, :, 0].sum() * 2.2]))
    if distinct:
        kwargs.update(option_ids=np.tile(np.arange(k), (n, 1)), max_distinct=3)
    budget = float((numel * 4.1).sum())
    return Problem(cost=cost, loss=loss, valid=valid, budget=budget, **kwargs)


def _plain_highs(problem: Problem) -> float:
    model = build_mip(problem)
    highs = _highs(model, None, 0.0)
    highs.run()
    choice = model.choice(np.asarray(highs.getSolution().col_value), problem)
    assert problem.is_feasible(choice)
    return problem.evaluate(choice)[0]


def test_model_shape() -> None:
    problem = _problem(0, n=5, k=4, resources=True, distinct=True)
    model = build_mip(problem)
    cells = int(problem.valid.sum())
    assert model.n_cols == cells + len(np.unique(problem.option_ids[problem.valid]))
    assert model.n_rows == 5 + 1 + 1 + cells + 1  # units, budget, resource, links, cap
    assert model.objective[cells:].sum() == 0


@pytest.mark.parametrize(
    ("resources", "distinct"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_fixing_keeps_the_optimum(resources: bool, distinct: bool) -> None:
    for seed in range(4):
        size = {"n": 20, "k": 8} if distinct else {"n": 60, "k": 12}  # the cap makes HiGHS slow
        problem = _problem(seed, resources=resources, distinct=distinct, **size)
        solution = IlpBackend().solve(problem)
        assert solution.status == "optimal" and problem.is_feasible(solution.choice)
        plain = _plain_highs(problem)
        assert solution.objective == pytest.approx(plain, rel=1e-9)
        assert solution.lower_bound is not None and solution.lower_bound <= plain * (1 + 1e-12)


def test_fixing_removes_most_columns_and_keeps_the_incumbent() -> None:
    problem = _problem(1, n=300, k=16)
    model = build_mip(problem)
    upper, incumbent = fix_by_reduced_cost(model, problem)
    assert upper is not None and incumbent is not None
    assert (upper == 0).mean() > 0.5
    assert np.all(upper[incumbent > 0] == 1)


def test_time_limit_returns_a_feasible_plan() -> None:
    problem = _problem(3, n=400, k=16, resources=True)
    solution = IlpBackend().solve(problem, time_limit=0.01)
    assert solution.status in ("optimal", "time_limit")
    assert problem.is_feasible(solution.choice)
