"""``ilp``: the exact binary program on HiGHS through highspy (the default exact solver).

The model (see ``_mip``) is passed in one ``passModel`` call from numpy arrays. Status is
``optimal`` when HiGHS proves the gap, ``time_limit`` when it stops with an incumbent;
``lower_bound`` is HiGHS's proven dual bound.
"""

from __future__ import annotations

import os
import sys
import time
from typing import ClassVar

import highspy
import numpy as np

from allocator.solve.backends._mip import MipModel, solve_with_margins
from allocator.solve.problem import Problem, Solution
from allocator.solve.registry import BACKENDS

_DONE = {highspy.HighsModelStatus.kOptimal}
_STOPPED = {
    highspy.HighsModelStatus.kTimeLimit,
    highspy.HighsModelStatus.kIterationLimit,
    highspy.HighsModelStatus.kSolutionLimit,
    highspy.HighsModelStatus.kInterrupt,
}


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


def _highs(model: MipModel, time_limit: float | None, mip_gap: float) -> highspy.Highs:
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
    lp.integrality_ = [highspy.HighsVarType.kInteger] * model.n_cols
    highs = new_highs()
    highs.setOptionValue("random_seed", 0)
    highs.setOptionValue("mip_rel_gap", float(mip_gap))
    highs.setOptionValue("mip_abs_gap", 1e-12)
    highs.setOptionValue("mip_feasibility_tolerance", 1e-9)
    highs.setOptionValue("primal_feasibility_tolerance", 1e-9)
    if time_limit is not None:
        highs.setOptionValue("time_limit", float(time_limit))
    highs.passModel(lp)
    return highs


@BACKENDS.register("ilp")
class IlpBackend:
    """Exact MIP on HiGHS; supports every constraint kind."""

    name: ClassVar[str] = "ilp"
    supports: ClassVar[frozenset[str]] = frozenset({"budget", "resources", "max_distinct"})
    exact: ClassVar[bool] = True

    def solve(
        self, problem: Problem, *, time_limit: float | None = None, mip_gap: float = 0.0
    ) -> Solution:
        started = time.perf_counter()
        solution = solve_with_margins(
            problem, lambda model: self._attempt(problem, model, time_limit, mip_gap)
        )
        solution.seconds = time.perf_counter() - started
        return solution

    def _attempt(
        self, problem: Problem, model: MipModel, time_limit: float | None, mip_gap: float
    ) -> Solution:
        highs = _highs(model, time_limit, mip_gap)
        highs.run()
        status = highs.getModelStatus()
        info = highs.getInfo()
        has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
        if not has_solution or status not in _DONE | _STOPPED:
            return Solution(
                choice=np.zeros(problem.n_units, dtype=np.int64),
                status="infeasible",
                objective=float("inf"),
                solver=self.name,
                info={"highs_status": highs.modelStatusToString(status)},
            )
        choice = model.choice(np.asarray(highs.getSolution().col_value), problem)
        objective, _, _ = problem.evaluate(choice)
        bound = float(info.mip_dual_bound) * model.objective_scale
        return Solution(
            choice=choice,
            status="optimal" if status in _DONE else "time_limit",
            objective=objective,
            lower_bound=min(bound, objective) if np.isfinite(bound) else None,
            solver=self.name,
            info={"highs_status": highs.modelStatusToString(status), "nodes": info.mip_node_count},
        )
