"""``pulp_cbc`` / ``pulp_highs`` (``pulp`` = CBC): the same binary program built through PuLP.

Certificates are only what the solver hands over: with HiGHS, PuLP keeps the highspy model and
its dual bound becomes ``lower_bound`` (status ``optimal``); PuLP's CBC reports no bound, so a
CBC answer is ``feasible`` with no proven gap (CBC has returned plans 5e-5 above the optimum
while saying optimal; a bound computed from our own objective would certify them).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from allocator.errors import UnsupportedError
from allocator.solve.backends._mip import MipFrontEnd, MipModel, Outcome, received_bound
from allocator.solve.problem import Problem, Solution
from allocator.solve.registry import BACKENDS


def _pulp_problem(model: MipModel) -> tuple[Any, list[Any]]:
    import pulp

    prob = pulp.LpProblem("allocation", pulp.LpMinimize)
    if hasattr(prob, "add_variable"):  # PuLP >= 3.3 attaches variables to the model
        variables = [prob.add_variable(f"v{k}", 0, 1, pulp.LpBinary) for k in range(model.n_cols)]
    else:
        variables = [pulp.LpVariable(f"v{k}", cat=pulp.LpBinary) for k in range(model.n_cols)]
    prob += pulp.LpAffineExpression(
        [(variables[k], float(c)) for k, c in enumerate(model.objective) if c != 0.0]
    )
    order = np.argsort(model.rows, kind="stable")
    bounds = np.searchsorted(model.rows[order], np.arange(model.n_rows + 1))
    for r in range(model.n_rows):
        idx = order[bounds[r] : bounds[r + 1]]
        expr = pulp.LpAffineExpression(
            [
                (variables[int(c)], float(v))
                for c, v in zip(model.cols[idx], model.values[idx], strict=True)
            ]
        )
        lo, hi = model.row_lower[r], model.row_upper[r]
        if lo == hi:
            prob += expr == float(hi), f"r{r}"
        else:
            if np.isfinite(hi):
                prob += expr <= float(hi), f"r{r}"
            if np.isfinite(lo):
                prob += expr >= float(lo), f"r{r}lo"
    return prob, variables


def _import_pulp() -> Any:
    try:
        import pulp
    except ImportError:
        raise UnsupportedError(
            "the pulp solvers need PuLP: pip install 'llm-bit-allocator[solvers]', or use solver 'ilp'"
        ) from None
    return pulp


class _PulpBackend(MipFrontEnd):
    name: ClassVar[str] = "pulp_cbc"
    engine: ClassVar[str] = "cbc"
    requires: ClassVar[tuple[str, ...]] = ("pulp",)
    status_key: ClassVar[str] = "pulp_status"
    # pulp.LpSolution names; PuLP reports "Solution Found" for an integer-feasible stop
    STATUS: ClassVar[Mapping[Any, Outcome]] = {
        "Optimal Solution Found": "finished",
        "Solution Found": "stopped",
    }

    def check_available(self) -> None:
        _import_pulp()

    def _solver(self, time_limit: float | None, mip_gap: float) -> Any:
        pulp = _import_pulp()

        # PuLP drops a falsy gapRel, so an exact solve asks for a gap below any real difference
        kwargs = {
            "msg": False,
            "timeLimit": time_limit,
            "gapRel": max(mip_gap, 1e-10),
            "gapAbs": 1e-12,
        }
        if self.engine == "highs":
            if not pulp.HiGHS().available():
                raise UnsupportedError("pulp_highs needs highspy importable by PuLP; use pulp_cbc")
            return pulp.HiGHS(**kwargs)
        # CBC 2.10's Cgl preprocessing returns wrong optima on some tiny knapsacks (seen on 4x3
        # instances against brute force); the LP is easy without it
        with warnings.catch_warnings():  # PuLP 3.3 deprecates the bundled CBC for 4.0
            warnings.simplefilter("ignore", DeprecationWarning)
            return pulp.PULP_CBC_CMD(**kwargs, options=["preprocess off"])

    def attempt(
        self, problem: Problem, model: MipModel, time_limit: float | None, mip_gap: float
    ) -> Solution:
        pulp = _import_pulp()
        prob, variables = _pulp_problem(model)
        prob.solve(self._solver(time_limit, mip_gap))
        status = pulp.LpSolution[prob.sol_status]
        if self.outcome(status) == "failed":
            return self.no_solution(problem, status)
        values = np.array([v.varValue if v.varValue is not None else 0.0 for v in variables])
        bound = None
        highs = getattr(prob, "solverModel", None) if self.engine == "highs" else None
        if highs is not None and hasattr(highs, "getInfo"):
            bound = received_bound(highs.getInfo().mip_dual_bound, model)
        return self.answer(problem, model, status, values, bound,
                           bound_from_solver=bound is not None)  # fmt: skip


@BACKENDS.register("pulp_cbc", aliases=("pulp",))
class PulpCbcBackend(_PulpBackend):
    """PuLP with CBC (the formulation NVIDIA ModelOpt's auto_quantize uses)."""


@BACKENDS.register("pulp_highs")
class PulpHighsBackend(_PulpBackend):
    """PuLP with HiGHS (through highspy)."""

    name: ClassVar[str] = "pulp_highs"
    engine: ClassVar[str] = "highs"
