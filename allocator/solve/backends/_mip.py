"""The binary MIP of a Problem as sparse arrays, shared by the ilp, pulp and cvxpy backends.

Columns: ``x[i, j]`` for every valid cell (row-major), then ``y[o]`` per distinct option id when
``max_distinct`` is set. Rows, in order:

- ``sum_j x[i, j] = 1`` for each unit i (N rows);
- ``sum cost * x / cost_scale <= budget / cost_scale`` (1 row);
- ``sum resource_r * x / scale_r <= limit_r / scale_r`` (R rows);
- with a distinct cap: ``x[i, j] - y[option(i, j)] <= 0`` per cell and ``sum y <= K``.

Cost and resource rows are scaled to O(1) coefficients and the objective by the largest loss, so
solver tolerances mean the same thing on any model size. Built with numpy only, no Python loop
per variable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from allocator.solve.problem import Problem, Solution

# Right-hand-side margins tried in turn: a solver may return a point that meets a row only within
# its feasibility tolerance; then the row is tightened by the next margin and solved again.
RHS_MARGINS = (0.0, 1e-8, 1e-6)


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
    loss = problem.loss[cell_rows, cell_cols]
    objective_scale = float(np.abs(loss).max()) or 1.0
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
    )


def proven_bound(objective: float, optimal: bool, mip_gap: float) -> float | None:
    """Lower bound implied by a front-end that reports only "optimal within ``mip_gap``"."""
    if not optimal:
        return None
    return objective - mip_gap * abs(objective)


def solve_with_margins(problem: Problem, attempt: Callable[[MipModel], Solution]) -> Solution:
    """Run ``attempt`` on the MIP, tightening rows until its answer is exactly feasible."""
    solution = attempt(build_mip(problem))
    for margin in RHS_MARGINS[1:]:
        if solution.status == "infeasible" or problem.is_feasible(solution.choice):
            return solution
        solution = attempt(build_mip(problem, rhs_safety=margin))
    return solution
