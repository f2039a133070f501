"""Extra resource values per (unit, option): from the table, or a built-in formula.

Built-in: ``bops`` = bits x 16-bit activations x MACs per token = ``bits * 16 * numel``.
"""

from __future__ import annotations

from collections.abc import Callable

from allocator.errors import InputError
from allocator.schema.option import Option
from allocator.schema.table import SensitivityTable
from allocator.schema.unit import Unit

BUILTIN_RESOURCES: dict[str, Callable[[Option, Unit], float]] = {
    "bops": lambda option, unit: float(option.bits * 16 * unit.numel),
}


def resource_value(table: SensitivityTable, name: str, unit: Unit, option: Option) -> float:
    """The value of resource ``name`` for ``unit`` under ``option``.

    Raises InputError when the resource is unknown or the table lacks the (unit, option) value.
    """
    if name in table.resources:
        row = table.resources[name].get(unit.name, {})
        if option.key not in row:
            raise InputError(
                f"table resources[{name!r}] has no value for unit {unit.name!r} option "
                f"{option.key!r}; add it to the table or disallow that option for the unit"
            )
        return float(row[option.key])
    if name in BUILTIN_RESOURCES:
        return BUILTIN_RESOURCES[name](option, unit)
    known = sorted(set(table.resources) | set(BUILTIN_RESOURCES))
    raise InputError(
        f"constraints resources: unknown resource {name!r}; use one the table defines or a "
        f"built-in: {', '.join(known)}"
    )


def check_resource_names(table: SensitivityTable, names: list[str]) -> None:
    """Every limited resource must be known and limited once."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputError(
                f"constraints resources: {name!r} is limited twice; keep one limit per resource"
            )
        seen.add(name)
        if name not in table.resources and name not in BUILTIN_RESOURCES:
            known = sorted(set(table.resources) | set(BUILTIN_RESOURCES))
            raise InputError(
                f"constraints resources: unknown resource {name!r}; use one the table defines or "
                f"a built-in: {', '.join(known)}"
            )
