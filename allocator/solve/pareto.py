"""The loss-vs-size frontier: solve the same constraints over a range of average-bit budgets.

Budgets are solved in increasing order. The frontier is monotone: a larger budget never gets a
worse loss (a heuristic backend's worse answer is replaced by the previous plan, which still
fits the larger budget). Budgets below the smallest achievable size are reported, not solved.
"""

from __future__ import annotations

import csv
import io as _io
import numbers
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from allocator.errors import InfeasibleError, InputError
from allocator.patterns import shown
from allocator.schema.constraints import Budget
from allocator.schema.plan import Plan
from allocator.schema.version import FORMAT_VERSION, check_format_version
from allocator.solve.api import (
    ConstraintsLike,
    TableLike,
    as_constraints,
    as_table,
    check_solver_args,
    solve,
)

DEFAULT_BUDGETS = (2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0)


class ParetoPoint(BaseModel):
    """One budget of a sweep: its plan summary (and plan), or why there is none."""

    model_config = ConfigDict(extra="forbid")

    budget_avg_bits: float
    feasible: bool
    avg_bits: float | None = None
    size_bytes: float | None = None
    predicted_loss: float | None = None
    lower_bound: float | None = None
    gap: float | None = None
    status: str | None = None
    solver: str | None = None
    reason: str | None = None
    plan: Plan | None = Field(default=None, repr=False)


class ParetoFront(BaseModel):
    """A whole sweep, written by ``allocator pareto``."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        return check_format_version(version, "pareto front")

    points: list[ParetoPoint]
    table_hash: str
    constraints_hash: str


def _point(budget: float, plan: Plan) -> ParetoPoint:
    return ParetoPoint(
        budget_avg_bits=budget,
        feasible=True,
        avg_bits=plan.avg_bits,
        size_bytes=plan.size_bytes,
        predicted_loss=plan.predicted_loss,
        lower_bound=plan.lower_bound,
        gap=plan.gap,
        status=plan.status,
        solver=plan.solver,
        plan=plan,
    )


def check_budgets(budgets: object) -> set[float]:
    """The distinct average-bit budgets, each a finite positive number; an InputError else."""
    if isinstance(budgets, str | bytes) or not hasattr(budgets, "__iter__"):
        raise InputError(f"budgets = {shown(budgets)}: give a list of average bits, e.g. [3, 4]")
    values = set()
    for b in budgets:  # type: ignore[attr-defined]
        if isinstance(b, bool) or not isinstance(b, numbers.Real) or not 0 < float(b) <= 1e6:
            raise InputError(
                f"budgets: {shown(b)} is not a positive finite number of average bits, e.g. 3.5"
            )
        values.add(float(b))
    if not values:
        raise InputError("budgets: the list is empty; give average bits, e.g. 2.5,3,3.5,4")
    return values


def pareto(
    table: TableLike,
    constraints: ConstraintsLike,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    solver: str = "auto",
    time_limit: float | None = None,
    mip_gap: float = 0.0,
    progress: bool = False,
) -> list[ParetoPoint]:
    """Solve at each average-bits budget (ascending); loss is non-increasing along the result.

    ``table`` and ``constraints`` are objects, dicts of their fields, or file paths; a budget
    below the smallest achievable size gives a point with ``feasible=False`` and the reason."""
    from tqdm import tqdm

    check_solver_args(solver, time_limit, mip_gap)
    ordered = sorted(check_budgets(budgets))
    table, constraints = as_table(table), as_constraints(constraints)
    points: list[ParetoPoint] = []
    best: Plan | None = None
    for budget in tqdm(ordered, desc="pareto", unit="budget", disable=not progress):
        at_budget = constraints.model_copy(update={"budget": Budget(avg_bits=budget)})
        try:
            plan = solve(table, at_budget, solver=solver, time_limit=time_limit, mip_gap=mip_gap)
        except InfeasibleError as exc:
            points.append(ParetoPoint(budget_avg_bits=budget, feasible=False, reason=str(exc)))
            continue
        if best is not None and plan.predicted_loss > best.predicted_loss:
            # the smaller budget's plan still fits; the bound must be this budget's own
            bound = plan.lower_bound
            loss = best.predicted_loss
            plan = best.model_copy(
                update={
                    "budget_bits": plan.budget_bits,
                    "constraints_hash": plan.constraints_hash,
                    "lower_bound": None if bound is None else min(bound, loss),
                    "gap": None
                    if bound is None
                    else max(0.0, loss - bound) / max(abs(loss), 1e-12),
                    "status": "heuristic" if plan.status == "optimal" else plan.status,
                    "notes": [*best.notes, f"kept the plan of a smaller budget at {budget:g} bits"],
                }
            )
        best = plan
        points.append(_point(budget, plan))
    return points


sweep = pareto  # the name the CLI and service use


def front(table: TableLike, constraints: ConstraintsLike, points: list[ParetoPoint]) -> ParetoFront:
    return ParetoFront(
        points=points,
        table_hash=as_table(table).content_hash(),
        constraints_hash=as_constraints(constraints).content_hash(),
    )


def points_csv(points: list[ParetoPoint]) -> str:
    """One row per budget: budget, feasible, avg_bits, size_bytes, loss, bound, gap, status."""
    buffer = _io.StringIO()
    columns = [
        "budget_avg_bits",
        "feasible",
        "avg_bits",
        "size_bytes",
        "predicted_loss",
        "lower_bound",
        "gap",
        "status",
        "solver",
    ]
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for point in points:
        row = point.model_dump(include=set(columns))
        writer.writerow(["" if row[c] is None else row[c] for c in columns])
    return buffer.getvalue()
