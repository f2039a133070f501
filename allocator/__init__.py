"""allocator: optimization-based bit allocation for compressing neural networks.

The public Python API, typed (``py.typed`` ships) and free of torch:

- schema classes: ``SensitivityTable`` (``SensitivityTable.from_losses``), ``Option``, ``Unit``,
  ``Constraints``, ``Budget``, ``UnitRule``, ``OptionFilter``, ``ResourceLimit``, ``Plan``,
  ``Assignment``, ``Provenance``, and the size model ``SizeModel``;
- ``solve``, ``pareto``, ``check_plan``, ``export_plan``, ``size_model_for`` (a target's size
  model), ``load_table``/``load_constraints``/``load_plan``, ``save_table``/``save_plan``;
- errors: every error a user can cause is an ``AllocatorError`` (``InputError``, ``SchemaError``,
  ``InfeasibleError``, ``UnsupportedError``, ``PlanCheckError``); ``InputError`` is also a
  ``ValueError``.

Objects and plain dicts are accepted wherever a schema object is, file paths where a file is.
The distribution is ``llm-bit-allocator``; the import package is ``allocator``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from allocator.errors import (
    AllocatorError,
    AllocatorWarning,
    InfeasibleError,
    InputError,
    PlanCheckError,
    SchemaError,
    UnsupportedError,
)
from allocator.export import ExportResult, export_plan, size_model_for
from allocator.schema import (
    DEFAULT_SIZE_MODEL,
    Assignment,
    Budget,
    Constraints,
    Option,
    OptionFilter,
    OptionLike,
    Plan,
    Provenance,
    ResourceLimit,
    SensitivityTable,
    SizeModel,
    Unit,
    UnitRule,
)
from allocator.schema.io import load_constraints, load_plan, load_table, save_plan, save_table
from allocator.solve.api import check_plan, solve
from allocator.solve.pareto import ParetoPoint, pareto

__all__ = [
    "DEFAULT_SIZE_MODEL",
    "AllocatorError",
    "AllocatorWarning",
    "Assignment",
    "Budget",
    "Constraints",
    "ExportResult",
    "InfeasibleError",
    "InputError",
    "Option",
    "OptionFilter",
    "OptionLike",
    "ParetoPoint",
    "Plan",
    "PlanCheckError",
    "Provenance",
    "ResourceLimit",
    "SchemaError",
    "SensitivityTable",
    "SizeModel",
    "Unit",
    "UnitRule",
    "UnsupportedError",
    "__version__",
    "check_plan",
    "export_plan",
    "load_constraints",
    "load_plan",
    "load_table",
    "pareto",
    "save_plan",
    "save_table",
    "size_model_for",
    "solve",
]
