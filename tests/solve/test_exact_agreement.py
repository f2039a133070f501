"""Every registered backend against brute force on random small instances with ties, pins,
bounds, resources and distinct caps: exact ones match the optimum, heuristic ones stay feasible
and their lower bound stays below it."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest

from allocator.errors import InfeasibleError, InputError, UnsupportedError
from allocator.solve import backends
from allocator.solve.api import solve
from allocator.solve.checker import check_plan
from allocator.solve.registry import BACKENDS
from tests.solve._random_cases import brute_force, random_constraints, random_table

backends.load_all()
N_CASES = 40


def _cases() -> list[tuple]:
    cases = []
    for seed in range(N_CASES):
        rng = np.random.default_rng(seed)
        table = random_table(rng, n_units=int(rng.integers(2, 6)), with_resource=seed % 3 == 0)
        cases.append((seed, table, random_constraints(rng, table)))
    return cases


CASES = _cases()
EXACT = [n for n in BACKENDS.names() if BACKENDS.get(n).exact]
HEURISTIC = [n for n in BACKENDS.names() if not BACKENDS.get(n).exact]
NO_BOUND = {"pulp", "pulp_cbc"}


def _expect(table, constraints):
    try:
        return brute_force(table, constraints)
    except Exception:  # pragma: no cover - the generator only builds valid tables
        raise


@pytest.mark.parametrize("name", EXACT)
def test_exact_backends_match_brute_force(name: str) -> None:
    solved = 0
    for seed, table, constraints in CASES:
        try:
            best = _expect(table, constraints)
        except InputError:
            continue
        try:
            plan = solve(table, constraints, solver=name)
        except UnsupportedError:
            continue  # the backend declares it cannot handle a constraint kind here
        except InputError:
            # a rule left a unit with no option: brute force must find nothing either
            assert best is None, f"seed {seed}"
            continue
        except InfeasibleError as exc:
            assert best is None, f"seed {seed}: {name} said infeasible, brute force found {best}"
            smallest = brute_force(table, constraints, ignore_budget=True)
            if smallest is not None and exc.min_size_bits is not None:
                assert math.isclose(exc.min_size_bits, smallest[0], rel_tol=1e-9), f"seed {seed}"
            continue
        assert best is not None, f"seed {seed}: {name} returned a plan, brute force found none"
        assert check_plan(plan, table, constraints) == []
        assert math.isclose(plan.predicted_loss, best[0], rel_tol=1e-7, abs_tol=1e-9), (
            f"seed {seed}: {name} loss {plan.predicted_loss} != optimum {best[0]}"
        )
        if name in NO_BOUND:  # PuLP's CBC hands over no bound: the plan is honestly "feasible"
            assert plan.status == "feasible" and plan.lower_bound is None, f"seed {seed}"
        else:
            assert plan.status == "optimal"
            assert plan.lower_bound is not None
            assert plan.lower_bound <= best[0] * (1 + 1e-7) + 1e-9
        solved += 1
    assert solved >= 5, f"{name} solved only {solved} cases; the test would prove little"


@pytest.mark.parametrize("name", HEURISTIC)
def test_heuristic_backends_are_feasible_and_bounded(name: str) -> None:
    for seed, table, constraints in CASES:
        try:
            best = _expect(table, constraints)
            plan = solve(table, constraints, solver=name)
        except (UnsupportedError, InputError, InfeasibleError):
            continue
        assert best is not None, f"seed {seed}"
        assert check_plan(plan, table, constraints) == []
        assert plan.predicted_loss >= best[0] * (1 - 1e-9) - 1e-12
        if plan.lower_bound is not None:
            assert plan.lower_bound <= best[0] * (1 + 1e-7) + 1e-9, f"seed {seed}"


def test_cases_cover_every_constraint_kind() -> None:
    kinds = {"ties": 0, "pins": 0, "bounds": 0, "resources": 0, "distinct": 0, "infeasible": 0}
    for _, table, constraints in CASES:
        kinds["ties"] += bool(constraints.ties or constraints.tie_presets or constraints.target)
        kinds["pins"] += any(r.pin for r in constraints.rules)
        kinds["bounds"] += any(r.min_bits or r.max_bits for r in constraints.rules)
        kinds["resources"] += bool(constraints.resources)
        kinds["distinct"] += constraints.max_distinct_options is not None
        with contextlib.suppress(InputError):
            kinds["infeasible"] += brute_force(table, constraints) is None
    assert all(count >= 2 for count in kinds.values()), kinds
