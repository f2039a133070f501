"""Brute-force reference for the canonical Problem: enumerate every choice vector.

Handles the budget, extra resources and max_distinct. Exponential in the number of units: keep
instances tiny (the product of valid options per unit up to a few hundred thousand).
"""

from __future__ import annotations

import itertools

import numpy as np

from allocator.solve.problem import Problem

MAX_COMBINATIONS = 2_000_000
_CHUNK = 65_536


def _chunks(columns: list[np.ndarray]):
    """Yield (M, N) int arrays that together enumerate the product of the valid columns."""
    iterator = itertools.product(*[c.tolist() for c in columns])
    while True:
        block = list(itertools.islice(iterator, _CHUNK))
        if not block:
            return
        yield np.asarray(block, dtype=np.int64).reshape(len(block), len(columns))


def _distinct_counts(ids: np.ndarray) -> np.ndarray:
    """Number of distinct values in each row of an (M, N) int array."""
    ordered = np.sort(ids, axis=1)
    return 1 + (np.diff(ordered, axis=1) != 0).sum(axis=1)


def brute_force(problem: Problem, rtol: float = 1e-9) -> tuple[float, np.ndarray] | None:
    """Return (best total loss, choice) over all feasible choices, or None when none is feasible.

    Ties on the loss keep the first choice in lexicographic column order. Feasibility uses the
    same tolerance as ``Problem.is_feasible``.
    """
    columns = [np.flatnonzero(problem.valid[i]) for i in range(problem.n_units)]
    total = int(np.prod([len(c) for c in columns], dtype=np.float64))
    if total > MAX_COMBINATIONS:
        raise ValueError(f"brute force over {total} combinations is too large")
    rows = np.arange(problem.n_units)
    best_loss, best_choice = np.inf, None
    for combos in _chunks(columns):
        feasible = problem.cost[rows, combos].sum(axis=1) <= problem.budget * (1 + rtol) + 1e-9
        if problem.resources is not None:
            for r in range(problem.n_resources):
                usage = problem.resources[r][rows, combos].sum(axis=1)
                feasible &= usage <= problem.resource_limits[r] * (1 + rtol) + 1e-9
        if problem.max_distinct is not None:
            ids = problem.option_ids[rows, combos]
            feasible &= _distinct_counts(ids) <= problem.max_distinct
        if not feasible.any():
            continue
        losses = np.where(feasible, problem.loss[rows, combos].sum(axis=1), np.inf)
        k = int(np.argmin(losses))
        if losses[k] < best_loss:
            best_loss, best_choice = float(losses[k]), combos[k].copy()
    if best_choice is None:
        return None
    return best_loss, best_choice


def random_problem(
    rng: np.random.Generator,
    *,
    max_units: int = 6,
    max_options: int = 5,
    integer: bool = False,
    p_valid: float = 0.8,
) -> Problem:
    """A small random budget-only Problem: uniform or small-integer costs/losses (many ties),
    some invalid cells, and a budget anywhere from infeasible to slack."""
    n_units = int(rng.integers(1, max_units + 1))
    n_options = int(rng.integers(1, max_options + 1))
    shape = (n_units, n_options)
    if integer:
        cost = rng.integers(1, 10, shape).astype(np.float64)
        loss = rng.integers(0, 6, shape).astype(np.float64)
    else:
        cost = rng.uniform(1.0, 10.0, shape)
        loss = rng.uniform(0.0, 1.0, shape)
    valid = rng.random(shape) < p_valid
    valid[np.arange(n_units), rng.integers(0, n_options, n_units)] = True
    budget = float(rng.uniform(0.0, np.where(valid, cost, 0.0).sum() + 1.0))
    return Problem(cost=cost, loss=loss, valid=valid, budget=budget)
