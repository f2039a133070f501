"""Explaining infeasible inputs: the smallest size the constraints allow and which ones bind.

The smallest size is the minimum total cost under every constraint but the budget (a sum of
per-row minima, or a MIP when resources or a distinct cap couple the units). A constraint family
binds when adding it alone to the bare table raises that minimum (or makes it unreachable).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from allocator.errors import AllocatorError, InfeasibleError
from allocator.schema.constraints import Constraints, UnitRule
from allocator.schema.table import SensitivityTable
from allocator.solve.problem import Problem
from allocator.solve.reductions import Reduction, reduce


def min_size_bits(problem: Problem) -> float | None:
    """Smallest total cost under the problem's side constraints, ignoring its budget.

    None when the resources or distinct cap cannot be met at any size.
    """
    row_min = float(problem.cost.min(axis=1).sum())
    if problem.n_resources == 0 and problem.max_distinct is None:
        return row_min
    from allocator.solve.backends.ilp import IlpBackend

    sized = Problem(
        cost=np.where(problem.valid, problem.cost, 0.0),
        loss=np.where(problem.valid, problem.cost, 0.0),
        valid=problem.valid,
        budget=float("inf"),
        resources=problem.resources,
        resource_limits=problem.resource_limits,
        resource_names=problem.resource_names,
        option_ids=problem.option_ids,
        max_distinct=problem.max_distinct,
    )
    solution = IlpBackend().solve(sized, time_limit=60.0)
    if solution.status == "infeasible":
        return None
    return float(solution.objective)


def _bare(constraints: Constraints) -> Constraints:
    return Constraints(
        budget=constraints.budget,
        overhead=constraints.overhead,
        include=constraints.include,
        exclude=constraints.exclude,
    )


def _rules_without(constraints: Constraints, part: str) -> list[UnitRule]:
    """Rules with their pins (``part='pins'``) or their filters/bounds (``'bounds'``) removed."""
    kept = []
    for rule in constraints.rules:
        if part == "pins":
            rule = rule.model_copy(update={"pin": None})
        else:
            rule = UnitRule(pattern=rule.pattern, pin=rule.pin)
        if (
            rule.pin
            or rule.allow
            or rule.min_bits
            or rule.max_bits
            or rule.max_sparsity is not None
        ):
            kept.append(rule)
    return kept


Family = tuple[dict[str, Any], dict[str, Any]]  # (fields alone, fields without it)


def _families(constraints: Constraints) -> dict[str, Family]:
    """Constraint families present: the update giving the family alone on the bare table, and
    the update removing it from the full constraints."""
    found: dict[str, Family] = {}
    if constraints.allowed is not None:
        found["allowed options"] = ({"allowed": constraints.allowed}, {"allowed": None})
    bounds = _rules_without(constraints, "pins")
    pins = _rules_without(constraints, "bounds")
    if bounds:
        found["per-unit rules (allow/min_bits/max_bits/max_sparsity)"] = (
            {"rules": bounds},
            {"rules": pins},
        )
    if pins:
        found["pins"] = ({"rules": pins}, {"rules": bounds})
    if constraints.ties or constraints.tie_presets:
        ties = {"ties": constraints.ties, "tie_presets": constraints.tie_presets}
        found["ties"] = (ties, {"ties": [], "tie_presets": []})
    if constraints.target is not None:
        found[f"target {constraints.target!r} (its options, rules and ties)"] = (
            {"target": constraints.target},
            {"target": None},
        )
    for limit in constraints.resources:
        others = [r for r in constraints.resources if r.name != limit.name]
        found[f"resource {limit.name!r} <= {limit.max:g}"] = (
            {"resources": [limit]},
            {"resources": others},
        )
    if constraints.max_distinct_options is not None:
        found[f"max_distinct_options = {constraints.max_distinct_options}"] = (
            {"max_distinct_options": constraints.max_distinct_options},
            {"max_distinct_options": None},
        )
    return found


def _min_size(table: SensitivityTable, constraints: Constraints) -> float | None:
    return min_size_bits(reduce(table, constraints, drop_dominated=False).problem)


def _raises(size: float | None, reference: float | None) -> bool:
    if reference is None:
        return False
    return size is None or size > reference * (1 + 1e-9) + 1e-6


def binding_constraints(table: SensitivityTable, constraints: Constraints) -> list[str]:
    """Constraint families that raise the smallest achievable size: alone on the bare table, or
    as the one whose removal from the full constraints would lower it."""
    bare = _bare(constraints)
    base = _min_size(table, bare)
    full = _min_size(table, constraints)
    binding = []
    for label, (alone, without) in _families(constraints).items():
        try:
            raises_alone = _raises(_min_size(table, bare.model_copy(update=alone)), base)
            raises_all = _raises(full, _min_size(table, constraints.model_copy(update=without)))
        except AllocatorError:
            continue
        if raises_alone or raises_all:
            binding.append(label)
    return binding


def _resource_shortfalls(problem: Problem) -> list[str]:
    if problem.resources is None or problem.resource_limits is None:
        return []
    floor = np.where(problem.valid[None], problem.resources, np.inf).min(axis=2).sum(axis=1)
    return [
        f"resource {name!r} needs at least {need:.6g} (limit {limit:.6g})"
        for name, need, limit in zip(
            problem.resource_names, floor, problem.resource_limits, strict=True
        )
        if need > limit * (1 + 1e-9)
    ]


def explain(
    table: SensitivityTable, constraints: Constraints, reduction: Reduction
) -> InfeasibleError:
    """An InfeasibleError naming the smallest achievable size and the binding constraints."""
    problem = reduction.problem
    numel = sum(u.numel for u in table.units if u.name in set(reduction.units))
    smallest = min_size_bits(problem)
    binding = binding_constraints(table, constraints)
    if smallest is None:
        detail = _resource_shortfalls(problem) or [
            "the resource limits and the distinct-option cap cannot all be met together"
        ]
        return InfeasibleError(
            "infeasible: no plan meets the constraints at any size: "
            + "; ".join(detail)
            + f". Binding: {', '.join(binding) or 'their combination'}. Raise those limits.",
            min_size_bits=None,
            binding=binding,
        )
    budget = problem.budget
    binding = ["budget", *binding]
    return InfeasibleError(
        f"infeasible: the budget of {budget:.0f} bits ({budget / numel:.4f} avg bits over "
        f"{numel} weights) is below the smallest plan these constraints allow: {smallest:.0f} "
        f"bits = {smallest / numel:.4f} avg bits ({smallest / 8e6:.3f} MB). Binding: "
        f"{', '.join(binding)}. Raise budget.avg_bits to at least {smallest / numel:.4f} "
        f"(or total_bytes to {int(np.ceil(smallest / 8))}) or relax the other binding constraints.",
        min_size_bits=smallest,
        binding=binding,
    )
