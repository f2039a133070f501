"""Ordering allocator for rank-only scores, as the LWQ/LIM paper uses them (pure function).

Every unit starts at the ``high`` option; the least important units (lowest score; tied units
move together with their mean score) drop to ``low`` one group at a time until the model fits
the budget. The result keeps as many important units at ``high`` as the budget allows.
"""

from __future__ import annotations

from collections import defaultdict

from allocator.cost import DEFAULT_SIZE_MODEL, SizeModel
from allocator.errors import InfeasibleError
from allocator.schema.option import Option
from allocator.schema.unit import Unit


def order_allocate(
    scores: dict[str, float],
    units: list[Unit],
    low: Option,
    high: Option,
    budget_bits: float,
    size_model: SizeModel = DEFAULT_SIZE_MODEL,
) -> dict[str, str]:
    """Unit name -> option key under ``budget_bits`` total bits (low for the least important)."""
    groups: dict[str, list[Unit]] = defaultdict(list)
    for unit in units:
        groups[unit.tie or unit.name].append(unit)
    order = sorted(
        groups.values(),
        key=lambda members: (
            sum(scores.get(u.name, 0.0) for u in members) / len(members),
            members[0].name,
        ),
    )
    choice = {u.name: high.key for u in units}
    total = sum(size_model.cost_bits(high, u) for u in units)
    minimum = sum(size_model.cost_bits(low, u) for u in units)
    if minimum > budget_bits:
        raise InfeasibleError(
            f"budget {budget_bits:.0f} bits is below the all-{low.key} size {minimum:.0f} bits; "
            "raise the budget or choose a smaller low option",
            min_size_bits=minimum,
        )
    for members in order:
        if total <= budget_bits:
            break
        for unit in members:
            total += size_model.cost_bits(low, unit) - size_model.cost_bits(high, unit)
            choice[unit.name] = low.key
    return choice
