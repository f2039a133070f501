"""Constraint presets: solving with ``constraints_for_target`` gives plans each target accepts."""

from __future__ import annotations

import random

import pytest

from allocator.export import export_plan
from allocator.schema import Budget, Constraints, SensitivityTable
from allocator.schema.targets import check_plan, constraints_for_target, get_rules

from .conftest import CANDIDATES, TARGETS


def synthetic_table(units) -> SensitivityTable:
    """loss = c * 2^(-2 bits), scaled by group size and symmetry; seeded per unit."""
    rng = random.Random(0)
    options = [o for o in CANDIDATES if o.sparsity == 0]
    group_factor = {None: 1.3, 128: 1.0, 64: 0.9, 32: 0.85}
    losses = {}
    for u in units:
        c = rng.uniform(0.5, 4.0)
        losses[u.name] = {
            o.key: 0.0
            if o.is_fp16
            else c * 2 ** (-2 * o.bits) * group_factor[o.group_size] * (1.05 if o.symmetric else 1)
            for o in options
        }
    return SensitivityTable(units=list(units), options=options, losses=losses)


@pytest.mark.parametrize("target", TARGETS)
def test_solved_plan_fits_target(target, units):
    from allocator.solve.api import solve

    some = [u for u in units if u.layer is not None and u.layer < 4]
    table = synthetic_table(some)
    extra = constraints_for_target(target, table.options, some)
    constraints = Constraints(budget=Budget(avg_bits=5.0), **extra_fields(extra))
    plan = solve(table, constraints)
    assert check_plan(plan, get_rules(target)) == []
    result = export_plan(plan, target, units=some)
    if target == "llamacpp":  # no tensor falls back to a costlier ggml type than its width's own
        from allocator.schema.size import GGML_PREFERENCE, ggml_type_for

        shapes = {u.name: u.shape for u in some}
        for unit, option in plan.options_by_unit().items():
            fallback = ggml_type_for(option, shapes[unit][1]) != GGML_PREFERENCE[option.bits][0]
            assert not fallback or option.bits in (4, 5), (unit, option.key)
        assert result.config["ggml_bits"] / plan.total_numel < plan.avg_bits + 0.6


def extra_fields(extra):
    return {k: v for k, v in extra.items() if k in ("allowed", "tie_presets", "ties", "rules")}
