"""Turn a table and constraints into the canonical Problem, and map its solution back.

A chain of steps in the spirit of cvxpy's reductions; each takes and returns a ``Candidates``
state and the chain's inverse maps a per-row choice back to every original unit:

1. ``select_units``: ``include`` / ``exclude`` patterns; then ``target`` adds its allowed options,
   rules and ties to the constraints (``allocator.solve.targets``);
2. ``apply_filters``: the global ``allowed`` filter, then each rule's ``allow`` and bounds
   (``min_bits``, ``max_bits``, ``max_sparsity``);
3. ``apply_pins``: a rule's ``pin`` fixes the unit to that option (it must exist for the unit);
4. ``tie_units``: explicit tie groups and presets merge units into one row whose options are
   those every member allows, with cost, loss and resources summed;
5. ``drop_dominated``: an option no cheaper and no better than another in cost, loss and every
   resource is dropped (skipped when ``max_distinct_options`` is set, where it is unsafe).

Patterns use ``re.search`` semantics against the unit's full name, compiled by
``allocator.patterns`` (RE2: linear-time matching, bounded length).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from allocator.errors import AllocatorWarning, InputError
from allocator.patterns import compile_pattern, shown
from allocator.schema.constraints import Constraints, OptionFilter
from allocator.schema.option import Option
from allocator.schema.table import SensitivityTable
from allocator.schema.ties import preset_groups
from allocator.solve.problem import Problem
from allocator.solve.resources import check_resource_names, resource_value
from allocator.solve.targets import with_target


@dataclass
class Candidates:
    """Intermediate state: selected units, their allowed option keys, and tie groups."""

    units: list[str]
    allowed: dict[str, list[str]]
    groups: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Reduction:
    """The canonical problem plus what is needed to map a solution back to unit names."""

    problem: Problem
    groups: list[list[str]]  # unit names merged into each problem row
    columns: list[list[str]]  # option key of each valid column of each row
    units: list[str]  # selected units, table order
    option_keys: list[str]  # global option index used by Problem.option_ids
    notes: list[str]

    def assignment(self, choice: np.ndarray) -> dict[str, str]:
        """Map a per-row column choice to ``{unit name: option key}`` in table order."""
        chosen: dict[str, str] = {}
        for row, members in enumerate(self.groups):
            key = self.columns[row][int(choice[row])]
            for name in members:
                chosen[name] = key
        return {name: chosen[name] for name in self.units}


_SELECTED = " left by include/exclude"


def match_units(
    pattern: str,
    names: list[str],
    where: str,
    scope: str = "",
    *,
    strict: bool = True,
    notes: list[str] | None = None,
) -> list[str]:
    """Names that ``pattern`` finds (``re.search``). A pattern matching nothing is an InputError
    when ``strict``, else an ``AllocatorWarning`` (also added to ``notes``) and no match: rule
    sets written once for several model families (``lm_head`` on a model with tied embeddings)
    keep working."""
    regex = compile_pattern(pattern, where)
    found = [n for n in names if regex.search(n) is not None]
    if not found:
        example = names[0] if names else "(none)"
        message = (
            f"{where}: pattern {shown(pattern)} matches no unit{scope}; unit names look like "
            f"{shown(example)} (patterns use re.search; anchor with ^...$ for exact names)"
        )
        if strict:
            raise InputError(message)
        warnings.warn(
            f"{message}; ignored (strict: true makes this an error)", AllocatorWarning, stacklevel=2
        )
        if notes is not None and message not in notes:
            notes.append(f"ignored: {message}")
    return found


def select_units(table: SensitivityTable, constraints: Constraints) -> Candidates:
    """Step 1: the units the plan covers, in table order, each with all its table options."""
    names = [u.name for u in table.units]
    selected = set(names)
    strict, notes = constraints.strict, list[str]()
    if constraints.include is not None:
        selected = set()
        for k, pattern in enumerate(constraints.include):
            where = f"constraints include[{k}]"
            selected.update(match_units(pattern, names, where, strict=strict, notes=notes))
    for k, pattern in enumerate(constraints.exclude):
        where = f"constraints exclude[{k}]"
        selected.difference_update(match_units(pattern, names, where, strict=strict, notes=notes))
    units = [n for n in names if n in selected]
    if not units:
        raise InputError("constraints include/exclude leave no unit to allocate; loosen them")
    order = [o.key for o in table.options]
    allowed = {n: [k for k in order if k in table.losses[n]] for n in units}
    return Candidates(units=units, allowed=allowed, notes=notes)


def _filter_units(
    state: Candidates,
    table: SensitivityTable,
    members: list[str],
    keep: OptionFilter | None,
    where: str,
    *,
    min_bits: int | None = None,
    max_bits: int | None = None,
    max_sparsity: float | None = None,
) -> None:
    def ok(option: Option) -> bool:
        return (
            (keep is None or keep.allows(option))
            and (min_bits is None or option.bits >= min_bits)
            and (max_bits is None or option.bits <= max_bits)
            and (max_sparsity is None or option.sparsity <= max_sparsity + 1e-12)
        )

    if keep is not None and keep.keys is not None:
        offered = {k for n in members for k in table.losses[n]}
        for key in keep.keys:
            if key not in offered:
                raise InputError(
                    f"{where}.keys: option {key!r} is offered by no unit it applies to; table "
                    f"options are {sorted(offered)}"
                )
    option_of = {o.key: o for o in table.options}
    for name in members:
        before = state.allowed[name]
        after = [k for k in before if ok(option_of[k])]
        if not after:
            raise InputError(
                f"{where} leaves unit {name!r} with no option (it had {before}); loosen the rule "
                "or exclude the unit"
            )
        state.allowed[name] = after


def apply_filters(
    state: Candidates, table: SensitivityTable, constraints: Constraints
) -> Candidates:
    """Step 2: the global ``allowed`` filter, then each rule's ``allow`` and bit/sparsity bounds."""
    if constraints.allowed is not None:
        _filter_units(state, table, state.units, constraints.allowed, "constraints allowed")
    for k, rule in enumerate(constraints.rules):
        where = rule.source or f"constraints rules[{k}] (pattern {shown(rule.pattern)})"
        members = match_units(
            rule.pattern,
            state.units,
            f"constraints rules[{k}].pattern",
            _SELECTED,
            strict=constraints.strict or rule.source is not None,
            notes=state.notes,
        )
        _filter_units(
            state,
            table,
            members,
            rule.allow,
            where,
            min_bits=rule.min_bits,
            max_bits=rule.max_bits,
            max_sparsity=rule.max_sparsity,
        )
    return state


def apply_pins(state: Candidates, table: SensitivityTable, constraints: Constraints) -> Candidates:
    """Step 3: each pinned unit keeps only its pin, which must exist and survive the filters."""
    for k, rule in enumerate(constraints.rules):
        if rule.pin is None:
            continue
        members = match_units(
            rule.pattern,
            state.units,
            f"constraints rules[{k}].pattern",
            _SELECTED,
            strict=constraints.strict,
            notes=state.notes,
        )
        for name in members:
            if rule.pin not in table.losses[name]:
                raise InputError(
                    f"constraints rules[{k}].pin: option {rule.pin!r} is not in the table for unit "
                    f"{name!r} (it has {sorted(table.losses[name])}); pin one of those"
                )
            blocked = target_problem(constraints.target, rule.pin)
            if rule.pin not in state.allowed[name] and blocked:
                raise InputError(
                    f"constraints rules[{k}].pin: option {rule.pin!r} for unit {name!r} is not "
                    f"accepted by target {constraints.target!r}: {blocked}; pin an option the "
                    "target accepts, or choose another target (e.g. without '+vllm')"
                )
            if rule.pin not in state.allowed[name]:
                raise InputError(
                    f"constraints rules[{k}].pin: option {rule.pin!r} for unit {name!r} is ruled "
                    f"out by allowed/bounds (left: {state.allowed[name]}); drop the pin or the "
                    "conflicting rule"
                )
            state.allowed[name] = [rule.pin]
    return state


class _UnionFind:
    def __init__(self, names: list[str]) -> None:
        self.parent = {n: n for n in names}

    def find(self, name: str) -> str:
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, names: list[str]) -> None:
        roots = [self.find(n) for n in names]
        for root in roots[1:]:
            self.parent[root] = roots[0]


def tie_groups(
    table: SensitivityTable,
    constraints: Constraints,
    units: list[str],
    notes: list[str] | None = None,
) -> list[list[str]]:
    """Groups of units that must share one option (singletons included), in table order."""
    forest = _UnionFind(units)
    for g, group in enumerate(constraints.ties):
        members: list[str] = []
        for p, pattern in enumerate(group):
            where = f"constraints ties[{g}][{p}]"
            members += match_units(
                pattern, units, where, _SELECTED, strict=constraints.strict, notes=notes
            )
        if members:
            forest.union(members)
    unit_of = {u.name: u for u in table.units}
    for members in preset_groups([unit_of[name] for name in units], constraints.tie_presets):
        forest.union(members)
    grouped: dict[str, list[str]] = {}
    for name in units:
        grouped.setdefault(forest.find(name), []).append(name)
    return list(grouped.values())


def tie_units(state: Candidates, table: SensitivityTable, constraints: Constraints) -> Candidates:
    """Step 4: merge tied units; a group keeps the options every member allows."""
    state.groups = tie_groups(table, constraints, state.units, state.notes)
    for members in state.groups:
        if len(members) == 1:
            continue
        common = [
            k for k in state.allowed[members[0]] if all(k in state.allowed[m] for m in members)
        ]
        if not common:
            detail = "; ".join(f"{m} allows {state.allowed[m]}" for m in members[:4])
            fused = f" (target {constraints.target!r} fuses them)" if constraints.target else ""
            raise InputError(
                f"constraints ties{fused}: units {members[:4]} must share an option but have "
                f"none in common ({detail}); loosen their rules or untie them"
            )
        for m in members:
            state.allowed[m] = common
    merged = sum(len(g) for g in state.groups if len(g) > 1)
    if merged:
        state.notes.append(
            f"ties: {merged} units merged into {sum(len(g) > 1 for g in state.groups)} groups"
        )
    return state


def target_problem(target: str | None, key: str) -> str | None:
    """Why ``target`` refuses option ``key`` (None when it accepts it or there is no target)."""
    if target is None:
        return None
    from allocator.schema.targets import get_rules

    return get_rules(target).option_problem(Option.parse(key))


def _dominated(cols: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mask (N, K) of valid columns dominated by another valid column of the same row.

    ``cols`` is (N, K, D): cost, loss and resources. Column k dominates j when it is no worse in
    every coordinate and better in one, or equal in all and earlier (duplicates keep the first).
    """
    n, k = valid.shape
    out = np.zeros((n, k), dtype=bool)
    earlier = np.tri(k, k, -1, dtype=bool).T  # earlier[a, b]: a < b
    for start in range(0, n, 2048):
        block = cols[start : start + 2048]
        v = valid[start : start + 2048]
        le = (block[:, :, None, :] <= block[:, None, :, :]).all(-1)  # [r, a, b]: a <= b
        lt = (block[:, :, None, :] < block[:, None, :, :]).any(-1)
        dom = le & (lt | earlier[None]) & v[:, :, None] & v[:, None, :]
        out[start : start + 2048] = dom.any(axis=1) & v
    return out


def build_problem(
    state: Candidates, table: SensitivityTable, constraints: Constraints, *, drop_dominated: bool
) -> Reduction:
    """Steps 4-5 applied to arrays: sum members' cost/loss/resources, drop dominated options."""
    size = constraints.overhead
    names = [r.name for r in constraints.resources]
    check_resource_names(table, names)
    option_keys = [o.key for o in table.options]
    key_index = {k: i for i, k in enumerate(option_keys)}
    unit_of = {u.name: u for u in table.units}
    option_of = {o.key: o for o in table.options}
    n, width = len(state.groups), max(len(state.allowed[g[0]]) for g in state.groups)
    cols = np.zeros((n, width, 2 + len(names)))
    valid = np.zeros((n, width), dtype=bool)
    ids = np.zeros((n, width), dtype=np.int64)
    for row, members in enumerate(state.groups):
        keys = state.allowed[members[0]]
        for col, key in enumerate(keys):
            option = option_of[key]
            valid[row, col] = True
            ids[row, col] = key_index[key]
            for name in members:
                unit = unit_of[name]
                cols[row, col, 0] += size.cost_bits(option, unit)
                cols[row, col, 1] += table.losses[name][key]
                for r, res in enumerate(names):
                    cols[row, col, 2 + r] += resource_value(table, res, unit, option)
    columns = [list(state.allowed[g[0]]) for g in state.groups]
    notes = list(state.notes)
    if drop_dominated and constraints.max_distinct_options is None:
        dead = _dominated(cols, valid)
        if dead.any():
            notes.append(f"dominated options dropped: {int(dead.sum())}")
            alive = valid & ~dead
            order = np.argsort(~alive, axis=1, kind="stable")  # survivors first, in order
            keep = np.take_along_axis(alive, order, axis=1)
            cols = np.take_along_axis(cols, order[:, :, None], axis=1)
            ids = np.take_along_axis(ids, order, axis=1)
            columns = [[columns[r][j] for j in order[r] if alive[r, j]] for r in range(n)]
            width = int(keep.sum(axis=1).max())
            cols, ids, valid = cols[:, :width], ids[:, :width], keep[:, :width]
    total_numel = sum(unit_of[u].numel for u in state.units)
    problem = Problem(
        cost=cols[:, :, 0],
        loss=cols[:, :, 1],
        valid=valid,
        budget=constraints.budget.total_bits(total_numel),
        resources=np.moveaxis(cols[:, :, 2:], 2, 0) if names else None,
        resource_limits=np.array([r.max for r in constraints.resources]) if names else None,
        resource_names=names,
        option_ids=ids,
        max_distinct=constraints.max_distinct_options,
    )
    return Reduction(problem, state.groups, columns, state.units, option_keys, notes)


def reduce(
    table: SensitivityTable, constraints: Constraints, *, drop_dominated: bool = True
) -> Reduction:
    """Run the whole chain: table + constraints -> canonical Problem with its inverse map."""
    state = select_units(table, constraints)
    constraints = with_target(constraints, table, state.units)
    for step in (apply_filters, apply_pins, tie_units):
        state = step(state, table, constraints)
    return build_problem(state, table, constraints, drop_dominated=drop_dominated)
