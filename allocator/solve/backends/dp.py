"""Exact pseudo-polynomial dynamic programming for a single budget with coarse integer costs.

Costs are shifted by each unit's cheapest option and divided by a resolution ``g`` (by default the
GCD of those offsets when all costs are integers, which real bit counts are), so the budget left
after the cheapest options becomes ``W = floor((budget - sum_i min_j cost) / g)`` cells. Then

    best[i][w] = min_j best[i-1][w - w_ij] + loss_ij      (best[0][w] = 0 for every w >= 0)

over ``N x (W + 1)`` cells, keeping the argmin per cell to read the choice back. The table must
fit ``max_cells``; beyond that the backend refuses and points at ``mckp`` or ``ilp``. With a
user resolution that does not divide the costs, costs are rounded up (the answer stays feasible
but is only proven optimal for the rounded costs: status "feasible" with the Lagrangian bound).
"""

from __future__ import annotations

import math
import time
from typing import ClassVar

import numpy as np

from allocator.errors import InfeasibleError, UnsupportedError
from allocator.solve.backends.lagrange import relax
from allocator.solve.problem import Problem, Solution
from allocator.solve.registry import BACKENDS, check_supported

MAX_CELLS = 100_000_000
INTEGER_ATOL = 1e-6  # costs are bit counts: integers are exact in float64


def integer_offsets(problem: Problem, resolution: float | None) -> tuple[np.ndarray, float, bool]:
    """(offsets (N, K) int64 in resolution units, -1 for invalid; resolution; exact scaling).

    Raises UnsupportedError when costs are not integers and no resolution is given.
    """
    base = problem.cost.min(axis=1, keepdims=True)
    offset = np.where(problem.valid, problem.cost - base, 0.0)
    if resolution is None:
        rounded = np.round(offset)
        if np.abs(offset - rounded).max(initial=0.0) > INTEGER_ATOL:
            raise UnsupportedError(
                "solver 'dp' needs integer costs (bits) or a resolution; these costs are not "
                "integers: pass DPBackend(resolution=...) or use solver 'mckp' or 'ilp'"
            )
        ints = rounded.astype(np.int64)
        resolution = float(np.gcd.reduce(ints[problem.valid])) or 1.0
        return np.where(problem.valid, ints // int(resolution), -1), resolution, True
    if resolution <= 0:
        raise UnsupportedError(f"dp resolution must be positive, got {resolution}")
    scaled = offset / resolution
    exact = bool(np.abs(scaled - np.round(scaled)).max(initial=0.0) <= INTEGER_ATOL)
    cells = np.round(scaled) if exact else np.ceil(scaled - 1e-12)
    return np.where(problem.valid, cells.astype(np.int64), -1), resolution, exact


def _table(
    offsets: np.ndarray, loss: np.ndarray, capacity: int, deadline: float
) -> np.ndarray | None:
    """Fill the DP and return the (N, capacity + 1) argmin table (None past the deadline)."""
    n_units, n_options = offsets.shape
    index_dtype = np.int8 if n_options <= 127 else np.int16
    argmin = np.zeros((n_units, capacity + 1), dtype=index_dtype)
    best = np.zeros(capacity + 1)
    candidate = np.empty(capacity + 1)
    better = np.empty(capacity + 1, dtype=bool)
    for i in range(n_units):
        if time.perf_counter() > deadline:
            return None
        new = np.full(capacity + 1, np.inf)
        for j in np.flatnonzero((offsets[i] >= 0) & (offsets[i] <= capacity)):
            w = int(offsets[i, j])
            size = capacity + 1 - w
            np.add(best[:size], loss[i, j], out=candidate[:size])
            np.less(candidate[:size], new[w:], out=better[:size])
            np.copyto(new[w:], candidate[:size], where=better[:size])
            np.copyto(argmin[i, w:], j, where=better[:size])
        best = new
    return argmin


@BACKENDS.register("dp")
class DPBackend:
    """Exact DP over integer cost cells for budget-only problems with coarse costs."""

    name: ClassVar[str] = "dp"
    supports: ClassVar[frozenset[str]] = frozenset({"budget"})
    exact: ClassVar[bool] = True

    def __init__(self, resolution: float | None = None, max_cells: int = MAX_CELLS) -> None:
        self.resolution = resolution
        self.max_cells = max_cells

    def solve(
        self, problem: Problem, *, time_limit: float | None = None, mip_gap: float = 0.0
    ) -> Solution:
        check_supported(type(self), problem)
        began = time.perf_counter()
        offsets, resolution, exact = integer_offsets(problem, self.resolution)
        min_cost = float(problem.cost.min(axis=1).sum())
        spare = problem.budget - min_cost
        if spare < -1e-9 * max(abs(problem.budget), 1.0):
            raise InfeasibleError(
                f"budget {problem.budget:.6g} bits is below the smallest achievable size "
                f"{min_cost:.6g} bits; raise the budget or allow cheaper options",
                min_size_bits=min_cost,
                binding=["budget"],
            )
        capacity = math.floor(max(spare, 0.0) / resolution + 1e-9)
        capacity = min(capacity, int(offsets.max(axis=1).sum()))
        cells = problem.n_units * (capacity + 1)
        if cells > self.max_cells:
            raise UnsupportedError(
                f"dp table of {problem.n_units} units x {capacity + 1} cost cells "
                f"(resolution {resolution:g} bits) = {cells:,} cells exceeds the limit of "
                f"{self.max_cells:,}; use solver 'mckp' or 'ilp', or a coarser resolution"
            )
        deadline = began + (time_limit if time_limit is not None else np.inf)
        argmin = _table(offsets, problem.loss, capacity, deadline)
        info: dict[str, object] = {"resolution": resolution, "cells": cells}
        if argmin is None:
            fallback = relax(problem)
            return Solution(
                choice=fallback.choice,
                status="time_limit",
                objective=fallback.objective,
                lower_bound=fallback.lower_bound,
                solver=self.name,
                seconds=time.perf_counter() - began,
                info=info,
            )
        choice = np.empty(problem.n_units, dtype=np.int64)
        remaining = capacity
        for i in range(problem.n_units - 1, -1, -1):
            choice[i] = int(argmin[i, remaining])
            remaining -= int(offsets[i, choice[i]])
        objective = problem.evaluate(choice)[0]
        lower_bound = objective if exact else min(relax(problem).lower_bound, objective)
        return Solution(
            choice=choice,
            status="optimal" if exact else "feasible",
            objective=objective,
            lower_bound=lower_bound,
            solver=self.name,
            seconds=time.perf_counter() - began,
            info=info,
        )
