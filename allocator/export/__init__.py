"""Exporters: a plan as another quantizer's configuration, one module per target.

Each module registers its exporter in ``EXPORTERS`` (``@EXPORTERS.register("name")``); adding a
target is adding a file. ``export_plan`` checks the plan against the target's rules first
(``allocator.schema.targets``) and says exactly what does not fit.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence

from allocator.export.base import ExportContext, Exporter, ExportResult
from allocator.registry import Registry
from allocator.schema.plan import Plan
from allocator.schema.targets import ALIASES, constraints_for_target, option_fits
from allocator.schema.unit import Unit

EXPORTERS: Registry[Exporter] = Registry("exporter")

_SHARED = {"base", "names", "rules"}


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SHARED and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def export_plan(
    plan: Plan, target: str, *, model_type: str = "llama", units: Sequence[Unit] | None = None
) -> ExportResult:
    """Translate a plan into ``target``'s configuration (raises UnsupportedError when it does not fit)."""
    exporter = EXPORTERS.get(ALIASES.get(target, target))
    return exporter(plan, ExportContext(model_type=model_type, units=units))


_import_all()

__all__ = [
    "EXPORTERS",
    "ExportContext",
    "ExportResult",
    "constraints_for_target",
    "export_plan",
    "option_fits",
]
