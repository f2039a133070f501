"""Exact multiple-choice knapsack: Lagrangian reduction, then a bounded Pareto DP on the core.

1. ``lagrange.relax`` gives an incumbent (upper bound ``UB``), the optimal multiplier ``lam`` and
   the dual bound ``LB = L(lam)``.
2. Reduced costs ``rc[i, j] = loss + lam * cost - min_j (loss + lam * cost)`` are >= 0 and any
   feasible choice ``x`` has ``loss(x) >= LB + sum_i rc[i, x_i]``. So an option with
   ``rc >= UB - LB`` cannot be part of a strictly better solution: drop it. Units left with one
   option are fixed; the rest form the core (typically the few units whose hull breakpoints are
   near the critical slope).
3. The core is solved exactly by dynamic programming over Pareto states (cost, loss), unit by
   unit, dropping dominated states, states that cannot fit the budget even with the cheapest
   remaining options, and states whose reduced-cost sum already reaches ``UB - LB``.

The best of the final states and the incumbent is optimal, so the proven lower bound equals the
objective. With a time limit the incumbent comes back with status "time_limit" and ``LB``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from allocator.solve.backends.lagrange import Relaxation, relax
from allocator.solve.hull import CHUNK_ROWS
from allocator.solve.problem import Problem, Solution
from allocator.solve.registry import BACKENDS, check_supported

MAX_STATES = 4_000_000


@dataclass
class _Core:
    """Units that keep more than one option after the reduced-cost test."""

    units: np.ndarray  # (C,) unit indices
    options: list[np.ndarray]  # per core unit: kept columns
    capacity: float  # budget left for the core after the fixed units
    fixed_loss: float


def reduced_costs(problem: Problem, lam: float, rows: slice) -> np.ndarray:
    """(R, K) ``loss + lam * cost - min_j(loss + lam * cost)`` for a slice of units (inf = invalid)."""
    cost, loss = problem.cost[rows], problem.loss[rows]
    penalized = loss + lam * cost if lam != 0.0 else loss.copy()
    penalized -= penalized.min(axis=1, keepdims=True)
    return penalized


def _core(problem: Problem, relaxed: Relaxation, slack_tol: float) -> tuple[_Core, np.ndarray]:
    """Fix every unit whose only option with ``rc < UB - LB`` is its relaxed choice."""
    threshold = relaxed.objective - relaxed.lower_bound + slack_tol
    fixed_choice = relaxed.choice.copy()
    units: list[np.ndarray] = []
    for r0 in range(0, problem.n_units, CHUNK_ROWS):
        rc = reduced_costs(problem, relaxed.lam, slice(r0, r0 + CHUNK_ROWS))
        keep = rc < threshold
        multi = np.flatnonzero(keep.sum(axis=1) > 1)
        single = np.flatnonzero(keep.sum(axis=1) == 1)
        fixed_choice[r0 + single] = np.argmax(keep[single], axis=1)
        units.append(r0 + multi)
    core_units = np.concatenate(units)
    options = []
    for unit in core_units:
        rc = reduced_costs(problem, relaxed.lam, slice(unit, unit + 1))[0]
        options.append(np.flatnonzero(rc < threshold))
    is_fixed = np.ones(problem.n_units, dtype=bool)
    is_fixed[core_units] = False
    rows = np.flatnonzero(is_fixed)
    fixed_cost = float(problem.cost[rows, fixed_choice[rows]].sum())
    fixed_loss = float(problem.loss[rows, fixed_choice[rows]].sum())
    return _Core(core_units, options, problem.budget - fixed_cost, fixed_loss), fixed_choice


def _pareto(cost: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of states not dominated in (cost, loss), sorted by cost."""
    order = np.lexsort((loss, cost))
    sorted_loss = loss[order]
    best_before = np.minimum.accumulate(sorted_loss)
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = sorted_loss[1:] < best_before[:-1]
    return order[keep]


@dataclass
class _DPResult:
    loss: float
    columns: np.ndarray | None  # chosen column per core unit, None when nothing beats the bound
    complete: bool


def _solve_core(
    problem: Problem,
    core: _Core,
    lam: float,
    bound_gap: float,
    deadline: float,
) -> _DPResult:
    """Pareto DP over the core units with budget and reduced-cost pruning."""
    n_core = len(core.units)
    costs = [problem.cost[u, o] for u, o in zip(core.units, core.options, strict=True)]
    losses = [problem.loss[u, o] for u, o in zip(core.units, core.options, strict=True)]
    mins = [float((loss + lam * cost).min()) for cost, loss in zip(costs, losses, strict=True)]
    min_rest = np.concatenate([np.cumsum([c.min() for c in costs][::-1])[::-1], [0.0]])
    state_cost, state_loss = np.zeros(1), np.zeros(1)
    state_rc = np.zeros(1)
    parents: list[tuple[np.ndarray, np.ndarray]] = []
    cap_tol = 1e-9 * max(abs(core.capacity), 1.0)
    for k in range(n_core):
        if time.perf_counter() > deadline:
            return _DPResult(np.inf, None, complete=False)
        cost, loss = costs[k], losses[k]
        rc = loss + lam * cost - mins[k]
        new_cost = (state_cost[:, None] + cost[None, :]).ravel()
        new_loss = (state_loss[:, None] + loss[None, :]).ravel()
        new_rc = (state_rc[:, None] + rc[None, :]).ravel()
        ok = (new_cost + min_rest[k + 1] <= core.capacity + cap_tol) & (new_rc < bound_gap)
        index = np.flatnonzero(ok)
        index = index[_pareto(new_cost[index], new_loss[index])]
        if index.size == 0:
            return _DPResult(np.inf, None, complete=True)
        if index.size > MAX_STATES:
            return _DPResult(np.inf, None, complete=False)
        parents.append((index // len(cost), index % len(cost)))
        state_cost, state_loss, state_rc = new_cost[index], new_loss[index], new_rc[index]
    best = int(np.argmin(state_loss))
    columns = np.empty(n_core, dtype=np.int64)
    for k in range(n_core - 1, -1, -1):
        parent, option = parents[k]
        columns[k] = core.options[k][option[best]]
        best = int(parent[best])
    return _DPResult(float(state_loss.min()), columns, complete=True)


@BACKENDS.register("mckp")
class MCKPBackend:
    """Exact budget solver (Lagrangian reduction plus a bounded Pareto DP on the core);
    max_distinct_options by option-subset enumeration with bound pruning."""

    name: ClassVar[str] = "mckp"
    supports: ClassVar[frozenset[str]] = frozenset({"budget", "max_distinct"})
    exact: ClassVar[bool] = True

    def solve(
        self, problem: Problem, *, time_limit: float | None = None, mip_gap: float = 0.0
    ) -> Solution:
        check_supported(type(self), problem)
        if problem.max_distinct is not None:
            from allocator.solve.backends.distinct import solve_by_subsets

            return solve_by_subsets(problem, exact=True, name=self.name, time_limit=time_limit)
        began = time.perf_counter()
        deadline = began + (time_limit if time_limit is not None else np.inf)
        relaxed = relax(problem)
        incumbent, objective = relaxed.choice, relaxed.objective
        tol = 1e-10 * max(abs(objective), 1e-300)
        gap = objective - relaxed.lower_bound
        info: dict[str, object] = {"lambda": relaxed.lam, "core_units": 0}
        if gap <= tol:
            return self._answer(incumbent, objective, objective, "optimal", began, info)
        if mip_gap > 0 and gap <= mip_gap * abs(objective):
            return self._answer(incumbent, objective, relaxed.lower_bound, "feasible", began, info)
        core, fixed_choice = _core(problem, relaxed, tol)
        info["core_units"] = len(core.units)
        result = _solve_core(problem, core, relaxed.lam, gap + tol, deadline)
        if not result.complete:
            status = "time_limit" if time.perf_counter() > deadline else "feasible"
            return self._answer(incumbent, objective, relaxed.lower_bound, status, began, info)
        if result.columns is not None and core.fixed_loss + result.loss < objective:
            incumbent = fixed_choice.copy()
            incumbent[core.units] = result.columns
            objective = float(problem.evaluate(incumbent)[0])
        return self._answer(incumbent, objective, objective, "optimal", began, info)

    def _answer(
        self,
        choice: np.ndarray,
        objective: float,
        lower_bound: float,
        status: str,
        began: float,
        info: dict[str, object],
    ) -> Solution:
        return Solution(
            choice=choice,
            status=status,  # type: ignore[arg-type]
            objective=objective,
            lower_bound=lower_bound,
            solver=self.name,
            seconds=time.perf_counter() - began,
            info=info,
        )
