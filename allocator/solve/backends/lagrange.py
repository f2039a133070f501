"""Lagrangian relaxation on the lower convex hulls, exact multiplier search, greedy repair.

The LP relaxation of the multiple-choice knapsack takes hull segments in order of decreasing
efficiency (loss decrease per bit) until the budget is spent; the first segment that does not fit
is the critical one and its efficiency is the optimal multiplier ``lam``. The integer solution
keeps every segment before it, then greedily adds later segments that still fit. The lower bound
is the dual value ``L(lam) = sum_i min_j (loss + lam * cost) - lam * budget`` (equal to the LP
optimum), summed exactly from the hull segments. At most one unit is fractional in the LP, so on
large problems the certified gap is tiny.

Large problems never materialise all segments: hulls of a random sample of units bracket the
critical efficiency, then one streaming pass builds each chunk's hulls and keeps only the count
and sums of the segments above the bracket and the few segments inside it, which are sorted.
A bracket that misses (rare) is widened and the pass repeated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from allocator.errors import InfeasibleError
from allocator.solve.hull import CHUNK_ROWS, ChunkHulls, chunk_hulls, gather, map_chunks, row_count
from allocator.solve.problem import Problem, Solution
from allocator.solve.registry import BACKENDS, check_supported

FULL_SORT_SEGMENTS = 1 << 17
SAMPLE_SIZE = 1 << 15
MAX_GREEDY_STEPS = 200_000
OPTIMAL_RTOL = 1e-12
THREADS = 2


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
    """Hull segments in play, as flat indices ``unit * (K - 1) + position`` (row-major order)."""

    flat: np.ndarray
    eff: np.ndarray
    dcost: np.ndarray
    dloss: np.ndarray

    def subset(self, mask: np.ndarray) -> _Segments:
        return _Segments(self.flat[mask], self.eff[mask], self.dcost[mask], self.dloss[mask])


@dataclass
class _Scan:
    """What one streaming pass keeps for an efficiency bracket (lo, hi]."""

    above_count: np.ndarray  # (N,) segments with eff > hi per unit (a prefix of its hull)
    above_cost: float
    above_loss: float  # loss decrease of those segments
    inside: _Segments  # segments with lo < eff <= hi
    below_any: bool  # whether segments may lie at or below lo (all real segments have eff > 0)
    slow: np.ndarray  # units whose hull is not their columns in order
    slow_cols: np.ndarray
    base_cost: float
    base_loss: float


def _infeasible(budget: float, min_cost: float) -> InfeasibleError:
    return InfeasibleError(
        f"budget {budget:.6g} bits is below the smallest achievable size {min_cost:.6g} bits; "
        "raise the budget or allow cheaper options",
        min_size_bits=min_cost,
        binding=["budget"],
    )


def _scan(problem: Problem, lo: float, hi: float, threads: int) -> _Scan:
    """One pass over all units: build hulls chunk by chunk and split segments by the bracket."""
    n_units, k = problem.cost.shape
    above_count = np.zeros(n_units, dtype=np.int16)

    def work(r0: int) -> tuple[ChunkHulls, tuple[float, float], _Segments]:
        part = chunk_hulls(problem.cost[r0 : r0 + CHUNK_ROWS], problem.loss[r0 : r0 + CHUNK_ROWS])
        above = part.eff > hi
        sums = (0.0, 0.0)
        if np.isfinite(hi):
            above_count[r0 : r0 + len(part.eff)] = row_count(above)
            sums = (float(part.dcost.sum(where=above)), float(part.dloss.sum(where=above)))
        inside = part.eff > lo
        inside &= ~above
        idx = np.flatnonzero(inside)
        segments = _Segments(
            idx + r0 * (k - 1),
            part.eff.reshape(-1)[idx],
            part.dcost.reshape(-1)[idx],
            part.dloss.reshape(-1)[idx],
        )
        return part, sums, segments

    results = map_chunks(work, n_units, threads)
    starts = range(0, n_units, CHUNK_ROWS)
    parts = [r[0] for r in results]
    segments = [r[2] for r in results]
    return _Scan(
        above_count=above_count,
        above_cost=sum(r[1][0] for r in results),
        above_loss=sum(r[1][1] for r in results),
        inside=_Segments(
            *(
                np.concatenate([getattr(s, f) for s in segments])
                for f in ("flat", "eff", "dcost", "dloss")
            )
        ),
        below_any=lo > 0,
        slow=np.concatenate([r0 + p.slow for r0, p in zip(starts, parts, strict=True)]),
        slow_cols=np.concatenate([p.slow_cols for p in parts]),
        base_cost=sum(p.base_cost for p in parts),
        base_loss=sum(p.base_loss for p in parts),
    )


def _bracket(eff: np.ndarray, weight: np.ndarray, target: float, widen: int) -> tuple[float, float]:
    """Efficiencies (lo, hi) around the sample's weighted quantile ``target`` (fraction of weight
    taken in decreasing efficiency order), with a margin of about 4 standard errors."""
    order = np.argsort(-eff, kind="stable")
    fraction = np.cumsum(weight[order]) / max(float(weight.sum()), 1e-300)
    clamped = min(max(target, 0.0), 1.0)
    spread = 4.0 * np.sqrt(max(clamped * (1 - clamped), 1e-4) / max(len(eff), 1))
    delta = (spread + 1e-4) * 4.0**widen
    i_hi = int(np.searchsorted(fraction, target - delta))
    i_lo = int(np.searchsorted(fraction, target + delta))
    hi = np.inf if target - delta <= 0 or i_hi == 0 else float(eff[order[i_hi - 1]])
    lo = 0.0 if i_lo >= len(order) else float(eff[order[i_lo]])
    return lo, hi


def _sample_bracket(problem: Problem, widen: int) -> tuple[float, float]:
    """Bracket the critical efficiency from the hulls of a random sample of units."""
    n_units, k = problem.cost.shape
    rng = np.random.default_rng(1234 + widen)
    rows = np.sort(rng.integers(0, n_units, size=min(SAMPLE_SIZE // max(k - 1, 1) + 1, n_units)))
    part = chunk_hulls(problem.cost[rows], problem.loss[rows])
    scale = n_units / len(rows)
    slack = problem.budget - part.base_cost * scale
    total = float(part.dcost.sum()) * scale
    return _bracket(part.eff.ravel(), part.dcost.ravel(), slack / max(total, 1e-300), widen)


def _bracketed_scan(problem: Problem, threads: int) -> _Scan:
    """Scan with a sampled bracket that holds the critical segment (full scan when small)."""
    if problem.cost.size <= FULL_SORT_SEGMENTS:
        return _scan(problem, 0.0, np.inf, threads)
    for widen in range(4):
        lo, hi = _sample_bracket(problem, widen)
        scan = _scan(problem, lo, hi, threads)
        slack = problem.budget - scan.base_cost
        if slack < 0:  # (nearly) infeasible: only the cheapest hull points
            return _scan(problem, np.inf, np.inf, threads)
        inside_cost = float(scan.inside.dcost.sum())
        if scan.above_cost <= slack and (
            slack < scan.above_cost + inside_cost or not scan.below_any
        ):
            return scan
    return _scan(problem, 0.0, np.inf, threads)


def _narrow(segments: _Segments, slack: float) -> tuple[_Segments, _Segments]:
    """Split a large candidate set into (segments surely taken, segments around the critical)."""
    nothing = segments.subset(np.zeros(len(segments.flat), dtype=bool))
    total = float(segments.dcost.sum())
    if len(segments.flat) <= FULL_SORT_SEGMENTS or total <= slack:
        return nothing, segments
    for widen in range(4):
        sample = np.random.default_rng(4321 + widen).integers(0, len(segments.flat), SAMPLE_SIZE)
        lo, hi = _bracket(segments.eff[sample], segments.dcost[sample], slack / total, widen)
        above = segments.eff > hi
        inside = (segments.eff > lo) & ~above
        above_cost = float(segments.dcost[above].sum())
        if above_cost <= slack < above_cost + float(segments.dcost[inside].sum()):
            return segments.subset(above), segments.subset(inside)
    return nothing, segments


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


def relax(problem: Problem, threads: int = THREADS) -> Relaxation:
    """Solve the Lagrangian relaxation and repair it into a feasible integer choice."""
    n_units, k = problem.cost.shape
    if n_units == 0:
        if problem.budget < 0:
            raise _infeasible(problem.budget, 0.0)
        return Relaxation(np.zeros(0, dtype=np.int64), 0.0, 0.0, 0.0, 0.0)
    per_unit = max(k - 1, 1)
    scan = _bracketed_scan(problem, threads)
    slack = problem.budget - scan.base_cost
    if slack < -1e-12 * abs(problem.budget):
        raise _infeasible(problem.budget, scan.base_cost)
    sure, segments = _narrow(scan.inside, slack - scan.above_cost)
    above_cost = scan.above_cost + float(sure.dcost.sum())
    above_loss = scan.above_loss + float(sure.dloss.sum())
    order = np.argsort(-segments.eff, kind="stable")  # stable: a unit's segments keep hull order
    segments = segments.subset(order)
    rows = segments.flat // per_unit
    cumulative = above_cost + np.cumsum(segments.dcost)
    n_take = int(np.searchsorted(cumulative, slack, side="right"))
    lam = 0.0 if n_take >= len(rows) else float(segments.eff[n_take])
    taken = np.zeros(len(rows), dtype=bool)
    taken[:n_take] = True
    if n_take < len(rows):
        left = slack - (cumulative[n_take - 1] if n_take else above_cost)
        taken[_greedy_fill(rows, segments.dcost, n_take + 1, left, {int(rows[n_take])})] = True
    positions = scan.above_count.astype(np.int64)
    positions += np.bincount(rows[taken], minlength=n_units)
    positions += np.bincount(sure.flat // per_unit, minlength=n_units)
    choice = positions
    if scan.slow.size:
        choice[scan.slow] = scan.slow_cols[np.arange(scan.slow.size), positions[scan.slow]]
    objective = float(gather(problem.loss, choice).sum())
    total_cost = float(gather(problem.cost, choice).sum())
    # L(lam) = sum of hull minima of loss + lam * cost, minus lam * budget
    gaining = segments.eff > lam
    gain = above_loss + float(segments.dloss[gaining].sum())
    spent = above_cost + float(segments.dcost[gaining].sum())
    lower_bound = scan.base_loss - gain + lam * (scan.base_cost + spent - problem.budget)
    return Relaxation(choice, lam, min(lower_bound, objective), objective, total_cost)


@BACKENDS.register("lagrange")
class LagrangeBackend:
    """Fast heuristic with a certified dual bound; scales to 10^7 units (max_distinct_options:
    one relaxation per option subset)."""

    name: ClassVar[str] = "lagrange"
    supports: ClassVar[frozenset[str]] = frozenset({"budget", "max_distinct"})
    exact: ClassVar[bool] = False

    def solve(
        self, problem: Problem, *, time_limit: float | None = None, mip_gap: float = 0.0
    ) -> Solution:
        check_supported(type(self), problem)
        if problem.max_distinct is not None:
            from allocator.solve.backends.distinct import solve_by_subsets

            return solve_by_subsets(problem, exact=False, name=self.name, time_limit=time_limit)
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
