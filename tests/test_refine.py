"""Closed-loop refinement on a synthetic model whose true loss is the table's times a hidden
per-layer-group factor: refinement must find the factors and a plan at least as good."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from allocator.refine import layer_groups, refine, scale_table
from allocator.schema import Constraints, Option, SensitivityTable, Unit
from allocator.solve.problem import Problem
from allocator.solve.rules import plan_from_choice
from tests.solve.bruteforce import brute_force

KEYS = ["b2-g128", "b3-g128", "b4-g128"]
OPTIONS = [Option.parse(k) for k in KEYS]


def make_table(n_layers: int = 8) -> SensitivityTable:
    rng = np.random.default_rng(0)
    units = [
        Unit(name=f"model.layers.{i}.mlp.down_proj", shape=(64, 128), kind="down_proj", layer=i)
        for i in range(n_layers)
    ]
    losses = {}
    for u in units:
        c = float(rng.lognormal(0, 0.5))
        losses[u.name] = {k: c * 4.0 ** (-b) for k, b in zip(KEYS, (2, 3, 4), strict=True)}
    return SensitivityTable(units=units, options=OPTIONS, losses=losses)


def exact_solve(table: SensitivityTable, constraints: Constraints):
    """Brute-force solve (tiny instances only), returned as a Plan."""
    units = table.units
    cost = np.array([[constraints.overhead.cost_bits(o, u) for o in OPTIONS] for u in units])
    loss = np.array([[table.losses[u.name][k] for k in KEYS] for u in units])
    budget = constraints.budget.total_bits(sum(u.numel for u in units))
    found = brute_force(
        Problem(cost=cost, loss=loss, valid=np.ones_like(cost, bool), budget=budget)
    )
    assert found is not None
    choice = {u.name: OPTIONS[j] for u, j in zip(units, found[1], strict=True)}
    return plan_from_choice(units, choice, constraints, solver="brute", table=table)


def hidden_truth(table: SensitivityTable, factor: dict[int, float]):
    layer = {u.name: u.layer for u in table.units}
    calls = []

    def measure(choice: Mapping[str, Option]) -> float:
        calls.append(len(choice))
        return sum(table.losses[u][o.key] * factor[layer[u] // 2] for u, o in choice.items())

    return measure, calls


def test_layer_groups_are_contiguous_and_cover_all_units() -> None:
    table = make_table(8)
    groups = layer_groups(table.units, 3)
    assert sum(len(g) for g in groups) == 8
    flat = [int(n.split(".")[2]) for g in groups for n in g]
    assert flat == sorted(flat)


def test_scale_table_multiplies_each_group() -> None:
    table = make_table(4)
    groups = layer_groups(table.units, 2)
    scaled = scale_table(table, groups, [2.0, 0.5])
    first, last = table.units[0].name, table.units[-1].name
    assert scaled.losses[first]["b2-g128"] == pytest.approx(2 * table.losses[first]["b2-g128"])
    assert scaled.losses[last]["b3-g128"] == pytest.approx(0.5 * table.losses[last]["b3-g128"])


def test_refine_recovers_group_factors_and_improves_the_plan() -> None:
    table = make_table(8)
    constraints = Constraints.simple(3.0 + 32 / 128)
    factor = {0: 30.0, 1: 1.0, 2: 1.0, 3: 0.05}
    measure, calls = hidden_truth(table, factor)
    result = refine(table, constraints, measure, exact_solve, rounds=3, n_groups=4)
    first = result.rounds[0]
    # round 0 measures whole plan + 4 groups; the scales are the hidden factors up to a
    # common factor (their geometric mean)
    centre = (30.0 * 1.0 * 1.0 * 0.05) ** 0.25
    assert first.scales == pytest.approx([30.0 / centre, 1.0 / centre, 1.0 / centre, 0.05 / centre])
    truth = SensitivityTable(
        units=table.units,
        options=OPTIONS,
        losses={
            u.name: {k: v * factor[u.layer // 2] for k, v in table.losses[u.name].items()}
            for u in table.units
        },
    )
    optimum = exact_solve(truth, constraints).predicted_loss
    assert result.rounds[result.best].measured == pytest.approx(optimum)
    assert result.improved and result.rounds[0].measured > optimum
    assert result.plan.size_bits <= result.plan.budget_bits
    assert calls[:5] == [8, 2, 2, 2, 2]


def test_a_table_on_another_absolute_scale_still_gets_relative_corrections() -> None:
    table = make_table(8)
    constraints = Constraints.simple(3.0 + 32 / 128)
    factor = {0: 3000.0, 1: 100.0, 2: 100.0, 3: 5.0}  # every group 100x+ off, unevenly
    measure, _ = hidden_truth(table, factor)
    result = refine(table, constraints, measure, exact_solve, rounds=3, n_groups=4)
    scales = result.rounds[0].scales
    assert scales[0] / scales[1] == pytest.approx(30.0) and scales[3] / scales[1] == pytest.approx(
        0.05
    )


def test_refine_stops_when_the_plan_repeats_and_never_reports_worse() -> None:
    table = make_table(6)
    constraints = Constraints.simple(3.25)
    measure, _ = hidden_truth(table, {0: 1.0, 1: 1.0, 2: 1.0})
    result = refine(table, constraints, measure, exact_solve, rounds=5, n_groups=3)
    assert len(result.rounds) == 1
    assert not result.improved and result.best == 0
    assert result.summary()["best_measured"] == result.rounds[0].measured
