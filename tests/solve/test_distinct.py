"""max_distinct_options by option-subset enumeration: exact with mckp, certified with lagrange."""

from __future__ import annotations

import math

import numpy as np
import pytest

from allocator.errors import UnsupportedError
from allocator.solve import backends
from allocator.solve.api import pick_backend
from allocator.solve.backends import distinct
from allocator.solve.problem import Problem
from allocator.solve.registry import BACKENDS

from .bruteforce import brute_force

backends.load_all()


def _problem(seed: int, n: int = 6, k: int = 5, cap: int = 2, ties: bool = False) -> Problem:
    rng = np.random.default_rng(seed)
    bits = np.sort(rng.choice(np.arange(2, 9), size=k, replace=False)).astype(float)
    numel = rng.integers(1, 5, size=n).astype(float)
    cost = numel[:, None] * bits[None, :]
    loss = rng.lognormal(size=n)[:, None] * np.exp2(-bits)[None, :] * rng.lognormal(0, 0.3, (n, k))
    valid = rng.random((n, k)) < 0.8
    valid[np.arange(n), rng.integers(0, k, n)] = True
    if ties:
        valid[0] = False
        valid[0, 1] = True  # a row with one option forces it into every subset
    ids = np.tile(rng.permutation(k), (n, 1))
    budget = float(np.where(valid, cost, np.inf).min(axis=1).sum() * rng.uniform(1.0, 1.6))
    return Problem(cost, loss, valid, budget, option_ids=ids, max_distinct=cap)


@pytest.mark.parametrize("seed", range(40))
def test_subset_enumeration_matches_brute_force(seed: int) -> None:
    problem = _problem(seed, cap=1 + seed % 3, ties=seed % 4 == 0)
    best = brute_force(problem)
    exact = BACKENDS.get("mckp")().solve(problem)
    heuristic = BACKENDS.get("lagrange")().solve(problem)
    if best is None:
        assert exact.status == "infeasible" and heuristic.status == "infeasible"
        return
    assert exact.status == "optimal" and problem.is_feasible(exact.choice)
    assert math.isclose(exact.objective, best[0], rel_tol=1e-9, abs_tol=1e-12)
    assert exact.lower_bound is not None and exact.lower_bound <= best[0] * (1 + 1e-9)
    assert problem.is_feasible(heuristic.choice)
    assert heuristic.lower_bound is not None
    assert (
        heuristic.lower_bound
        <= best[0] * (1 + 1e-9) + 1e-12
        <= heuristic.objective * (1 + 1e-9) + 2e-12
    )


def test_auto_uses_subsets_and_too_many_subsets_go_to_the_ilp() -> None:
    problem = _problem(0, n=4, k=5, cap=2)
    assert pick_backend(problem, "auto") == "mckp"
    wide = Problem(
        np.tile(np.arange(1.0, 41.0), (3, 1)),
        np.tile(np.arange(40.0, 0.0, -1.0), (3, 1)),
        np.ones((3, 40), dtype=bool),
        budget=100.0,
        option_ids=np.tile(np.arange(40), (3, 1)),
        max_distinct=5,
    )
    assert distinct.n_subsets(wide) == math.comb(40, 5) > distinct.MAX_SUBSETS
    assert pick_backend(wide, "auto") == "ilp"
    with pytest.raises(UnsupportedError, match=r"option subsets.*use solver 'ilp'"):
        BACKENDS.get("mckp")().solve(wide)
