"""Lower convex hull of each unit's (cost, loss) points, vectorized over units.

A unit's hull starts at its cheapest option (least loss among equally cheap ones) and walks to its
least-loss option through the points that some Lagrange multiplier ``lam >= 0`` makes optimal
(``argmin_j loss + lam * cost``). It is stored as padded segments:

- hull point ``p`` of unit ``i`` is column ``p`` for units already convex in column order (the
  fast path), else ``slow_cols[s, p]`` where ``slow[s] == i``;
- ``eff[i, p]``: loss decrease per bit of segment ``p`` (from point ``p`` to ``p + 1``), positive and
  non-increasing in ``p``; padding holds ``-1``;
- ``dcost[i, p]``: the segment's extra cost in bits; padding holds ``0``.

Units whose options are already sorted by cost, strictly decreasing in loss and convex take a fast
path (no sort); the rest go through pairwise column comparisons (dominance, then slopes in versus
slopes out) when K is small, or a per-row sort, a dominance filter and Andrew's monotone chain.
The work runs in row chunks so temporaries stay small.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

CHUNK_ROWS = 1 << 16
PAD_EFF = -1.0
PAIRWISE_MAX_OPTIONS = 12
T = TypeVar("T")


@dataclass
class Hulls:
    """Padded hull segments of N units (see the module docstring)."""

    eff: np.ndarray  # (N, K-1) float64 loss decrease per bit, PAD_EFF padding
    dcost: np.ndarray  # (N, K-1) float64 segment cost in bits, 0 padding
    slow: np.ndarray  # (S,) int64 units whose hull is not simply their columns in order
    slow_cols: np.ndarray  # (S, K) int64 hull point columns of those units, -1 padding
    base_cost: float  # sum of the hull start points' cost
    base_loss: float  # sum of the hull start points' loss
    total_dcost: float  # cost of moving every unit from its hull start to its hull end

    def choice_at(self, positions: np.ndarray) -> np.ndarray:
        """(N,) columns of hull points at per-unit positions (number of segments taken)."""
        choice = positions.astype(np.int64)
        if self.slow.size:
            choice[self.slow] = self.slow_cols[np.arange(self.slow.size), positions[self.slow]]
        return choice

    def points(self, unit: int) -> np.ndarray:
        """Hull point columns of one unit, cheapest first."""
        where = np.searchsorted(self.slow, unit)
        if where < self.slow.size and self.slow[where] == unit:
            cols = self.slow_cols[where]
            return cols[cols >= 0]
        return np.arange(self.eff.shape[1] + 1)


def row_count(mask: np.ndarray) -> np.ndarray:
    """(R,) number of True per row of an (R, C) mask; a column loop, fast for small C."""
    count = np.zeros(mask.shape[0], dtype=np.int16)
    for j in range(mask.shape[1]):
        count += mask[:, j]
    return count


def _row_all(mask: np.ndarray) -> np.ndarray:
    """(R,) whether every entry of each row of an (R, C) mask is True (column loop)."""
    ok = np.ones(mask.shape[0], dtype=bool)
    for j in range(mask.shape[1]):
        ok &= mask[:, j]
    return ok


def _fast_rows(
    cost: np.ndarray, loss: np.ndarray, eff: np.ndarray, dcost: np.ndarray, dloss: np.ndarray
) -> np.ndarray:
    """Fill eff/dcost/dloss (R, K-1) in column order; return the rows already convex hulls.

    A row qualifies when cost strictly increases, loss strictly decreases (so all are valid) and
    the efficiencies do not increase.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        np.subtract(cost[:, 1:], cost[:, :-1], out=dcost)
        np.subtract(loss[:, :-1], loss[:, 1:], out=dloss)
        np.divide(dloss, dcost, out=eff)
        good = (dcost > 0) & (dloss > 0)
        if eff.shape[1] > 1:
            good[:, 1:] &= eff[:, 1:] <= eff[:, :-1]
    return _row_all(good)


def _staircase(cost: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort rows by (cost, loss) and keep points strictly better than every cheaper one.

    Returns (order (R, K) of kept columns first, kept count (R,)).
    """
    order = np.lexsort((loss, cost), axis=1)
    sorted_loss = np.take_along_axis(loss, order, axis=1)
    prev_min = np.minimum.accumulate(sorted_loss, axis=1)
    keep = np.empty_like(sorted_loss, dtype=bool)
    keep[:, 0] = np.isfinite(sorted_loss[:, 0])
    keep[:, 1:] = sorted_loss[:, 1:] < prev_min[:, :-1]
    # stable partition: kept columns first, in cost order
    rank = np.argsort(~keep, axis=1, kind="stable")
    return np.take_along_axis(order, rank, axis=1), keep.sum(axis=1)


def _monotone_chain(
    px: np.ndarray, py: np.ndarray, count: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Lower hull of each row's first ``count`` points (x strictly increasing, y decreasing).

    Collinear points are kept. Returns (stack (R, K) of point indices, stack size (R,)).
    """
    n_rows, k = px.shape
    rows = np.arange(n_rows)
    stack = np.zeros((n_rows, k), dtype=np.int64)
    size = np.zeros(n_rows, dtype=np.int64)
    for j in range(k):
        active = count > j
        while True:
            idx = np.flatnonzero(active & (size >= 2))
            if idx.size == 0:
                break
            o = stack[idx, size[idx] - 2]
            a = stack[idx, size[idx] - 1]
            cross = (px[idx, a] - px[idx, o]) * (py[idx, j] - py[idx, o]) - (
                py[idx, a] - py[idx, o]
            ) * (px[idx, j] - px[idx, o])
            pop = idx[cross < 0]
            if pop.size == 0:
                break
            size[pop] -= 1
        stack[rows[active], size[active]] = j
        size[active] += 1
    return stack, size


def _hull_columns_pairwise(cost: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """(R, K) hull point columns in cost order, -1 padding, by O(K^2) column comparisons.

    Point j is on the lower-left hull when it minimises ``loss + lam * cost`` for some
    ``lam >= 0``: the steepest slope reaching it from a cheaper point is negative and no steeper
    than the flattest slope leaving it to a dearer point (collinear points kept), and no point of
    equal cost has less loss (exact duplicates keep the first). Works on transposed, contiguous
    columns; no per-row sort.
    """
    n_rows, k = cost.shape
    c = np.ascontiguousarray(cost.T)
    ell = np.ascontiguousarray(loss.T)
    steepest_in = np.full((k, n_rows), -np.inf)
    flattest_out = np.full((k, n_rows), np.inf)
    tied_out = np.zeros((k, n_rows), dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        for a in range(k):
            for b in range(a + 1, k):
                slope = (ell[b] - ell[a]) / (c[b] - c[a])  # nan for invalid pairs
                a_left, b_left = c[a] < c[b], c[b] < c[a]
                np.fmax(steepest_in[b], np.where(a_left, slope, -np.inf), out=steepest_in[b])
                np.fmin(flattest_out[a], np.where(a_left, slope, np.inf), out=flattest_out[a])
                np.fmax(steepest_in[a], np.where(b_left, slope, -np.inf), out=steepest_in[a])
                np.fmin(flattest_out[b], np.where(b_left, slope, np.inf), out=flattest_out[b])
                same = c[a] == c[b]
                tied_out[b] |= same & (ell[a] <= ell[b])
                tied_out[a] |= same & (ell[b] < ell[a])
    on_hull = np.isfinite(c) & np.isfinite(ell) & ~tied_out
    on_hull &= (steepest_in < 0) & (steepest_in <= flattest_out)
    rank = np.zeros((k, n_rows), dtype=np.int64)
    for a in range(k):
        for b in range(a + 1, k):
            rank[b] += on_hull[a] & (c[a] < c[b])
            rank[a] += on_hull[b] & (c[b] < c[a])
    slots = np.full((n_rows, k + 1), -1, dtype=np.int64)
    destination = np.where(on_hull, rank, k).T
    np.put_along_axis(slots, destination, np.broadcast_to(np.arange(k), (n_rows, k)), axis=1)
    return slots[:, :k]


def _hull_columns_sorted(cost: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """(R, K) hull point columns in cost order, -1 padding (sort, staircase, monotone chain)."""
    k = cost.shape[1]
    order, count = _staircase(cost, loss)
    px = np.take_along_axis(cost, order, axis=1)
    py = np.take_along_axis(loss, order, axis=1)
    stack, size = _monotone_chain(px, py, count)
    in_hull = np.arange(k)[None, :] < size[:, None]
    return np.where(in_hull, np.take_along_axis(order, stack, axis=1), -1)


def _slow_rows(
    cost: np.ndarray, loss: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """General hulls of rows: (cols (R, K) with -1 pad, eff, dcost, dloss (R, K-1)).

    Small K uses O(K^2) column comparisons (no per-row sort); large K sorts each row and runs
    Andrew's monotone chain.
    """
    k = cost.shape[1]
    if k <= PAIRWISE_MAX_OPTIONS:
        cols = _hull_columns_pairwise(cost, loss)
    else:
        cols = _hull_columns_sorted(cost, loss)
    safe = np.maximum(cols, 0)
    hx = np.take_along_axis(cost, safe, axis=1)
    hy = np.take_along_axis(loss, safe, axis=1)
    seg = cols[:, 1:] >= 0
    with np.errstate(invalid="ignore", divide="ignore"):
        dcost = np.where(seg, np.diff(hx, axis=1), 0.0)
        dloss = np.where(seg, -np.diff(hy, axis=1), 0.0)
        eff = np.where(seg, dloss / np.where(seg, dcost, 1.0), PAD_EFF)
    if k > 1:  # guard against rounding: efficiencies never increase along a hull
        eff = np.minimum.accumulate(eff, axis=1)
    return cols, eff, dcost, dloss


@dataclass
class ChunkHulls:
    """Hull segments of a block of rows (see the module docstring); ``slow`` is block-local."""

    eff: np.ndarray  # (R, K-1)
    dcost: np.ndarray  # (R, K-1)
    dloss: np.ndarray  # (R, K-1) loss decrease of each segment, 0 padding
    slow: np.ndarray  # (S,) rows of the block whose hull is not their columns in order
    slow_cols: np.ndarray  # (S, K)
    base_cost: float
    base_loss: float


def chunk_hulls(cost: np.ndarray, loss: np.ndarray) -> ChunkHulls:
    """Hulls of a block of rows of (R, K) cost/loss (inf = invalid)."""
    n_rows, k = cost.shape
    eff = np.empty((n_rows, max(k - 1, 0)))
    dcost = np.empty_like(eff)
    dloss = np.empty_like(eff)
    ok = _fast_rows(cost, loss, eff, dcost, dloss)
    base_cost = float(cost[:, 0].sum(where=ok))
    base_loss = float(loss[:, 0].sum(where=ok))
    slow = np.flatnonzero(~ok)
    if slow.size:
        cols, eff[slow], dcost[slow], dloss[slow] = _slow_rows(cost[slow], loss[slow])
        base_cost += float(np.take_along_axis(cost[slow], cols[:, :1], axis=1).sum())
        base_loss += float(np.take_along_axis(loss[slow], cols[:, :1], axis=1).sum())
    else:
        cols = np.zeros((0, k), dtype=np.int64)
    return ChunkHulls(eff, dcost, dloss, slow, cols, base_cost, base_loss)


def map_chunks(
    function: Callable[[int], T], n_units: int, threads: int = 1, chunk_rows: int = CHUNK_ROWS
) -> list[T]:
    """``function(r0)`` for every chunk start, in order; numpy releases the GIL, so threads help."""
    starts = range(0, n_units, chunk_rows)
    if threads <= 1 or len(starts) < 2:
        return [function(r0) for r0 in starts]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(function, starts))


def lower_hulls(
    cost: np.ndarray, loss: np.ndarray, chunk_rows: int = CHUNK_ROWS, threads: int = 1
) -> Hulls:
    """Compute the padded lower convex hulls of all units of (N, K) cost/loss (inf = invalid)."""
    n_units = cost.shape[0]
    parts = map_chunks(
        lambda r0: chunk_hulls(cost[r0 : r0 + chunk_rows], loss[r0 : r0 + chunk_rows]),
        n_units,
        threads,
        chunk_rows,
    )
    starts = range(0, n_units, chunk_rows)
    slow = [r0 + part.slow for r0, part in zip(starts, parts, strict=True)]
    return Hulls(
        eff=np.concatenate([part.eff for part in parts]),
        dcost=np.concatenate([part.dcost for part in parts]),
        slow=np.concatenate(slow) if slow else np.zeros(0, dtype=np.int64),
        slow_cols=np.concatenate([part.slow_cols for part in parts])
        if parts
        else np.zeros((0, cost.shape[1]), dtype=np.int64),
        base_cost=sum(part.base_cost for part in parts),
        base_loss=sum(part.base_loss for part in parts),
        total_dcost=sum(float(part.dcost.sum()) for part in parts),
    )


def gather(values: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """(N,) values[i, choice[i]] of an (N, K) array, through a flat take (faster than fancy rows)."""
    n_units, k = values.shape
    flat = np.arange(0, n_units * k, k, dtype=np.int64)
    flat += choice
    return np.take(values.reshape(-1), flat)


def dual_value(cost: np.ndarray, loss: np.ndarray, lam: float, budget: float) -> float:
    """Lagrangian dual ``sum_i min_j (loss + lam * cost) - lam * budget``: a lower bound for lam >= 0.

    Computed from the raw arrays (not the hulls), so it certifies a bound independently.
    """
    total = 0.0
    for r0 in range(0, cost.shape[0], CHUNK_ROWS):
        part_cost, part_loss = cost[r0 : r0 + CHUNK_ROWS], loss[r0 : r0 + CHUNK_ROWS]
        best = part_loss[:, 0].copy()
        if lam != 0.0:
            best += lam * part_cost[:, 0]
        for j in range(1, cost.shape[1]):
            column = part_loss[:, j] if lam == 0.0 else part_loss[:, j] + lam * part_cost[:, j]
            np.minimum(best, column, out=best)
        total += float(best.sum())
    return total - lam * budget
