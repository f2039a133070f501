"""Rule-based baseline allocators: uniform bits, the llama.cpp Q4_K_M rule, and LIM ordering.

Each rule returns ``{unit name: Option}`` whose total size (from ``Constraints.overhead``, the
project's only size model) fits the budget; ``plan_from_choice`` turns such a choice into a Plan.
Pure Python: no torch, no files. Rules respect the constraints' ties (``tie_presets`` and
``ties``) by moving tied units together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from allocator.errors import InfeasibleError, InputError
from allocator.patterns import compile_pattern
from allocator.schema.constraints import Constraints
from allocator.schema.option import Option
from allocator.schema.plan import Assignment, Plan
from allocator.schema.table import SensitivityTable
from allocator.schema.ties import preset_groups
from allocator.schema.unit import Unit

Choice = dict[str, Option]
PROMOTED_KINDS = ("v_proj", "down_proj")


def _budget_bits(units: Sequence[Unit], constraints: Constraints) -> float:
    return constraints.budget.total_bits(sum(u.numel for u in units))


def choice_cost_bits(units: Sequence[Unit], choice: Mapping[str, Option], c: Constraints) -> float:
    """Total bits of a choice under the constraints' size model (overhead included)."""
    return sum(c.overhead.cost_bits(choice[u.name], u) for u in units)


def tie_groups(units: Sequence[Unit], constraints: Constraints) -> list[list[Unit]]:
    """Units grouped so tied units (``tie_presets`` and explicit ``ties``) move together."""
    root = {u.name: u.name for u in units}

    def find(name: str) -> str:
        while root[name] != name:
            name = root[name]
        return name

    linked = preset_groups(units, constraints.tie_presets)
    for i, patterns in enumerate(constraints.ties):
        regexes = [compile_pattern(p, f"ties[{i}]") for p in patterns]
        members = [u.name for u in units if any(r.search(u.name) is not None for r in regexes)]
        if not members:
            raise InputError(f"ties[{i}] = {patterns}: matches no unit; check the patterns")
        linked.append(members)
    for members in linked:
        for name in members[1:]:
            root[find(name)] = find(members[0])
    groups: dict[str, list[Unit]] = {}
    for u in units:
        groups.setdefault(find(u.name), []).append(u)
    return list(groups.values())


def _plain_options(options: Iterable[Option]) -> list[Option]:
    """Dense quantized options (no sparsity, not fp16), deduplicated, in a stable order."""
    seen: dict[str, Option] = {}
    for o in options:
        if not o.is_fp16 and o.sparsity == 0:
            seen.setdefault(o.key, o)
    if not seen:
        raise InputError("options: no dense quantized option (e.g. 'b4-g128') to build a rule from")
    return list(seen.values())


def uniform_choice(
    units: Sequence[Unit], constraints: Constraints, options: Iterable[Option]
) -> Choice:
    """The largest single option for every unit that fits the budget (bits and group size chosen)."""
    budget = _budget_bits(units, constraints)
    best: tuple[float, Option] | None = None
    for option in _plain_options(options):
        cost = sum(constraints.overhead.cost_bits(option, u) for u in units)
        if cost <= budget * (1 + 1e-12) and (best is None or cost > best[0]):
            best = (cost, option)
    if best is None:
        raise InfeasibleError(
            f"budget {budget:.0f} bits: no uniform option fits; raise the budget or allow smaller options"
        )
    return {u.name: best[1] for u in units}


def _ladder(options: Iterable[Option], group_size: int | None, method: str) -> list[Option]:
    ladder = {
        o.bits: o
        for o in _plain_options(options)
        if o.group_size == group_size and o.method == method and not o.symmetric
    }
    if not ladder:
        raise InputError(
            f"options: none with group_size={group_size} and method={method!r}; add e.g. "
            f"'b4-g{group_size or 'c'}' or choose another group size"
        )
    return [ladder[b] for b in sorted(ladder)]


def llama_promoted(units: Sequence[Unit]) -> set[str]:
    """llama.cpp's ``use_more_bits``: v_proj/down_proj in the first and last eighth of the layers
    and in every third layer between."""
    layers = sorted({u.layer for u in units if u.layer is not None})
    n = len(layers)
    promoted = set()
    for u in units:
        if u.kind not in PROMOTED_KINDS or u.layer is None:
            continue
        i = layers.index(u.layer)
        if i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2:
            promoted.add(u.name)
    return promoted


def _fits(units: Sequence[Unit], choice: Choice, c: Constraints, budget: float) -> bool:
    return choice_cost_bits(units, choice, c) <= budget * (1 + 1e-12)


def _upgrade_in_order(
    units: Sequence[Unit],
    choice: Choice,
    order: Sequence[list[Unit]],
    ladder: list[Option],
    constraints: Constraints,
    *,
    max_steps: int,
) -> None:
    """Raise each group one ladder step at a time, in order, while the budget allows (in place)."""
    budget = _budget_bits(units, constraints)
    index = {o.key: i for i, o in enumerate(ladder)}
    used = choice_cost_bits(units, choice, constraints)
    for _ in range(max_steps):
        changed = False
        for group in order:
            i = index[choice[group[0].name].key]
            if i + 1 >= len(ladder):
                continue
            up = ladder[i + 1]
            delta = sum(
                constraints.overhead.cost_bits(up, u)
                - constraints.overhead.cost_bits(choice[u.name], u)
                for u in group
            )
            if used + delta <= budget * (1 + 1e-12):
                for u in group:
                    choice[u.name] = up
                used += delta
                changed = True
        if not changed:
            return


def llama_rule_choice(
    units: Sequence[Unit],
    constraints: Constraints,
    options: Iterable[Option],
    *,
    group_size: int | None = 128,
    method: str = "rtn",
) -> Choice:
    """Q4_K_M-style rule scaled to the budget.

    Base bits b for every unit and b+2 (else b+1) for the promoted v_proj/down_proj, with the
    highest b that fits; then fill the leftover budget one step at a time: promoted units first,
    then the other v_proj/down_proj, then every other unit, each in layer order.
    """
    ladder = _ladder(options, group_size, method)
    budget = _budget_bits(units, constraints)
    groups = tie_groups(units, constraints)
    promoted_names = llama_promoted(units)
    promoted = [g for g in groups if any(u.name in promoted_names for u in g)]
    for base in range(len(ladder) - 1, -1, -1):
        for delta in (2, 1, 0):
            top = ladder[min(base + delta, len(ladder) - 1)]
            choice = {u.name: ladder[base] for u in units}
            for g in promoted:
                choice.update({u.name: top for u in g})
            if _fits(units, choice, constraints, budget):
                kinds = [g for g in groups if g not in promoted and g[0].kind in PROMOTED_KINDS]
                rest = [g for g in groups if g not in promoted and g[0].kind not in PROMOTED_KINDS]
                before = None
                while before != choice:
                    before = dict(choice)
                    for order in (promoted, kinds, rest):
                        _upgrade_in_order(units, choice, order, ladder, constraints, max_steps=1)
                return choice
    raise InfeasibleError(
        f"budget {budget:.0f} bits: even {ladder[0].key} everywhere does not fit; raise the budget"
    )


def lim_choice(
    units: Sequence[Unit],
    constraints: Constraints,
    options: Iterable[Option],
    layer_scores: Mapping[int, float],
    *,
    group_size: int | None = 128,
    method: str = "rtn",
) -> Choice:
    """Layer-Wise Quantization ordering: every unit at the lowest ladder bits b_hi whose uniform
    size exceeds the budget, then whole layers moved to the next lower bits, least important
    layer (lowest LIM score) first, until the plan fits; units outside layers stay at b_hi.
    """
    ladder = _ladder(options, group_size, method)
    budget = _budget_bits(units, constraints)
    missing = sorted({u.layer for u in units if u.layer is not None} - set(layer_scores))
    if missing:
        raise InputError(f"layer_scores: no LIM score for layers {missing[:5]}; score every layer")
    uniform = [sum(constraints.overhead.cost_bits(o, u) for u in units) for o in ladder]
    if uniform[0] > budget * (1 + 1e-12):
        raise InfeasibleError(
            f"budget {budget:.0f} bits: even {ladder[0].key} everywhere does not fit; raise the budget"
        )
    hi = next((i for i, cost in enumerate(uniform) if cost > budget * (1 + 1e-12)), None)
    if hi is None:
        return {u.name: ladder[-1] for u in units}
    choice = {u.name: ladder[hi] for u in units}
    for layer in sorted(layer_scores, key=lambda k: (layer_scores[k], k)):
        if _fits(units, choice, constraints, budget):
            break
        for u in units:
            if u.layer == layer:
                choice[u.name] = ladder[hi - 1]
    return choice


def plan_from_choice(
    units: Sequence[Unit],
    choice: Mapping[str, Option],
    constraints: Constraints,
    *,
    solver: str,
    table: SensitivityTable | None = None,
    seconds: float = 0.0,
    notes: Sequence[str] = (),
) -> Plan:
    """A Plan (status ``heuristic``) for a unit -> Option choice; predicted losses come from the
    table when it lists the option, else 0 with a note."""
    missing = [u.name for u in units if u.name not in choice]
    if missing:
        raise InputError(f"choice: no option for units {missing[:5]}; give every unit one")
    assignments = []
    unknown = 0
    for u in units:
        option = choice[u.name]
        loss = 0.0
        if table is not None and option.key in table.losses.get(u.name, {}):
            loss = table.losses[u.name][option.key]
        else:
            unknown += 1
        assignments.append(
            Assignment(
                unit=u.name,
                option=option,
                numel=u.numel,
                cost_bits=constraints.overhead.cost_bits(option, u),
                predicted_loss=loss,
            )
        )
    extra = (
        [f"{unknown} units have no table loss for their option (counted as 0)"] if unknown else []
    )
    return Plan.from_assignments(
        assignments,
        budget_bits=_budget_bits(units, constraints),
        solver=solver,
        status="heuristic",
        solve_seconds=seconds,
        table_hash=None if table is None else table.content_hash(),
        constraints_hash=constraints.content_hash(),
        notes=[*notes, *extra],
    )
