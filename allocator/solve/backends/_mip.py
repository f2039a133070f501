"""The binary MIP of a Problem as sparse arrays, and ``MipFrontEnd``, the base of the ilp, pulp
and cvxpy backends (timing, right-hand-side retries, and the one table per solver that maps its
own statuses to ours).

Columns: ``x[i, j]`` for every valid cell (row-major), then ``y[o]`` per distinct option id when
``max_distinct`` is set. Rows, in order:

- ``sum_j x[i, j] = 1`` for each unit i (N rows);
- ``sum cost * x / cost_scale <= budget / cost_scale`` (1 row);
- ``sum resource_r * x / scale_r <= limit_r / scale_r`` (R rows);
- with a distinct cap: ``x[i, j] - y[option(i, j)] <= 0`` per cell and ``sum y <= K``.

Cost and resource rows are scaled to O(1) coefficients and the objective so its largest
coefficient is ``OBJECTIVE_TOP``, so solver tolerances mean the same thing on any model size.
Built with numpy only, no Python loop per variable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np

from allocator.solve.problem import Problem, Solution, SolutionStatus

# Right-hand-side margins tried in turn: a solver may return a point that meets a row only within
# its feasibility tolerance; then the row is tightened by the next margin and solved again.
RHS_MARGINS = (0.0, 1e-8, 1e-6)
OBJECTIVE_TOP = 1e6


@dataclass
class MipModel:
    """min ``objective @ v`` s.t. ``row_lower <= A v <= row_upper``, ``v`` binary (COO ``A``)."""

    objective: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    row_lower: np.ndarray
    row_upper: np.ndarray
    n_cols: int
    cell_rows: np.ndarray  # unit index of each x column
    cell_cols: np.ndarray  # option column of each x column
    objective_scale: float
    objective_offset: float  # true loss = objective value * objective_scale + objective_offset

    @property
    def n_rows(self) -> int:
        return len(self.row_lower)

    @property
    def n_cells(self) -> int:
        return len(self.cell_rows)

    def csc(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, index, value) of A in compressed-column form."""
        order = np.lexsort((self.rows, self.cols))
        counts = np.bincount(self.cols, minlength=self.n_cols)
        start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        return start, self.rows[order].astype(np.int32), self.values[order]

    def restrict(self, keep: np.ndarray) -> MipModel:
        """The same rows over only the columns where ``keep`` (the others fixed to 0)."""
        new_index = np.cumsum(keep) - 1
        nz = keep[self.cols]
        cells = keep[: self.n_cells]
        return MipModel(
            objective=self.objective[keep],
            rows=self.rows[nz],
            cols=new_index[self.cols[nz]],
            values=self.values[nz],
            row_lower=self.row_lower,
            row_upper=self.row_upper,
            n_cols=int(keep.sum()),
            cell_rows=self.cell_rows[cells],
            cell_cols=self.cell_cols[cells],
            objective_scale=self.objective_scale,
            objective_offset=self.objective_offset,
        )

    def rebase(self, incumbent: np.ndarray) -> MipModel:
        """The same model with each unit's objective measured from its cell in ``incumbent``.

        Objective values near the optimum then sit near 0, where solvers' relative tolerances
        cannot hide real differences; the constant moves into ``objective_offset``.
        """
        x = incumbent[: self.n_cells] > 0.5
        reference = np.zeros(int(self.cell_rows.max()) + 1)
        reference[self.cell_rows[x]] = self.objective[: self.n_cells][x]
        objective = self.objective.copy()
        objective[: self.n_cells] -= reference[self.cell_rows]
        return replace(
            self,
            objective=objective,
            objective_offset=self.objective_offset + float(reference.sum()) * self.objective_scale,
        )

    def choice(self, x: np.ndarray, problem: Problem) -> np.ndarray:
        """Per-unit column from a (near-)binary x vector: its largest entry (lowest column on ties)."""
        dense = np.full(problem.valid.shape, -1.0)
        dense[self.cell_rows, self.cell_cols] = np.asarray(x[: self.n_cells], dtype=np.float64)
        return dense.argmax(axis=1)


def _scale(values: np.ndarray, limit: float) -> float:
    if np.isfinite(limit) and limit > 0:
        return float(limit)
    top = float(np.abs(values).max()) if values.size else 1.0
    return top if top > 0 else 1.0


def build_mip(problem: Problem, rhs_safety: float = 0.0) -> MipModel:
    """Assemble the MIP of ``problem`` (see module docstring)."""
    n = problem.n_units
    cell_rows, cell_cols = np.nonzero(problem.valid)
    v = len(cell_rows)
    cells = np.arange(v)
    # one option per unit, so each unit's smallest loss is a constant: the objective keeps only
    # the excess over it (solvers' relative tolerances then apply to what the choice changes),
    # scaled so the largest excess is OBJECTIVE_TOP (HiGHS prunes with absolute tolerances)
    row_min = np.where(problem.valid, problem.loss, np.inf).min(axis=1)
    loss = problem.loss[cell_rows, cell_cols] - row_min[cell_rows]
    objective_scale = (float(np.abs(loss).max()) or 1.0) / OBJECTIVE_TOP
    rows = [cell_rows]
    cols = [cells]
    vals = [np.ones(v)]
    lower = [np.ones(n)]
    upper = [np.ones(n)]
    next_row = n

    def add_row(coef: np.ndarray, limit: float) -> None:
        nonlocal next_row
        scale = _scale(coef, limit)
        rows.append(np.full(v, next_row))
        cols.append(cells)
        vals.append(coef / scale)
        lower.append(np.array([-np.inf]))
        upper.append(np.array([limit / scale * (1 - rhs_safety)]))
        next_row += 1

    add_row(problem.cost[cell_rows, cell_cols], problem.budget)
    for r in range(problem.n_resources):
        assert problem.resources is not None and problem.resource_limits is not None
        add_row(problem.resources[r, cell_rows, cell_cols], float(problem.resource_limits[r]))
    n_cols = v
    if problem.max_distinct is not None:
        assert problem.option_ids is not None
        ids = problem.option_ids[cell_rows, cell_cols]
        distinct, y_index = np.unique(ids, return_inverse=True)
        n_cols = v + len(distinct)
        link_rows = next_row + cells
        rows += [link_rows, link_rows]
        cols += [cells, v + y_index]
        vals += [np.ones(v), -np.ones(v)]
        lower.append(np.full(v, -np.inf))
        upper.append(np.zeros(v))
        next_row += v
        rows.append(np.full(len(distinct), next_row))
        cols.append(v + np.arange(len(distinct)))
        vals.append(np.ones(len(distinct)))
        lower.append(np.array([-np.inf]))
        upper.append(np.array([float(problem.max_distinct)]))
        next_row += 1
    objective = np.zeros(n_cols)
    objective[:v] = loss / objective_scale
    return MipModel(
        objective=objective,
        rows=np.concatenate(rows).astype(np.int64),
        cols=np.concatenate(cols).astype(np.int64),
        values=np.concatenate(vals),
        row_lower=np.concatenate(lower),
        row_upper=np.concatenate(upper),
        n_cols=n_cols,
        cell_rows=cell_rows,
        cell_cols=cell_cols,
        objective_scale=objective_scale,
        objective_offset=float(row_min.sum()),
    )


SOLVER_RTOL = 1e-6  # MIP solvers close gaps only to their own tolerances


def received_bound(dual_bound: object, model: MipModel) -> float | None:
    """The loss bound from a dual bound the solver reported on ``model``'s scaled objective,
    less ``SOLVER_RTOL`` relative for the solver's own tolerances; None when the solver gave
    none (or not a finite number)."""
    try:
        value = float(dual_bound)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not np.isfinite(value):
        return None
    bound = value * model.objective_scale + model.objective_offset
    return bound - SOLVER_RTOL * abs(bound)


def certify(
    objective: float, finished: bool, bound: float | None
) -> tuple[SolutionStatus, float | None]:
    """(status, lower bound) of an answer: ``optimal`` only when the solver says it finished
    and handed over its dual bound; ``feasible`` when it finished without one (a claim we
    cannot check, e.g. PuLP's CBC); ``time_limit`` when it stopped early."""
    if bound is not None:
        bound = min(bound, objective)
    if not finished:
        return "time_limit", bound
    return ("optimal", bound) if bound is not None else ("feasible", None)


def solve_with_margins(problem: Problem, attempt: Callable[[MipModel], Solution]) -> Solution:
    """Run ``attempt`` on the MIP, tightening rows until its answer is exactly feasible.

    A bound from a tightened model bounds that restricted problem, not ``problem``: such an
    answer keeps its plan but loses the bound (``optimal`` becomes ``feasible``)."""
    solution = attempt(build_mip(problem))
    for margin in RHS_MARGINS[1:]:
        if solution.status == "infeasible" or problem.is_feasible(solution.choice):
            return solution
        solution = attempt(build_mip(problem, rhs_safety=margin))
        if solution.status != "infeasible":
            solution.lower_bound = None
            solution.info["tightened_rows"] = margin
            if solution.status == "optimal":
                solution.status = "feasible"
    return solution


Outcome = Literal["finished", "stopped", "failed"]


class MipFrontEnd:
    """Base of the MIP front-ends: ``solve`` times ``attempt`` and retries it on tightened rows
    (``solve_with_margins``); ``answer`` turns a solver's status, point and dual bound into a
    Solution through the front-end's ``STATUS`` table (solver status -> ``finished`` (proven),
    ``stopped`` (a limit hit, plan usable) or ``failed`` (anything unlisted))."""

    name: ClassVar[str]
    supports: ClassVar[frozenset[str]] = frozenset({"budget", "resources", "max_distinct"})
    exact: ClassVar[bool] = True
    STATUS: ClassVar[Mapping[Any, Outcome]] = {}
    status_key: ClassVar[str] = "status"  # the info key holding the solver's own status

    def solve(
        self, problem: Problem, *, time_limit: float | None = None, mip_gap: float = 0.0
    ) -> Solution:
        self.check_available()
        started = time.perf_counter()
        solution = solve_with_margins(
            problem, lambda model: self.attempt(problem, model, time_limit, mip_gap)
        )
        solution.seconds = time.perf_counter() - started
        return solution

    def check_available(self) -> None:
        """Raise UnsupportedError when the solver library is missing (before any work)."""

    def attempt(
        self, problem: Problem, model: MipModel, time_limit: float | None, mip_gap: float
    ) -> Solution:
        raise NotImplementedError

    def outcome(self, native: Any) -> Outcome:
        return self.STATUS.get(native, "failed")

    def answer(
        self,
        problem: Problem,
        model: MipModel,
        native: Any,
        x: np.ndarray | None,
        bound: float | None,
        *,
        shown: str | None = None,
        **info: Any,
    ) -> Solution:
        """The Solution of a solver's answer: ``native`` status, column values ``x`` (None: no
        point), ``bound`` (from ``received_bound``); ``shown`` names the status in ``info``."""
        outcome = self.outcome(native)
        if outcome == "failed" or x is None:
            return self.no_solution(problem, native if shown is None else shown, **info)
        choice = model.choice(x, problem)
        objective, _, _ = problem.evaluate(choice)
        status, lower_bound = certify(objective, outcome == "finished", bound)
        return Solution(
            choice=choice,
            status=status,
            objective=objective,
            lower_bound=lower_bound,
            solver=self.name,
            info={self.status_key: str(native if shown is None else shown), **info},
        )

    def no_solution(self, problem: Problem, why: Any, **info: Any) -> Solution:
        return no_solution(self.name, problem, {self.status_key: str(why), **info})


def no_solution(name: str, problem: Problem, info: dict[str, Any]) -> Solution:
    """An ``infeasible`` Solution (the solver found no plan)."""
    return Solution(
        choice=np.zeros(problem.n_units, dtype=np.int64),
        status="infeasible",
        objective=float("inf"),
        solver=name,
        info=info,
    )


def _usage(problem: Problem, choice: np.ndarray) -> np.ndarray:
    """Used fraction of each capacity (budget first, then resources) under ``choice``."""
    _, cost, res = problem.evaluate(choice)
    limits = [problem.budget] + (
        [] if problem.resource_limits is None else list(problem.resource_limits)
    )
    return np.array([cost, *res]) / np.maximum(np.array(limits), 1e-300)


def _rows(problem: Problem) -> np.ndarray:
    """(1 + R, N, K) cost and resources, each scaled by its limit."""
    valid_cost = np.where(problem.valid, problem.cost, 0.0)  # inf / inf budget would be nan
    stack = [valid_cost / max(problem.budget, 1e-300)]
    if problem.resources is not None and problem.resource_limits is not None:
        stack += [
            problem.resources[r] / max(lim, 1e-300) for r, lim in enumerate(problem.resource_limits)
        ]
    return np.where(problem.valid[None], np.stack(stack), np.inf)


def round_relaxed(problem: Problem, x: np.ndarray, max_upgrades: int | None = None) -> np.ndarray:
    """Round a fractional (N, K) solution: cheapest supported option, repair, then upgrade
    (at most ``max_upgrades`` single-unit upgrades; default 4 N)."""
    scaled = _rows(problem)
    weight = scaled.max(axis=0)  # the scarcest capacity each option uses
    support = (x > 1e-7) & problem.valid
    support[~support.any(axis=1)] = problem.valid[~support.any(axis=1)]  # no weight: any option
    choice = np.where(support, weight, np.inf).argmin(axis=1)
    rows = np.arange(problem.n_units)
    for _ in range(4 * problem.n_units):  # repair: cheapest loss increase per violation removed
        over = _usage(problem, choice) - 1.0
        if (over <= 1e-12).all():
            break
        worst = int(over.argmax())
        with np.errstate(invalid="ignore", divide="ignore"):
            saving = scaled[worst, rows, choice][:, None] - scaled[worst]
            extra = problem.loss - problem.loss[rows, choice][:, None]
            score = np.where(
                saving > 0, np.maximum(extra, 0) / np.where(saving > 0, saving, 1), np.inf
            )
        if not np.isfinite(score).any():
            break
        unit, col = np.unravel_index(np.argmin(score), score.shape)
        choice[unit] = col
    upgrades = 4 * problem.n_units if max_upgrades is None else max_upgrades
    for _ in range(upgrades):  # upgrade: best loss decrease per capacity used
        slack = 1.0 - _usage(problem, choice)
        delta = scaled - scaled[:, rows, choice][:, :, None]
        fits = (delta <= slack[:, None, None] + 1e-15).all(axis=0) & problem.valid
        gain = problem.loss[rows, choice][:, None] - problem.loss
        use = np.maximum(delta.max(axis=0), 1e-15)
        with np.errstate(invalid="ignore", divide="ignore"):
            score = np.where(fits & (gain > 0), gain / use, -np.inf)
        if not np.isfinite(score).any():
            break
        unit, col = np.unravel_index(np.argmax(score), score.shape)
        choice[unit] = col
    return choice
