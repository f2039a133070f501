"""``max_distinct_options`` by enumerating option subsets (for the ``mckp`` and ``lagrange`` backends).

At most K distinct options in the plan means the plan uses only options from some K-subset S of
the options that occur (subsets smaller than K are inside a K-subset). For each S, the problem
restricted to S's columns is a plain budget knapsack: its Lagrangian relaxation gives a feasible
choice and a dual lower bound ``LB(S)`` in milliseconds. The optimum is ``min_S OPT(S)`` and
``min_S LB(S)`` is a valid lower bound on it. Exact mode then solves the subsets with the exact
``mckp`` backend in increasing ``LB(S)`` order and stops when the next ``LB(S)`` reaches the best
plan found: every subset left cannot beat it, so the plan is optimal. Options every row must
use (rows with a single option) are in every subset. The number of subsets is
``C(M - forced, K - forced)``; above ``MAX_SUBSETS`` the backends refuse and ``auto`` uses the ILP.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np

from allocator.errors import InfeasibleError, UnsupportedError
from allocator.solve.problem import Problem, Solution

MAX_SUBSETS = 5_000
_RTOL = 1e-10


def _ids(problem: Problem) -> tuple[np.ndarray, set[int]]:
    """Option ids that occur, and those some row cannot do without (its only option)."""
    assert problem.option_ids is not None
    ids = np.unique(problem.option_ids[problem.valid])
    single = problem.valid.sum(axis=1) == 1
    forced = {int(i) for i in problem.option_ids[single][problem.valid[single]]}
    return ids, forced


def n_subsets(problem: Problem) -> int:
    """How many option subsets ``solve_by_subsets`` would try (1 when the cap is not binding)."""
    if problem.max_distinct is None:
        return 1
    ids, forced = _ids(problem)
    k = problem.max_distinct
    if len(ids) <= k:
        return 1
    if len(forced) > k:
        return 0
    return math.comb(len(ids) - len(forced), k - len(forced))


def _restricted(problem: Problem, subset: np.ndarray | None) -> Problem | None:
    """The budget-only problem on the columns whose option is in ``subset`` (None: unusable)."""
    assert problem.option_ids is not None
    valid = problem.valid if subset is None else problem.valid & np.isin(problem.option_ids, subset)
    if not valid.any(axis=1).all():
        return None
    cheapest = np.where(valid, problem.cost, np.inf).min(axis=1).sum()
    if cheapest > problem.budget * (1 + 1e-12):
        return None
    return Problem(cost=problem.cost, loss=problem.loss, valid=valid, budget=problem.budget)


def solve_by_subsets(
    problem: Problem, *, exact: bool, name: str, time_limit: float | None = None
) -> Solution:
    """Best plan over all K-subsets of options, with a certified lower bound (see module)."""
    from allocator.solve.backends.lagrange import relax
    from allocator.solve.backends.mckp import MCKPBackend

    began = time.perf_counter()
    deadline = began + (time_limit if time_limit is not None else math.inf)
    count = n_subsets(problem)
    if count > MAX_SUBSETS:
        raise UnsupportedError(
            f"max_distinct_options = {problem.max_distinct}: {count} option subsets to try "
            f"(over {MAX_SUBSETS}); use solver 'ilp' for this one"
        )
    ids, forced = _ids(problem)
    k = problem.max_distinct or len(ids)
    if len(ids) <= k:
        subsets: list[np.ndarray | None] = [None]
    else:
        free = [int(i) for i in ids if int(i) not in forced]
        subsets = [
            np.array(sorted(forced | set(extra)))
            for extra in itertools.combinations(free, k - len(forced))
        ]
    candidates: list[tuple[float, float, np.ndarray, Problem]] = []
    for subset in subsets:
        sub = _restricted(problem, subset)
        if sub is None:
            continue
        try:
            relaxed = relax(sub)
        except InfeasibleError:
            continue
        candidates.append((relaxed.lower_bound, relaxed.objective, relaxed.choice, sub))
    if not candidates:
        return Solution(np.zeros(problem.n_units, dtype=np.int64), "infeasible", math.inf)
    candidates.sort(key=lambda c: c[0])
    best = min(candidates, key=lambda c: c[1])
    objective, choice = best[1], best[2]
    bounds = [c[0] for c in candidates]
    complete = True
    if exact:
        for index, (bound, _, _, sub) in enumerate(candidates):
            if bound >= objective - _RTOL * max(abs(objective), 1e-300):
                break  # this subset and every later one cannot beat the incumbent
            left = deadline - time.perf_counter()
            if left <= 0:
                complete = False
                break
            solved = MCKPBackend().solve(sub, time_limit=left)
            if solved.objective < objective:
                objective, choice = solved.objective, solved.choice
            bounds[index] = solved.lower_bound if solved.lower_bound is not None else bound
            if solved.status != "optimal":
                complete = False
    lower = min(min(bounds), objective)
    optimal = objective - lower <= _RTOL * max(abs(objective), 1e-300)
    if optimal:
        status = "optimal"
    elif exact and not complete:
        status = "time_limit" if time.perf_counter() > deadline else "feasible"
    else:
        status = "heuristic"
    return Solution(
        choice=choice,
        status=status,  # type: ignore[arg-type]
        objective=objective,
        lower_bound=objective if optimal else lower,
        solver=name,
        seconds=time.perf_counter() - began,
        info={"subsets": len(subsets), "feasible_subsets": len(candidates)},
    )
