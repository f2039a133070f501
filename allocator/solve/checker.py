"""Independent plan checker: recompute every number of a plan and test every constraint.

This deliberately does not reuse the reductions to judge a plan: it matches patterns, recomputes
costs with the size model (from unit shapes the schema has validated) and losses from the table
on its own, so a bug in the solver path cannot hide here. The inputs themselves go through the
same validation as ``solve`` (``validate_inputs``): what ``solve`` refuses, ``check`` refuses.
"""

from __future__ import annotations

import math

from allocator.errors import InputError, PlanCheckError
from allocator.patterns import compile_pattern
from allocator.schema.constraints import Constraints
from allocator.schema.plan import Plan
from allocator.schema.table import SensitivityTable
from allocator.schema.ties import preset_groups
from allocator.solve.resources import resource_value
from allocator.solve.targets import with_target

REL_TOL = 1e-9


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-9)


def _within(value: float, limit: float) -> bool:
    return value <= limit * (1 + REL_TOL) + 1e-6


def _search(pattern: str, names: list[str]) -> list[str]:
    regex = compile_pattern(pattern, "constraints pattern")
    return [n for n in names if regex.search(n) is not None]


def validate_inputs(table: SensitivityTable, constraints: Constraints) -> None:
    """Raise the InputError ``solve`` would raise on these inputs (patterns that match nothing,
    unknown resources or targets, rules that leave a unit no option, bad pins, ties with no
    common option): the reductions are the one validation path for both."""
    from allocator.solve.reductions import reduce

    reduce(table, constraints, drop_dominated=False)


def _expected_units(table: SensitivityTable, constraints: Constraints) -> list[str]:
    names = [u.name for u in table.units]
    chosen = set(names) if constraints.include is None else set()
    for pattern in constraints.include or []:
        chosen.update(_search(pattern, names))
    for pattern in constraints.exclude:
        chosen.difference_update(_search(pattern, names))
    return [n for n in names if n in chosen]


def _check_units(plan: Plan, table: SensitivityTable, constraints: Constraints) -> list[str]:
    problems = []
    seen: dict[str, int] = {}
    for a in plan.assignments:
        seen[a.unit] = seen.get(a.unit, 0) + 1
    problems += [f"unit {n!r} is assigned {k} times" for n, k in seen.items() if k > 1]
    expected = set(_expected_units(table, constraints))
    problems += [f"unit {n!r} has no assignment" for n in sorted(expected - set(seen))]
    problems += [f"unit {n!r} is not a selected table unit" for n in sorted(set(seen) - expected)]
    return problems


def _check_assignments(plan: Plan, table: SensitivityTable, constraints: Constraints) -> list[str]:
    problems = []
    units = {u.name: u for u in table.units}
    size = constraints.overhead
    for a in plan.assignments:
        unit, key = units.get(a.unit), a.option.key
        if unit is None:
            continue
        if key not in table.losses[a.unit]:
            problems.append(f"unit {a.unit!r}: option {key!r} is not in the table for it")
            continue
        cost = size.cost_bits(a.option, unit)
        if not _close(a.cost_bits, cost):
            problems.append(
                f"unit {a.unit!r}: cost_bits {a.cost_bits} but the size model gives {cost}"
            )
        if not _close(a.predicted_loss, table.losses[a.unit][key]):
            problems.append(
                f"unit {a.unit!r}: predicted_loss {a.predicted_loss} but the table gives "
                f"{table.losses[a.unit][key]}"
            )
        if a.numel != unit.numel:
            problems.append(f"unit {a.unit!r}: numel {a.numel} but the table has {unit.numel}")
        if constraints.allowed is not None and not constraints.allowed.allows(a.option):
            problems.append(f"unit {a.unit!r}: option {key!r} is not in constraints 'allowed'")
    return problems


def _check_rules(plan: Plan, constraints: Constraints) -> list[str]:
    problems = []
    chosen = plan.options_by_unit()
    names = list(chosen)
    for k, rule in enumerate(constraints.rules):
        for name in _search(rule.pattern, names):
            option, where = chosen[name], f"unit {name!r} breaks rules[{k}] ({rule.pattern!r}):"
            if rule.pin is not None and option.key != rule.pin:
                problems.append(f"{where} pinned to {rule.pin} but has {option.key}")
            if rule.allow is not None and not rule.allow.allows(option):
                problems.append(f"{where} option {option.key} is not allowed")
            if rule.min_bits is not None and option.bits < rule.min_bits:
                problems.append(f"{where} {option.bits} bits < min_bits {rule.min_bits}")
            if rule.max_bits is not None and option.bits > rule.max_bits:
                problems.append(f"{where} {option.bits} bits > max_bits {rule.max_bits}")
            if rule.max_sparsity is not None and option.sparsity > rule.max_sparsity + 1e-12:
                problems.append(f"{where} sparsity {option.sparsity} > {rule.max_sparsity}")
    return problems


def _check_ties(plan: Plan, table: SensitivityTable, constraints: Constraints) -> list[str]:
    chosen = {n: o.key for n, o in plan.options_by_unit().items()}
    names = list(chosen)
    groups = [sorted({n for p in group for n in _search(p, names)}) for group in constraints.ties]
    units = {u.name: u for u in table.units}
    known = [units[name] for name in names if name in units]
    groups += preset_groups(known, constraints.tie_presets)
    problems = []
    for group in groups:
        keys = {chosen[n] for n in group}
        if len(keys) > 1:
            problems.append(f"tied units {group[:4]} use different options {sorted(keys)}")
    return problems


def _check_totals(plan: Plan, table: SensitivityTable, constraints: Constraints) -> list[str]:
    problems = []
    numel = sum(a.numel for a in plan.assignments)
    size_bits = sum(a.cost_bits for a in plan.assignments)
    negative = [a.unit for a in plan.assignments if not a.cost_bits >= 0 or not a.numel > 0]
    if negative:
        problems.append(f"units {negative[:4]} have a negative or zero size or weight count")
    if not (math.isfinite(size_bits) and size_bits >= 0):
        problems.append(f"size {size_bits} bits is not a finite non-negative number")
    loss = sum(a.predicted_loss for a in plan.assignments)
    budget = constraints.budget.total_bits(numel)
    expected = {
        "total_numel": numel,
        "size_bits": size_bits,
        "size_bytes": size_bits / 8,
        "avg_bits": size_bits / max(numel, 1),
        "predicted_loss": loss,
        "budget_bits": budget,
    }
    for field, value in expected.items():
        if not _close(float(getattr(plan, field)), float(value)):
            problems.append(
                f"plan {field} = {getattr(plan, field)} but the assignments give {value}"
            )
    if not _within(size_bits, budget):
        problems.append(f"size {size_bits:.0f} bits exceeds the budget {budget:.0f} bits")
    distinct = {a.option.key for a in plan.assignments}
    cap = constraints.max_distinct_options
    if cap is not None and len(distinct) > cap:
        problems.append(f"{len(distinct)} distinct options used, cap is {cap}: {sorted(distinct)}")
    if plan.lower_bound is not None and plan.lower_bound > loss * (1 + 1e-6) + 1e-12:
        problems.append(f"lower_bound {plan.lower_bound} exceeds the plan's loss {loss}")
    if plan.lower_bound is not None and plan.gap is not None:
        gap = max(0.0, loss - plan.lower_bound) / max(abs(loss), 1e-12)
        if not math.isclose(plan.gap, gap, rel_tol=1e-6, abs_tol=1e-12):
            problems.append(f"plan gap {plan.gap} but its loss and lower bound give {gap}")
    units = {u.name: u for u in table.units}
    for limit in constraints.resources:
        try:
            used = sum(
                resource_value(table, limit.name, units[a.unit], a.option)
                for a in plan.assignments
                if a.unit in units
            )
        except InputError as exc:  # an unknown resource is itself a violation here
            problems.append(f"resource {limit.name!r}: {exc}")
            continue
        if not _within(used, limit.max):
            problems.append(f"resource {limit.name!r} uses {used} > limit {limit.max}")
        if limit.name in plan.resources and not _close(plan.resources[limit.name], used):
            problems.append(
                f"plan resources[{limit.name!r}] = {plan.resources[limit.name]} but recomputed {used}"
            )
    return problems


def check_plan(
    plan: Plan, table: SensitivityTable, constraints: Constraints, *, validate: bool = True
) -> list[str]:
    """Every way ``plan`` breaks ``constraints`` or disagrees with ``table``; empty when sound.
    A ``target`` is checked through the restrictions it adds (``allocator.solve.targets``).
    Inputs ``solve`` would refuse raise its InputError (skip with ``validate=False`` when they
    have just been through ``solve``)."""
    if validate:
        validate_inputs(table, constraints)
    certificate = _check_certificate(plan, table, constraints)
    constraints = with_target(
        constraints, table, [a.unit for a in plan.assignments if a.unit in table.losses]
    )
    return (
        _check_units(plan, table, constraints)
        + _check_assignments(plan, table, constraints)
        + _check_rules(plan, constraints)
        + _check_ties(plan, table, constraints)
        + _check_totals(plan, table, constraints)
        + certificate
    )


def _check_certificate(plan: Plan, table: SensitivityTable, constraints: Constraints) -> list[str]:
    """A lower bound (and the status and gap that rest on it) was proven for the table and
    constraints the plan records by hash; against other ones it proves nothing."""
    if plan.lower_bound is None and plan.status != "optimal":
        return []
    problems = []
    for what, recorded, actual in (
        ("constraints", plan.constraints_hash, constraints.content_hash()),
        ("table", plan.table_hash, table.content_hash()),
    ):
        if recorded is not None and recorded != actual:
            problems.append(
                f"the plan's lower bound and status '{plan.status}' were proven for other "
                f"{what} (hash {recorded[:12]}, these are {actual[:12]}); re-solve with these "
                "or check against the ones it was solved with"
            )
    return problems


def assert_plan_ok(
    plan: Plan, table: SensitivityTable, constraints: Constraints, *, validate: bool = True
) -> None:
    """Raise PlanCheckError listing the violations, if any."""
    problems = check_plan(plan, table, constraints, validate=validate)
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise PlanCheckError(f"plan check failed: {shown}{more}")
