"""Exporters: a plan as another quantizer's configuration, one module per target.

Each module registers its exporter in ``EXPORTERS`` (``@EXPORTERS.register("name")``); adding a
target is adding a file. ``export_plan`` checks the plan against the target's rules first
(``allocator.schema.targets``) and says exactly what does not fit.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping, Sequence
from typing import Any

from allocator.export.base import ExportContext, Exporter, ExportResult
from allocator.registry import Registry
from allocator.schema.plan import Plan
from allocator.schema.targets import constraints_for_target, get_rules, option_fits, size_model_for
from allocator.schema.unit import Unit

EXPORTERS: Registry[Exporter] = Registry("exporter")

_SHARED = {"base", "names", "rules"}


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SHARED and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def export_plan(
    plan: Plan | Mapping[str, Any],
    target: str,
    *,
    model_type: str = "llama",
    units: Sequence[Unit] | None = None,
    options: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Translate a plan (object or dict) into ``target``'s configuration.

    ``target`` is a name or alias (``allocator export --list``), optionally with a serving
    variant (``gptqmodel+vllm``) whose rules are checked too; ``units`` (with shapes) enable the
    size-dependent checks; ``options`` are target-specific settings (``desc_act`` for GPTQ
    targets). Raises UnsupportedError naming every unit that does not fit.
    """
    rules = get_rules(target)
    exporter = EXPORTERS.get(rules.name.partition("+")[0])
    plan = plan if isinstance(plan, Plan) else Plan.model_validate(dict(plan))
    context = ExportContext(model_type=model_type, units=units, rules=rules, options=options or {})
    return exporter(plan, context)


_import_all()

__all__ = [
    "EXPORTERS",
    "ExportContext",
    "ExportResult",
    "constraints_for_target",
    "export_plan",
    "option_fits",
    "size_model_for",
]
