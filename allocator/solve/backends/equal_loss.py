"""Closed-form equal-marginal-loss allocation (BAQ-style reverse water-filling), then rounding.

Each unit's losses are fitted with the exponential rate-distortion model in the unit's own cost
scale, ``log loss_i(c) = a_i - s_i * c`` (least squares over its valid options with loss > 0;
in theory ``s_i = 2 ln 2 / numel_i``, i.e. ``loss = C_i * 2^(-2 b)`` with ``b = c / numel_i``).
The continuous optimum gives every unit the same marginal loss per bit ``mu``:
``s_i exp(a_i - s_i c_i) = mu``, so ``c_i = (a_i + ln s_i - ln mu) / s_i`` clamped to the unit's
cost range, and ``mu`` is found by bisection so that the costs fill the budget. For units of
equal size this is ``b_i = b_bar + 1/2 log2(C_i / geomean(C))``. The integer answer takes, per
unit, the least-loss option that costs no more than its target, then greedily spends what is
left on the upgrades with the best actual loss decrease per bit. Status "heuristic"; the lower
bound is the Lagrangian dual at ``mu``.
"""

from __future__ import annotations

import time
from typing import ClassVar

import numpy as np

from allocator.errors import InfeasibleError
from allocator.solve.hull import dual_value
from allocator.solve.problem import Problem, Solution
from allocator.solve.registry import BACKENDS, check_supported

BISECTION_STEPS = 60
MAX_UPGRADE_ROUNDS = 64


def fit_exponential(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit (a, s) of ``log loss = a - s * cost`` by least squares; s > 0.

    Units with fewer than two positive-loss options at distinct costs, or with a non-decreasing
    fit, get the median slope rescaled by their cost span and pass through their least loss.
    """
    usable = problem.valid & (problem.loss > 0) & np.isfinite(problem.loss)
    count = usable.sum(axis=1)
    cost = np.where(usable, problem.cost, 0.0)
    log_loss = np.where(usable, np.log(np.where(usable, problem.loss, 1.0)), 0.0)
    safe = np.maximum(count, 1)
    mean_c = cost.sum(axis=1) / safe
    mean_y = log_loss.sum(axis=1) / safe
    dc = np.where(usable, cost - mean_c[:, None], 0.0)
    var = (dc * dc).sum(axis=1)
    cov = (dc * np.where(usable, log_loss - mean_y[:, None], 0.0)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = -cov / var
    good = (count >= 2) & (var > 0) & (slope > 0) & np.isfinite(slope)
    span = np.where(problem.valid, problem.cost, -np.inf).max(axis=1) - problem.cost.min(axis=1)
    span = np.maximum(span, 1e-300)
    if good.any():
        reference = float(np.median(slope[good] * span[good]))
    else:
        reference = 2.0 * np.log(2.0) * 6.0  # loss falls 2^(-2b) over a span of ~6 bits
    slope = np.where(good, slope, reference / span)
    intercept = mean_y + slope * mean_c
    least = np.where(usable, problem.loss, np.inf).min(axis=1)
    where_least = np.where(usable, problem.loss, np.inf).argmin(axis=1)
    at_least = problem.cost[np.arange(problem.n_units), where_least]
    fallback = np.where(np.isfinite(least), np.log(np.where(np.isfinite(least), least, 1.0)), -700)
    intercept = np.where(
        good, intercept, fallback + slope * np.where(np.isfinite(least), at_least, 0)
    )
    return intercept, slope


def continuous_costs(
    intercept: np.ndarray, slope: np.ndarray, low: np.ndarray, high: np.ndarray, budget: float
) -> tuple[np.ndarray, float]:
    """Equal-marginal-loss costs (N,) with sum <= budget, and ``ln mu`` (bisection)."""
    level = intercept + np.log(slope)  # ln of the marginal loss at cost 0

    def costs(log_mu: float) -> np.ndarray:
        return np.clip((level - log_mu) / slope, low, high)

    lo = float((level - slope * high).min()) - 1.0  # every unit at its most expensive option
    hi = float((level - slope * low).max()) + 1.0  # every unit at its cheapest option
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if costs(mid).sum() > budget:
            lo = mid
        else:
            hi = mid
    return costs(hi), hi


def _round_down(problem: Problem, target: np.ndarray) -> np.ndarray:
    """Per unit, the least-loss valid option costing at most its target (else the cheapest)."""
    fits = problem.valid & (problem.cost <= target[:, None] * (1 + 1e-12))
    choice = np.where(fits, problem.loss, np.inf).argmin(axis=1)
    none = ~fits.any(axis=1)
    choice[none] = problem.cost[none].argmin(axis=1)
    return choice


def _upgrade(problem: Problem, choice: np.ndarray) -> np.ndarray:
    """Greedily spend the leftover budget on the best loss decrease per bit, in rounds."""
    rows = np.arange(problem.n_units)
    for _ in range(MAX_UPGRADE_ROUNDS):
        cur_cost, cur_loss = problem.cost[rows, choice], problem.loss[rows, choice]
        slack = problem.budget - float(cur_cost.sum())
        extra = problem.cost - cur_cost[:, None]
        gain = cur_loss[:, None] - problem.loss
        ok = problem.valid & (extra > 0) & (gain > 0) & (extra <= slack)
        if not ok.any():
            break
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(ok, gain / np.where(ok, extra, 1.0), -np.inf)
        best = ratio.argmax(axis=1)
        units = np.flatnonzero(ok.any(axis=1))
        units = units[np.argsort(-ratio[units, best[units]], kind="stable")]
        spend = np.cumsum(extra[units, best[units]])
        take = units[: max(int(np.searchsorted(spend, slack, side="right")), 1)]
        choice[take] = best[take]
    return choice


@BACKENDS.register("equal_loss")
class EqualLossBackend:
    """BAQ-style closed form on a fitted exponential loss model, rounded to real options."""

    name: ClassVar[str] = "equal_loss"
    supports: ClassVar[frozenset[str]] = frozenset({"budget"})
    exact: ClassVar[bool] = False

    def solve(
        self, problem: Problem, *, time_limit: float | None = None, mip_gap: float = 0.0
    ) -> Solution:
        check_supported(type(self), problem)
        began = time.perf_counter()
        low = problem.cost.min(axis=1)
        if float(low.sum()) > problem.budget * (1 + 1e-12):
            raise InfeasibleError(
                f"budget {problem.budget:.6g} bits is below the smallest achievable size "
                f"{float(low.sum()):.6g} bits; raise the budget or allow cheaper options",
                min_size_bits=float(low.sum()),
                binding=["budget"],
            )
        high = np.where(problem.valid, problem.cost, -np.inf).max(axis=1)
        intercept, slope = fit_exponential(problem)
        if problem.n_units == 0:
            target, log_mu = np.zeros(0), -np.inf
        else:
            target, log_mu = continuous_costs(intercept, slope, low, high, problem.budget)
        choice = _upgrade(problem, _round_down(problem, target))
        objective = problem.evaluate(choice)[0]
        mu = float(np.exp(log_mu))
        bound = max(
            dual_value(problem.cost, problem.loss, mu, problem.budget),
            dual_value(problem.cost, problem.loss, 0.0, problem.budget),
        )
        return Solution(
            choice=choice,
            status="heuristic",
            objective=objective,
            lower_bound=min(bound, objective),
            solver=self.name,
            seconds=time.perf_counter() - began,
            info={"mu": mu},
        )
