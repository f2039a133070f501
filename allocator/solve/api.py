"""The public solver API: table + constraints -> checked Plan.

``solve`` runs the reductions, the chosen backend, maps the answer back to every unit, fills
every Plan field and runs the independent checker before returning. It never returns a plan
that breaks the budget: an infeasible input raises InfeasibleError with the smallest size the
constraints allow.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import platform
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from allocator import __version__
from allocator.errors import InputError, PlanCheckError, UnsupportedError
from allocator.patterns import shown
from allocator.schema import io
from allocator.schema.constraints import Constraints
from allocator.schema.plan import Assignment, Plan
from allocator.schema.table import SensitivityTable
from allocator.solve.checker import assert_plan_ok
from allocator.solve.infeasible import explain, min_size_bits
from allocator.solve.problem import Problem, Solution
from allocator.solve.reductions import Reduction, reduce
from allocator.solve.registry import BACKENDS, check_supported
from allocator.solve.resources import resource_value

M = TypeVar("M", Constraints, SensitivityTable, Plan)

TableLike = SensitivityTable | Mapping[str, Any] | str | os.PathLike[str]
ConstraintsLike = Constraints | Mapping[str, Any] | str | os.PathLike[str]
PlanLike = Plan | Mapping[str, Any] | str | os.PathLike[str]


def _as_model(value: object, model: type[M], what: str, load: Callable[[Path], M]) -> M:
    """``value`` as a ``model``: the object itself, a dict of its fields, or a file to load."""
    if isinstance(value, model):
        return value
    if isinstance(value, Mapping):
        return model.model_validate(dict(value))
    if not isinstance(value, str | os.PathLike):
        raise InputError(
            f"{what} = {shown(value)}: give a {model.__name__}, a dict of its fields or a file path"
        )
    return load(Path(value))


def as_table(table: TableLike) -> SensitivityTable:
    return _as_model(table, SensitivityTable, "table", io.load_table)


def as_constraints(constraints: ConstraintsLike) -> Constraints:
    return _as_model(constraints, Constraints, "constraints", io.load_constraints)


def as_plan(plan: PlanLike) -> Plan:
    return _as_model(plan, Plan, "plan", io.load_plan)


def check_solver_args(solver: object, time_limit: object, mip_gap: object) -> None:
    """InputError for a solver name that is not a string, a time limit that is not a positive
    finite number of seconds, or a gap outside [0, 1)."""
    if not isinstance(solver, str) or not solver or len(solver) > 100:
        raise InputError(f"solver = {shown(solver)}: give a backend name such as 'ilp', or 'auto'")
    if time_limit is not None and (
        isinstance(time_limit, bool)
        or not isinstance(time_limit, numbers.Real)
        or not math.isfinite(time_limit)
        or not 0 < float(time_limit) <= 1e7
    ):
        raise InputError(
            f"time_limit = {shown(time_limit)}: give seconds as a positive number (e.g. 60) or None"
        )
    if (
        isinstance(mip_gap, bool)
        or not isinstance(mip_gap, numbers.Real)
        or not math.isfinite(mip_gap)
        or not 0 <= float(mip_gap) < 1
    ):
        raise InputError(
            f"mip_gap = {shown(mip_gap)}: give a relative gap in [0, 1), e.g. 0 or 0.01"
        )


def versions() -> dict[str, str]:
    """Versions of what produced a plan."""
    found = {"allocator": __version__, "python": platform.python_version()}
    found["numpy"] = np.__version__
    with contextlib.suppress(metadata.PackageNotFoundError):
        found["highspy"] = metadata.version("highspy")
    return found


def pick_backend(problem: Problem, solver: str) -> str:
    """``auto``: the exact ``mckp`` for budget-only problems (and ``max_distinct_options`` with at
    most ``MAX_SUBSETS`` option subsets) when registered, else ``ilp``."""
    from allocator.solve import backends

    backends.load_all()
    if solver != "auto":
        return solver
    kinds = problem.constraint_kinds()
    if kinds <= {"budget", "max_distinct"} and "mckp" in BACKENDS:
        from allocator.solve.backends.distinct import MAX_SUBSETS, n_subsets

        if "max_distinct" not in kinds or n_subsets(problem) <= MAX_SUBSETS:
            return "mckp"
    return "ilp"


def run_backend(
    problem: Problem, solver: str, time_limit: float | None, mip_gap: float
) -> tuple[str, Solution]:
    """Solve the canonical problem with the named backend (after checking it supports it)."""
    name = pick_backend(problem, solver)
    backend = BACKENDS.get(name)
    check_supported(backend, problem)
    return name, backend().solve(problem, time_limit=time_limit, mip_gap=mip_gap)


def build_plan(
    table: SensitivityTable,
    constraints: Constraints,
    reduction: Reduction,
    solution: Solution,
    solver: str,
    seconds: float,
) -> Plan:
    """Map a solution back to every unit and fill every Plan field from the table and size model."""
    chosen = reduction.assignment(solution.choice)
    units = {u.name: u for u in table.units}
    options = {o.key: o for o in table.options}
    names = [r.name for r in constraints.resources]
    assignments = []
    for name, key in chosen.items():
        unit, option = units[name], options[key]
        assignments.append(
            Assignment(
                unit=name,
                option=option,
                numel=unit.numel,
                cost_bits=constraints.overhead.cost_bits(option, unit),
                predicted_loss=table.losses[name][key],
                resources={r: resource_value(table, r, unit, option) for r in names},
            )
        )
    return Plan.from_assignments(
        assignments,
        budget_bits=constraints.budget.total_bits(sum(a.numel for a in assignments)),
        solver=solver,
        status="heuristic" if solution.status == "infeasible" else solution.status,
        lower_bound=solution.lower_bound,
        solve_seconds=seconds,
        table_hash=table.content_hash(),
        constraints_hash=constraints.content_hash(),
        versions=versions(),
        notes=reduction.notes,
    )


def solve(
    table: TableLike,
    constraints: ConstraintsLike,
    solver: str = "auto",
    time_limit: float | None = None,
    mip_gap: float = 0.0,
) -> Plan:
    """Choose one option per unit minimising predicted loss under the constraints.

    ``table`` and ``constraints`` are objects, dicts of their fields, or file paths. ``solver``
    is a registered backend name or ``auto``. Raises InputError (bad input), InfeasibleError (no
    plan fits), UnsupportedError (the solver cannot handle a constraint) or PlanCheckError, all
    ``AllocatorError``s.
    """
    started = time.perf_counter()
    check_solver_args(solver, time_limit, mip_gap)
    table, constraints = as_table(table), as_constraints(constraints)
    reduction = reduce(table, constraints)
    problem = reduction.problem
    if float(problem.cost.min(axis=1).sum()) > problem.budget * (1 + 1e-12):
        raise explain(table, constraints, reduction)
    name, solution = run_backend(problem, solver, time_limit, mip_gap)
    if solution.status == "infeasible" or not problem.is_feasible(solution.choice):
        smallest = min_size_bits(problem)
        if smallest is None or smallest > problem.budget * (1 + 1e-9):
            raise explain(table, constraints, reduction)
        if solution.status == "infeasible":
            raise UnsupportedError(
                f"solver {name!r} found no plan although one exists (the smallest fits in "
                f"{smallest:.0f} of {problem.budget:.0f} bits); use solver 'ilp' or a longer "
                "time limit"
            )
        raise PlanCheckError(f"solver {name!r} returned a plan that breaks the constraints")
    plan = build_plan(table, constraints, reduction, solution, name, time.perf_counter() - started)
    assert_plan_ok(plan, table, constraints, validate=False)  # reduce() validated them
    return plan


def check_plan(plan: PlanLike, table: TableLike, constraints: ConstraintsLike) -> list[str]:
    """Violations of ``plan`` against ``table`` and ``constraints`` (empty when sound); each
    argument is an object, a dict of its fields, or a file path."""
    from allocator.solve.checker import check_plan as check

    return check(as_plan(plan), as_table(table), as_constraints(constraints))


__all__ = ["check_plan", "solve"]
