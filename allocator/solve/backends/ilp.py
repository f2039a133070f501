"""``ilp``: the exact binary program on HiGHS through highspy (the default exact solver).

The model (see ``_mip``) is passed in one ``passModel`` call from numpy arrays. Before the MIP,
the LP relaxation is solved and rounded to an incumbent of loss ``U``; with the LP bound ``L``,
every column whose reduced cost exceeds ``U - L`` cannot be in a plan better than the incumbent
and is fixed to 0 (root reduced-cost fixing), and the incumbent is handed to HiGHS as a start.
On realistic tables this removes almost every column before branching. Status is ``optimal``
when HiGHS proves the gap, ``time_limit`` when it stops with an incumbent; ``lower_bound`` is
HiGHS's dual bound less ``SOLVER_RTOL`` relative (``received_bound``; valid for the full
problem: the incumbent
survives the fixing, so the restricted optimum equals the full one; the slack covers HiGHS's
own tolerances, which can accept an answer ~1e-7 relative above the optimum on 10^4 units).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

import highspy
import numpy as np

from allocator.solve.backends._mip import (
    MipFrontEnd,
    MipModel,
    Outcome,
    received_bound,
    round_relaxed,
)
from allocator.solve.problem import Problem, Solution
from allocator.solve.registry import BACKENDS

INCUMBENT_UPGRADES = 32  # greedy steps spent improving the rounded LP incumbent
_banner_shown = False


def new_highs() -> highspy.Highs:
    """A silent Highs instance (HiGHS prints a banner to fd 1 on its first construction)."""
    global _banner_shown
    if _banner_shown:
        highs = highspy.Highs()
    else:
        sys.stdout.flush()
        saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            highs = highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)
        _banner_shown = True
    highs.setOptionValue("output_flag", False)
    return highs


def _lp(model: MipModel, integral: bool) -> highspy.HighsLp:
    start, index, value = model.csc()
    lp = highspy.HighsLp()
    lp.num_col_ = model.n_cols
    lp.num_row_ = model.n_rows
    lp.col_cost_ = model.objective
    lp.col_lower_ = np.zeros(model.n_cols)
    lp.col_upper_ = np.ones(model.n_cols)
    lp.row_lower_ = model.row_lower
    lp.row_upper_ = model.row_upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = start
    lp.a_matrix_.index_ = index
    lp.a_matrix_.value_ = value
    if integral:
        lp.integrality_ = [highspy.HighsVarType.kInteger] * model.n_cols
    return lp


def _highs(model: MipModel, time_limit: float | None, mip_gap: float) -> highspy.Highs:
    highs = new_highs()
    highs.setOptionValue("random_seed", 0)
    highs.setOptionValue("mip_rel_gap", float(mip_gap))
    highs.setOptionValue("mip_abs_gap", 1e-12)
    highs.setOptionValue("mip_feasibility_tolerance", 1e-9)
    highs.setOptionValue("primal_feasibility_tolerance", 1e-9)
    if time_limit is not None:
        highs.setOptionValue("time_limit", float(time_limit))
    highs.passModel(_lp(model, integral=True))
    return highs


def _full_vector(model: MipModel, problem: Problem, choice: np.ndarray) -> np.ndarray:
    """The MIP column vector (x, then y) of a per-unit choice."""
    x = np.zeros(model.n_cols)
    x[: model.n_cells] = model.cell_cols == choice[model.cell_rows]
    if model.n_cols > model.n_cells and problem.option_ids is not None:
        ids = problem.option_ids[model.cell_rows, model.cell_cols]
        used = np.unique(ids[x[: model.n_cells] > 0])
        x[model.n_cells :] = np.isin(np.unique(ids), used)
    return x


def _lp_reduced_costs(
    model: MipModel, problem: Problem
) -> tuple[float, np.ndarray, np.ndarray] | None:
    """(LP bound, reduced cost of each x column, fractional (N, K) point) from HiGHS's LP."""
    highs = new_highs()
    highs.setOptionValue("primal_feasibility_tolerance", 1e-9)
    highs.setOptionValue("dual_feasibility_tolerance", 1e-9)
    highs.passModel(_lp(model, integral=False))
    highs.run()
    if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    solution = highs.getSolution()
    dense = np.zeros(problem.valid.shape)
    dense[model.cell_rows, model.cell_cols] = np.asarray(solution.col_value)[: model.n_cells]
    reduced = np.asarray(solution.col_dual)[: model.n_cells]
    return float(highs.getInfo().objective_function_value), reduced, dense


def _lagrangian_reduced_costs(
    model: MipModel, problem: Problem
) -> tuple[float, np.ndarray, np.ndarray]:
    """The same from the budget row's Lagrangian dual (bisection on its multiplier).

    For any ``lam >= 0``, ``L(lam) = sum_i min_j (c + lam a) - lam b`` bounds every plan and a
    plan using cell (i, j) loses at least ``L(lam) + rc[i, j]``, with ``rc`` the cell's excess
    over its row minimum; dropping the distinct-cap rows only weakens the bound, so it stays
    valid. For a budget-only problem the best ``lam`` gives the LP bound.
    """
    c = np.full(problem.valid.shape, np.inf)
    c[model.cell_rows, model.cell_cols] = model.objective[: model.n_cells]
    a = np.where(problem.valid, problem.cost, 0.0)  # invalid cells already have c = inf
    scale = problem.budget if np.isfinite(problem.budget) and problem.budget > 0 else 1.0
    a = a / scale
    budget = problem.budget / scale

    def evaluate(lam: float) -> tuple[float, np.ndarray, np.ndarray]:
        value = c + lam * a
        best = value.argmin(axis=1)
        rows = np.arange(problem.n_units)
        bound = float(value[rows, best].sum() - (lam * budget if lam > 0 else 0.0))
        return bound, best, value - value[rows, best][:, None]

    low, high = 0.0, 1.0
    bound, best, reduced = evaluate(0.0)
    if np.isfinite(budget) and a[np.arange(problem.n_units), best].sum() > budget:
        while a[np.arange(problem.n_units), evaluate(high)[1]].sum() > budget and high < 1e30:
            high *= 4.0
        for _ in range(60):
            mid = 0.5 * (low + high)
            if a[np.arange(problem.n_units), evaluate(mid)[1]].sum() > budget:
                low = mid
            else:
                high = mid
        candidates = [evaluate(low), evaluate(high)]
        bound, _, reduced = max(candidates, key=lambda item: item[0])
        best = candidates[1][1]  # the budget-feasible side
    start = np.zeros(problem.valid.shape)
    start[np.arange(problem.n_units), best] = 1.0
    return bound, reduced[model.cell_rows, model.cell_cols], start


def _round_within_cap(problem: Problem, point: np.ndarray) -> np.ndarray | None:
    """Rounding that respects ``max_distinct``: keep the options carrying the most LP weight
    (weighted by cost, so big units count more), round within them; None if that fails."""
    if problem.max_distinct is None or problem.option_ids is None:
        return None
    ids = np.where(problem.valid, problem.option_ids, -1)
    weight = point * np.where(problem.valid, problem.cost, 0.0)
    totals: dict[int, float] = {}
    for option, w in zip(ids[problem.valid], weight[problem.valid], strict=True):
        totals[int(option)] = totals.get(int(option), 0.0) + float(w)
    ranked = sorted(totals, key=lambda o: (-totals[o], o))
    for extra in range(len(ranked)):  # widen the kept set past the cap only to cover every unit
        kept = ranked[: problem.max_distinct + extra]
        allowed = problem.valid & np.isin(ids, kept)
        if allowed.any(axis=1).all():
            break
    else:
        return None
    if len(kept) > problem.max_distinct:
        return None
    capped = Problem(
        cost=problem.cost,
        loss=problem.loss,
        valid=allowed,
        budget=problem.budget,
        resources=problem.resources,
        resource_limits=problem.resource_limits,
    )
    return round_relaxed(capped, np.where(allowed, point, 0.0), max_upgrades=INCUMBENT_UPGRADES)


def fix_by_reduced_cost(
    model: MipModel, problem: Problem
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(column upper bounds with provably useless columns fixed to 0, incumbent vector).

    Reduced costs come from the Lagrangian dual of the budget row when there is no other
    resource row, else from HiGHS's LP. (None, None) when there is no usable incumbent.
    """
    found = (
        _lagrangian_reduced_costs(model, problem)
        if problem.n_resources == 0
        else _lp_reduced_costs(model, problem)
    )
    if found is None:
        return None, None
    bound, reduced, point = found
    choice: np.ndarray | None = round_relaxed(problem, point, max_upgrades=INCUMBENT_UPGRADES)
    if choice is not None and not problem.is_feasible(choice, rtol=0.0):
        choice = _round_within_cap(problem, point)
    if choice is None or not problem.is_feasible(choice, rtol=0.0):
        return None, None
    incumbent = _full_vector(model, problem, choice)
    upper_value = float(model.objective @ incumbent)
    # reduced costs are accurate to the dual tolerance (1e-9 here); keep a wide safety margin
    # (objective units: the largest loss excess is OBJECTIVE_TOP = 1e6)
    slack = upper_value - bound + 1e-4 + 1e-9 * abs(upper_value)
    upper = np.ones(model.n_cols)
    upper[: model.n_cells][reduced > slack] = 0.0
    upper[incumbent > 0] = 1.0
    return upper, incumbent


@BACKENDS.register("ilp")
class IlpBackend(MipFrontEnd):
    """Exact MIP on HiGHS (highspy); supports every constraint kind."""

    name: ClassVar[str] = "ilp"
    status_key: ClassVar[str] = "highs_status"
    STATUS: ClassVar[Mapping[Any, Outcome]] = {
        highspy.HighsModelStatus.kOptimal: "finished",
        highspy.HighsModelStatus.kTimeLimit: "stopped",
        highspy.HighsModelStatus.kIterationLimit: "stopped",
        highspy.HighsModelStatus.kSolutionLimit: "stopped",
        highspy.HighsModelStatus.kInterrupt: "stopped",
    }

    def attempt(
        self, problem: Problem, model: MipModel, time_limit: float | None, mip_gap: float
    ) -> Solution:
        upper, incumbent = fix_by_reduced_cost(model, problem)
        if upper is not None and incumbent is not None:
            keep = upper > 0
            model, incumbent = model.restrict(keep).rebase(incumbent[keep]), incumbent[keep]
        highs = _highs(model, time_limit, mip_gap)
        if incumbent is not None:
            start = highspy.HighsSolution()
            start.col_value = list(incumbent)
            start.value_valid = True
            highs.setSolution(start)
        highs.run()
        status = highs.getModelStatus()
        shown = highs.modelStatusToString(status)
        info = highs.getInfo()
        if info.primal_solution_status != 2:  # kSolutionStatusFeasible: HiGHS accepted no plan
            if self.outcome(status) == "stopped" and incumbent is not None:
                choice = model.choice(incumbent, problem)  # stopped first: return the start
                return Solution(
                    choice=choice,
                    status="time_limit",
                    objective=problem.evaluate(choice)[0],
                    solver=self.name,
                    info={self.status_key: shown},
                )
            return self.no_solution(problem, shown)
        # HiGHS closes gaps only to its internal tolerances (we measured an "optimal" answer
        # 8.5e-8 above the true optimum on a 10^4-unit instance): received_bound gives that away
        bound = received_bound(info.mip_dual_bound, model)
        x = np.asarray(highs.getSolution().col_value)
        return self.answer(problem, model, status, x, bound, shown=shown,
                           nodes=info.mip_node_count)  # fmt: skip
