"""cvxpy front-ends: the binary program (``cvxpy`` = ``cvxpy_highs``, ``cvxpy_scipy``) and its
continuous relaxation (``cvxpy_relax``).

``cvxpy_relax`` solves the LP with ``0 <= x <= 1``: its optimum is a proven lower bound on the
optimal loss. It then rounds: each unit takes, among the options carrying LP weight, the one
using least of the scarcest constraint (with one budget row at most two units are fractional
and rounding down keeps the plan within budget), repairs any remaining violation greedily and
spends slack on the best loss-per-cost upgrades. Its status is ``heuristic``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from allocator.errors import UnsupportedError
from allocator.solve.backends._mip import (
    MipFrontEnd,
    MipModel,
    Outcome,
    build_mip,
    no_solution,
    received_bound,
    round_relaxed,
)
from allocator.solve.problem import Problem, Solution
from allocator.solve.registry import BACKENDS


def _import_cvxpy() -> Any:
    try:
        import cvxpy
        import scipy.sparse
    except ImportError:
        raise UnsupportedError(
            "the cvxpy solvers need cvxpy: pip install 'llm-bit-allocator[solvers]', or use solver 'ilp'"
        ) from None
    del scipy
    return cvxpy


def _cvxpy_problem(model: MipModel, boolean: bool) -> tuple[Any, Any]:
    cp = _import_cvxpy()
    import scipy.sparse as sp

    matrix = sp.csr_matrix(
        (model.values, (model.rows, model.cols)), shape=(model.n_rows, model.n_cols)
    )
    x = cp.Variable(model.n_cols, boolean=boolean)
    equal = model.row_lower == model.row_upper
    upper = ~equal & np.isfinite(model.row_upper)
    constraints = [matrix[equal] @ x == model.row_upper[equal]]
    if upper.any():
        constraints.append(matrix[upper] @ x <= model.row_upper[upper])
    if not boolean:
        constraints += [x >= 0, x <= 1]
    return cp.Problem(cp.Minimize(model.objective @ x), constraints), x


class _CvxpyMip(MipFrontEnd):
    name: ClassVar[str] = "cvxpy_highs"
    engine: ClassVar[str] = "HIGHS"
    requires: ClassVar[tuple[str, ...]] = ("cvxpy", "scipy")
    status_key: ClassVar[str] = "cvxpy_status"
    STATUS: ClassVar[Mapping[Any, Outcome]] = {
        "optimal": "finished",
        "optimal_inaccurate": "stopped",
        "user_limit": "stopped",
    }

    def check_available(self) -> None:
        cp = _import_cvxpy()
        if self.engine not in cp.installed_solvers():
            raise UnsupportedError(f"cvxpy has no {self.engine} solver here; use solver 'ilp'")

    def _options(self, time_limit: float | None, mip_gap: float) -> dict[str, Any]:
        if self.engine == "HIGHS":
            options: dict[str, Any] = {"mip_rel_gap": mip_gap, "mip_abs_gap": 1e-12}
            if time_limit is not None:
                options["time_limit"] = float(time_limit)
            return options
        scipy_options: dict[str, Any] = {"mip_rel_gap": mip_gap}
        if time_limit is not None:
            scipy_options["time_limit"] = float(time_limit)
        return {"scipy_options": scipy_options}

    def attempt(
        self, problem: Problem, model: MipModel, time_limit: float | None, mip_gap: float
    ) -> Solution:
        cp = _import_cvxpy()
        prob, x = _cvxpy_problem(model, boolean=True)
        try:
            prob.solve(solver=self.engine, **self._options(time_limit, mip_gap))
        except cp.error.SolverError as exc:
            return self.no_solution(problem, str(exc))
        bound = received_bound(_dual_bound(prob), model)
        return self.answer(problem, model, prob.status, x.value, bound,
                           bound_from_solver=bound is not None)  # fmt: skip


def _dual_bound(prob: Any) -> object:
    """The MIP dual bound cvxpy passed through from HiGHS (a HighsInfo) or SciPy (a dict)."""
    stats = getattr(getattr(prob, "solver_stats", None), "extra_stats", None)
    if isinstance(stats, dict):
        return stats.get("mip_dual_bound")
    return getattr(stats, "mip_dual_bound", None)


@BACKENDS.register("cvxpy_highs", aliases=("cvxpy",))
class CvxpyHighsBackend(_CvxpyMip):
    """cvxpy MIP through HiGHS."""


@BACKENDS.register("cvxpy_scipy")
class CvxpyScipyBackend(_CvxpyMip):
    """cvxpy MIP through SciPy's milp (HiGHS inside SciPy)."""

    name: ClassVar[str] = "cvxpy_scipy"
    engine: ClassVar[str] = "SCIPY"


@BACKENDS.register("cvxpy_relax")
class CvxpyRelaxBackend:
    """LP relaxation through cvxpy: a proven lower bound plus a rounded plan (heuristic)."""

    name: ClassVar[str] = "cvxpy_relax"
    requires: ClassVar[tuple[str, ...]] = ("cvxpy", "scipy")
    supports: ClassVar[frozenset[str]] = frozenset({"budget", "resources"})
    exact: ClassVar[bool] = False

    def solve(
        self, problem: Problem, *, time_limit: float | None = None, mip_gap: float = 0.0
    ) -> Solution:
        cp = _import_cvxpy()
        started = time.perf_counter()
        model = build_mip(problem)
        prob, x = _cvxpy_problem(model, boolean=False)
        solver = "HIGHS" if "HIGHS" in cp.installed_solvers() else None
        prob.solve(solver=solver)
        if x.value is None or prob.status not in ("optimal", "optimal_inaccurate"):
            return no_solution(self.name, problem, {"cvxpy_status": prob.status})
        dense = np.zeros(problem.valid.shape)
        dense[model.cell_rows, model.cell_cols] = x.value[: model.n_cells]
        choice = round_relaxed(problem, dense)
        objective, _, _ = problem.evaluate(choice)
        bound = float(prob.value) * model.objective_scale + model.objective_offset
        feasible = problem.is_feasible(choice)
        return Solution(
            choice=choice,
            status="heuristic" if feasible else "infeasible",
            objective=objective if feasible else float("inf"),
            lower_bound=min(bound, objective) if feasible else bound,
            solver=self.name,
            seconds=time.perf_counter() - started,
            info={"cvxpy_status": prob.status, "relaxation_bound": bound},
        )
