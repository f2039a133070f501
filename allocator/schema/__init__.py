"""Data model shared by every stage: options, units, tables, constraints and plans."""

from allocator.schema.constraints import Budget, Constraints, OptionFilter, ResourceLimit, UnitRule
from allocator.schema.option import Option
from allocator.schema.plan import Assignment, Plan
from allocator.schema.table import Provenance, SensitivityTable
from allocator.schema.unit import Unit

__all__ = [
    "Assignment",
    "Budget",
    "Constraints",
    "Option",
    "OptionFilter",
    "Plan",
    "Provenance",
    "ResourceLimit",
    "SensitivityTable",
    "Unit",
    "UnitRule",
]
