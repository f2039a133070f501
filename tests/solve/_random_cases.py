"""Small random tables and constraints, and a brute-force solver that shares no code with the
reductions: it enumerates every assignment of table options to units and tests each constraint
directly."""

from __future__ import annotations

import itertools
import re

import numpy as np

from allocator.schema.constraints import Budget, Constraints, OptionFilter, ResourceLimit, UnitRule
from allocator.schema.option import Option
from allocator.schema.table import SensitivityTable
from allocator.schema.targets import get_rules
from allocator.schema.ties import active_presets, preset_key
from allocator.schema.unit import Unit

KINDS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
KEYS = ("b2-g128", "b3-g128", "b3-g64", "b4-g128", "b4-g32-sym", "b8-g128", "fp16", "b4-g128-2:4")


def random_table(
    rng: np.random.Generator, n_units: int = 4, with_resource: bool = False
) -> SensitivityTable:
    """``n_units`` units over one or two layers, each with 2-4 options and random losses."""
    names = [f"model.layers.{k // len(KINDS)}.{KINDS[k % len(KINDS)]}" for k in range(n_units)]
    rng.shuffle(names)
    units = [
        Unit(name=n, shape=(int(rng.choice([64, 128, 192])), int(rng.choice([128, 256]))))
        for n in names
    ]
    options = [Option.parse(k) for k in KEYS]
    losses, latency = {}, {}
    for unit in units:
        keys = list(rng.choice(KEYS, size=int(rng.integers(2, 5)), replace=False))
        losses[unit.name] = {k: float(np.round(rng.exponential(1.0), 6)) for k in keys}
        latency[unit.name] = {k: float(np.round(rng.uniform(1, 10), 3)) for k in keys}
    resources = {"latency": latency} if with_resource else {}
    return SensitivityTable(units=units, options=options, losses=losses, resources=resources)


def random_constraints(rng: np.random.Generator, table: SensitivityTable) -> Constraints:
    """Random rules, pins, ties, resources and distinct caps; budget near the feasible range."""
    names = [u.name for u in table.units]
    fields: dict = {}
    if rng.random() < 0.15 and len(names) > 2:
        fields["exclude"] = [f"^{re.escape(names[-1])}$"]
        names = names[:-1]
    if rng.random() < 0.3:
        fields["allowed"] = OptionFilter(bits=[2, 3, 4, 8, 16])
    rules = []
    if rng.random() < 0.4:
        rules.append(UnitRule(pattern="proj$", min_bits=int(rng.integers(2, 5))))
    if rng.random() < 0.3:
        rules.append(UnitRule(pattern="q_proj|down", max_bits=8, max_sparsity=0.0))
    if rng.random() < 0.3:
        name = str(rng.choice(names))
        rules.append(
            UnitRule(pattern=f"^{re.escape(name)}$", pin=str(rng.choice(list(table.losses[name]))))
        )
    fields["rules"] = rules
    if rng.random() < 0.3:
        fields["tie_presets"] = ["qkv"]
    if rng.random() < 0.2:
        fields["target"] = "vllm"
    if rng.random() < 0.25 and len(names) >= 2:
        pair = rng.choice(names, size=2, replace=False)
        fields["ties"] = [[f"^{re.escape(str(n))}$" for n in pair]]
    if rng.random() < 0.3:
        fields["max_distinct_options"] = int(rng.integers(1, 3))
    if table.resources and rng.random() < 0.6:
        fields["resources"] = [
            ResourceLimit(name="latency", max=float(rng.uniform(3, 8) * len(names)))
        ]
    elif rng.random() < 0.2:
        numel = sum(u.numel for u in table.units)
        fields["resources"] = [
            ResourceLimit(name="bops", max=float(16 * numel * rng.uniform(3, 6)))
        ]
    avg = float(rng.uniform(2.5, 9.0))
    return Constraints(budget=Budget(avg_bits=avg), **fields)


def _matches(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None


def _target_ok(option: Option, unit: Unit, constraints: Constraints) -> bool:
    """The export target's own rules (``allocator.schema.targets``), not the solver's reductions."""
    if constraints.target is None:
        return True
    rules = get_rules(constraints.target)
    if rules.option_problem(option) is not None:
        return False
    divides = option.is_fp16 or option.group_size is None or unit.shape is None
    return not rules.group_divides or divides or unit.shape[1] % option.group_size == 0


def _option_ok(option: Option, name: str, constraints: Constraints) -> bool:
    if constraints.allowed is not None and not constraints.allowed.allows(option):
        return False
    for rule in constraints.rules:
        if not _matches(rule.pattern, name):
            continue
        if rule.pin is not None and option.key != rule.pin:
            return False
        if rule.allow is not None and not rule.allow.allows(option):
            return False
        if rule.min_bits is not None and option.bits < rule.min_bits:
            return False
        if rule.max_bits is not None and option.bits > rule.max_bits:
            return False
        if rule.max_sparsity is not None and option.sparsity > rule.max_sparsity + 1e-12:
            return False
    return True


def brute_force(
    table: SensitivityTable, constraints: Constraints, *, ignore_budget: bool = False
) -> tuple[float, float] | None:
    """(optimal loss, its size in bits) over every feasible assignment, or None if none exists.

    With ``ignore_budget`` it returns (smallest size, its loss) instead.
    """
    names = [u.name for u in table.units]
    selected = [
        n
        for n in names
        if (constraints.include is None or any(_matches(p, n) for p in constraints.include))
        and not any(_matches(p, n) for p in constraints.exclude)
    ]
    units = {u.name: u for u in table.units}
    choices = [
        [
            table.option(k)
            for k in table.losses[n]
            if _option_ok(table.option(k), n, constraints)
            and _target_ok(table.option(k), units[n], constraints)
        ]
        for n in selected
    ]
    groups = [[n for n in selected if any(_matches(p, n) for p in g)] for g in constraints.ties]
    presets = list(constraints.tie_presets)
    if constraints.target is not None:
        presets += get_rules(constraints.target).tie_presets
    for preset in active_presets(presets):
        keys: dict[str, list[str]] = {}
        for n in selected:
            key = preset_key(units[n], preset)
            if key is not None:
                keys.setdefault(key, []).append(n)
        groups += list(keys.values())
    index = {n: i for i, n in enumerate(selected)}
    numel = sum(units[n].numel for n in selected)
    budget = constraints.budget.total_bits(numel)
    size_model = constraints.overhead
    best: tuple[float, float] | None = None
    for combo in itertools.product(*choices):
        if any(len({combo[index[n]].key for n in g}) > 1 for g in groups):
            continue
        cap = constraints.max_distinct_options
        if cap is not None and len({o.key for o in combo}) > cap:
            continue
        size = sum(size_model.cost_bits(o, units[n]) for n, o in zip(selected, combo, strict=True))
        if not ignore_budget and size > budget * (1 + 1e-9):
            continue
        if not _resources_ok(table, constraints, selected, combo, units):
            continue
        loss = sum(table.losses[n][o.key] for n, o in zip(selected, combo, strict=True))
        value = (size, loss) if ignore_budget else (loss, size)
        if best is None or value < best:
            best = value
    return best


def _resources_ok(table, constraints, selected, combo, units) -> bool:
    for limit in constraints.resources:
        if limit.name in table.resources:
            used = sum(
                table.resources[limit.name][n][o.key] for n, o in zip(selected, combo, strict=True)
            )
        else:
            used = sum(o.bits * 16 * units[n].numel for n, o in zip(selected, combo, strict=True))
        if used > limit.max * (1 + 1e-9):
            return False
    return True
