"""The canonical problem every backend solves: a multiple-choice knapsack on padded arrays.

After reductions (ties merged, pins fixed, bounds and filters applied), unit ``i`` has up to ``K``
options in columns ``j`` with ``valid[i, j]``. Choose one valid column per unit to minimise
``sum loss[i, choice_i]`` subject to ``sum cost[i, choice_i] <= budget``,
``sum resources[r, i, choice_i] <= resource_limits[r]``, and, when ``max_distinct`` is set, at most
that many distinct ``option_ids`` used. Pure numpy: no torch, no files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

SolutionStatus = Literal["optimal", "feasible", "time_limit", "heuristic", "infeasible"]


@dataclass
class Problem:
    """Arrays of shape (N, K); invalid cells hold +inf loss/cost and must never be chosen."""

    cost: np.ndarray
    loss: np.ndarray
    valid: np.ndarray
    budget: float
    resources: np.ndarray | None = None  # (R, N, K)
    resource_limits: np.ndarray | None = None  # (R,)
    resource_names: list[str] = field(default_factory=list)
    option_ids: np.ndarray | None = None  # (N, K) int, global option index (for max_distinct)
    max_distinct: int | None = None

    def __post_init__(self) -> None:
        self.cost = np.asarray(self.cost, dtype=np.float64)
        self.loss = np.asarray(self.loss, dtype=np.float64)
        self.valid = np.asarray(self.valid, dtype=bool)
        if (
            self.cost.shape != self.loss.shape
            or self.cost.shape != self.valid.shape
            or self.cost.ndim != 2
        ):
            raise ValueError("cost, loss and valid must share one (N, K) shape")
        if not self.valid.any(axis=1).all():
            raise ValueError("every unit needs at least one valid option")
        self.cost = np.where(self.valid, self.cost, np.inf)
        self.loss = np.where(self.valid, self.loss, np.inf)
        if self.resources is not None:
            self.resources = np.asarray(self.resources, dtype=np.float64)
            self.resource_limits = np.asarray(self.resource_limits, dtype=np.float64)
            if self.resources.shape[1:] != self.cost.shape:
                raise ValueError("resources must have shape (R, N, K)")
            if self.resource_limits.shape != (self.resources.shape[0],):
                raise ValueError("resource_limits must have shape (R,)")
            if not self.resource_names:
                self.resource_names = [f"resource{r}" for r in range(self.resources.shape[0])]
        if self.max_distinct is not None and self.option_ids is None:
            raise ValueError("max_distinct needs option_ids")

    @property
    def n_units(self) -> int:
        return self.cost.shape[0]

    @property
    def n_options(self) -> int:
        return self.cost.shape[1]

    @property
    def n_resources(self) -> int:
        return 0 if self.resources is None else self.resources.shape[0]

    def constraint_kinds(self) -> set[str]:
        """The kinds of side constraint present; backends declare which they support."""
        kinds = {"budget"}
        if self.n_resources:
            kinds.add("resources")
        if self.max_distinct is not None:
            kinds.add("max_distinct")
        return kinds

    def evaluate(self, choice: np.ndarray) -> tuple[float, float, np.ndarray]:
        """Return (total loss, total cost, resource usage (R,)) of a choice vector."""
        rows = np.arange(self.n_units)
        total_loss = float(self.loss[rows, choice].sum())
        total_cost = float(self.cost[rows, choice].sum())
        usage = (
            self.resources[:, rows, choice].sum(axis=1)
            if self.resources is not None
            else np.zeros(0)
        )
        return total_loss, total_cost, usage

    def is_feasible(self, choice: np.ndarray, rtol: float = 1e-9) -> bool:
        rows = np.arange(self.n_units)
        if choice.shape != (self.n_units,) or not self.valid[rows, choice].all():
            return False
        _, total_cost, usage = self.evaluate(choice)
        if total_cost > self.budget * (1 + rtol) + 1e-9:
            return False
        limits = self.resource_limits
        if (
            self.resources is not None
            and limits is not None
            and np.any(usage > limits * (1 + rtol) + 1e-9)
        ):
            return False
        return not (
            self.max_distinct is not None
            and self.option_ids is not None
            and len(np.unique(self.option_ids[rows, choice])) > self.max_distinct
        )


@dataclass
class Solution:
    """A backend's answer: one column per unit, plus its certificate."""

    choice: np.ndarray
    status: SolutionStatus
    objective: float
    lower_bound: float | None = None
    solver: str = ""
    seconds: float = 0.0
    info: dict[str, object] = field(default_factory=dict)

    @property
    def gap(self) -> float | None:
        if self.lower_bound is None:
            return None
        return max(0.0, self.objective - self.lower_bound) / max(abs(self.objective), 1e-12)
