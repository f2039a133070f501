"""Data model shared by every stage: options, units, tables, constraints and plans.

Names are resolved lazily so that ``allocator.cost`` (which the constraints model uses) can
import ``allocator.schema.option`` without a circular import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Assignment": "allocator.schema.plan",
    "Budget": "allocator.schema.constraints",
    "Constraints": "allocator.schema.constraints",
    "Option": "allocator.schema.option",
    "OptionFilter": "allocator.schema.constraints",
    "Plan": "allocator.schema.plan",
    "Provenance": "allocator.schema.table",
    "ResourceLimit": "allocator.schema.constraints",
    "SensitivityTable": "allocator.schema.table",
    "Unit": "allocator.schema.unit",
    "UnitRule": "allocator.schema.constraints",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'allocator.schema' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
