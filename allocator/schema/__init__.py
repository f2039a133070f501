"""Data model shared by every stage: options, units, tables, constraints, plans and the size model.

Every class here is a pydantic model whose constructors raise ``allocator.errors.SchemaError``
(an ``InputError``, so also an ``AllocatorError`` and a ``ValueError``) on invalid fields.
"""

from __future__ import annotations

from allocator.schema.constraints import Budget, Constraints, OptionFilter, ResourceLimit, UnitRule
from allocator.schema.option import Option
from allocator.schema.plan import Assignment, Plan
from allocator.schema.size import DEFAULT_SIZE_MODEL, SizeModel
from allocator.schema.table import OptionLike, Provenance, SensitivityTable
from allocator.schema.unit import Unit

__all__ = [
    "DEFAULT_SIZE_MODEL",
    "Assignment",
    "Budget",
    "Constraints",
    "Option",
    "OptionFilter",
    "OptionLike",
    "Plan",
    "Provenance",
    "ResourceLimit",
    "SensitivityTable",
    "SizeModel",
    "Unit",
    "UnitRule",
]
