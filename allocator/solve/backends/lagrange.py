"""Lagrangian relaxation on the lower convex hulls, exact multiplier search, greedy repair.

The LP relaxation of the multiple-choice knapsack takes hull segments in order of decreasing
efficiency (loss decrease per bit) until the budget is spent; the first segment that does not fit
is the critical one and its efficiency is the optimal multiplier ``lam``. The integer solution
keeps every segment before it, then greedily adds later segments that still fit. The certified
lower bound is the dual value ``L(lam) = sum_i min_j (loss + lam * cost) - lam * budget``,
recomputed from the raw arrays. At most one unit is fractional in the LP, so on large problems the
gap is tiny.

For large problems the critical efficiency is found without a full sort: a random sample of rows
brackets it, one pass sums the segments above the bracket and collects those inside, and only
those are sorted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from allocator.errors import InfeasibleError
from allocator.solve.hull import CHUNK_ROWS, Hulls, dual_value, gather, lower_hulls, row_count
from allocator.solve.problem import Problem, Solution
from allocator.solve.registry import BACKENDS, check_supported

FULL_SORT_SEGMENTS = 1 << 17
SAMPLE_SIZE = 1 << 15
MAX_GREEDY_STEPS = 200_000
OPTIMAL_RTOL = 1e-12


@dataclass
class Relaxation:
    """Result of the relaxation: integer choice, multiplier and certified bound."""

    choice: np.ndarray  # (N,) columns
    lam: float  # optimal Lagrange multiplier (loss per bit)
    lower_bound: float  # dual value L(lam), a lower bound on the optimum
    objective: float
    total_cost: float


@dataclass
class _Segments:
    """Hull segments still in play: flat indices into the (N, K-1) hull arrays, row-major order."""

    flat: np.ndarray
    eff: np.ndarray
    dcost: np.ndarray


def check_budget(problem: Problem, hulls: Hulls) -> None:
    """Raise InfeasibleError when even the cheapest option of every unit exceeds the budget."""
    if hulls.base_cost > problem.budget * (1 + 1e-12):
        raise InfeasibleError(
            f"budget {problem.budget:.6g} bits is below the smallest achievable size "
            f"{hulls.base_cost:.6g} bits; raise the budget or allow cheaper options",
            min_size_bits=hulls.base_cost,
            binding=["budget"],
        )


def _bracket(eff: np.ndarray, weight: np.ndarray, target: float, widen: int) -> tuple[float, float]:
    """Efficiencies (lo, hi) around the sample's weighted quantile ``target`` (fraction of weight
    taken in decreasing efficiency order), with a margin of about 4 standard errors."""
    order = np.argsort(-eff, kind="stable")
    fraction = np.cumsum(weight[order]) / max(float(weight.sum()), 1e-300)
    spread = 4.0 * np.sqrt(max(target * (1 - target), 1e-4) / max(len(eff), 1))
    delta = (spread + 1e-4) * 4.0**widen
    i_hi = int(np.searchsorted(fraction, target - delta))
    i_lo = int(np.searchsorted(fraction, target + delta))
    hi = np.inf if target - delta <= 0 or i_hi == 0 else float(eff[order[i_hi - 1]])
    lo = 0.0 if i_lo >= len(order) else float(eff[order[i_lo]])
    return lo, hi


def _split_hulls(hulls: Hulls, lo: float, hi: float) -> tuple[np.ndarray, float, _Segments]:
    """One chunked pass: per-unit count and total cost of segments with eff > hi, and the
    segments with lo < eff <= hi."""
    n_units, n_cols = hulls.eff.shape
    above_count = np.zeros(n_units, dtype=np.int16)
    flat: list[np.ndarray] = []
    above_cost = 0.0
    for r0 in range(0, n_units, CHUNK_ROWS):
        eff = hulls.eff[r0 : r0 + CHUNK_ROWS]
        above = eff > hi
        if np.isfinite(hi):
            above_cost += float(np.sum(hulls.dcost[r0 : r0 + CHUNK_ROWS], where=above))
            above_count[r0 : r0 + CHUNK_ROWS] = row_count(above)
        inside = eff > lo
        inside &= ~above
        flat.append(np.flatnonzero(inside) + r0 * n_cols)
    index = np.concatenate(flat)
    segments = _Segments(index, hulls.eff.reshape(-1)[index], hulls.dcost.reshape(-1)[index])
    return above_count, above_cost, segments


def _narrow_hulls(hulls: Hulls, slack: float) -> tuple[np.ndarray, float, _Segments]:
    """Bracket the critical segment among all hull segments (one pass when the sample is good)."""
    if hulls.eff.size <= FULL_SORT_SEGMENTS or hulls.total_dcost <= slack:
        return _split_hulls(hulls, 0.0, np.inf)
    n_units = hulls.eff.shape[0]
    per_row = max(hulls.eff.shape[1], 1)
    for widen in range(4):
        rng = np.random.default_rng(1234 + widen)
        rows = rng.integers(0, n_units, size=min(SAMPLE_SIZE // per_row + 1, n_units))
        lo, hi = _bracket(
            hulls.eff[rows].ravel(), hulls.dcost[rows].ravel(), slack / hulls.total_dcost, widen
        )
        above_count, above_cost, inside = _split_hulls(hulls, lo, hi)
        if above_cost <= slack < above_cost + float(inside.dcost.sum()):
            return above_count, above_cost, inside
    return _split_hulls(hulls, 0.0, np.inf)


def _narrow_segments(segments: _Segments, slack: float) -> tuple[np.ndarray, float, _Segments]:
    """Bracket the critical segment within a flat candidate set; returns (flat indices taken as
    above the bracket, their cost, segments inside)."""
    nothing = np.zeros(0, dtype=np.int64)
    total = float(segments.dcost.sum())
    if len(segments.flat) <= FULL_SORT_SEGMENTS or total <= slack:
        return nothing, 0.0, segments
    for widen in range(4):
        rng = np.random.default_rng(4321 + widen)
        sample = rng.integers(0, len(segments.flat), size=SAMPLE_SIZE)
        lo, hi = _bracket(segments.eff[sample], segments.dcost[sample], slack / total, widen)
        above = segments.eff > hi
        above_cost = float(segments.dcost[above].sum())
        inside = (segments.eff > lo) & ~above
        if above_cost <= slack < above_cost + float(segments.dcost[inside].sum()):
            kept = _Segments(segments.flat[inside], segments.eff[inside], segments.dcost[inside])
            return segments.flat[above], above_cost, kept
    return nothing, 0.0, segments


def _greedy_fill(
    rows: np.ndarray, dcost: np.ndarray, start: int, slack: float, blocked: set[int]
) -> list[int]:
    """Take later candidates (sorted by efficiency) that still fit, keeping a prefix per unit."""
    taken: list[int] = []
    if start >= len(rows):
        return taken
    tail_min = np.minimum.accumulate(dcost[start:][::-1])[::-1]
    for step, k in enumerate(range(start, min(len(rows), start + MAX_GREEDY_STEPS))):
        if slack < tail_min[step]:
            break
        unit = int(rows[k])
        if unit in blocked:
            continue
        if dcost[k] <= slack:
            taken.append(k)
            slack -= dcost[k]
        else:
            blocked.add(unit)
    return taken


def relax(problem: Problem, hulls: Hulls | None = None) -> Relaxation:
    """Solve the Lagrangian relaxation and repair it into a feasible integer choice."""
    hulls = lower_hulls(problem.cost, problem.loss) if hulls is None else hulls
    check_budget(problem, hulls)
    n_units, n_cols = hulls.eff.shape
    slack = problem.budget - hulls.base_cost
    above_count, above_cost, segments = _narrow_hulls(hulls, slack)
    taken_flat, taken_cost, segments = _narrow_segments(segments, slack - above_cost)
    above_cost += taken_cost
    order = np.argsort(-segments.eff, kind="stable")  # stable: a unit's segments keep hull order
    flat, eff, dcost = segments.flat[order], segments.eff[order], segments.dcost[order]
    rows = flat // max(n_cols, 1)
    cumulative = above_cost + np.cumsum(dcost)
    n_take = int(np.searchsorted(cumulative, slack, side="right"))
    lam = 0.0 if n_take >= len(flat) else float(eff[n_take])
    taken = np.zeros(len(flat), dtype=bool)
    taken[:n_take] = True
    if n_take < len(flat):
        left = slack - (cumulative[n_take - 1] if n_take else above_cost)
        taken[_greedy_fill(rows, dcost, n_take + 1, left, {int(rows[n_take])})] = True
    positions = above_count.astype(np.int64)
    positions += np.bincount(rows[taken], minlength=n_units)
    if taken_flat.size:
        positions += np.bincount(taken_flat // max(n_cols, 1), minlength=n_units)
    choice = hulls.choice_at(positions)
    objective = float(gather(problem.loss, choice).sum())
    total_cost = float(gather(problem.cost, choice).sum())
    lower_bound = dual_value(problem.cost, problem.loss, lam, problem.budget)
    return Relaxation(choice, lam, min(lower_bound, objective), objective, total_cost)


@BACKENDS.register("lagrange")
class LagrangeBackend:
    """Fast heuristic with a certified dual bound; scales to 10^7 units."""

    name: ClassVar[str] = "lagrange"
    supports: ClassVar[frozenset[str]] = frozenset({"budget"})
    exact: ClassVar[bool] = False

    def solve(
        self, problem: Problem, *, time_limit: float | None = None, mip_gap: float = 0.0
    ) -> Solution:
        check_supported(type(self), problem)
        began = time.perf_counter()
        result = relax(problem)
        gap = result.objective - result.lower_bound
        optimal = gap <= OPTIMAL_RTOL * max(abs(result.objective), 1e-300)
        return Solution(
            choice=result.choice,
            status="optimal" if optimal else "heuristic",
            objective=result.objective,
            lower_bound=result.objective if optimal else result.lower_bound,
            solver=self.name,
            seconds=time.perf_counter() - began,
            info={"lambda": result.lam, "total_cost": result.total_cost},
        )
