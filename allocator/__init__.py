"""allocator: optimization-based bit allocation for compressing neural networks.

The public API is loaded on first use, so ``import allocator`` stays light (no torch, no solver):
``solve``, ``pareto``, ``check_plan``, ``load_table``, ``load_constraints``, ``load_plan``,
``save_plan``, ``save_table``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "solve": "allocator.solve.api",
    "check_plan": "allocator.solve.api",
    "pareto": "allocator.solve.pareto",
    "load_table": "allocator.schema.io",
    "load_constraints": "allocator.schema.io",
    "load_plan": "allocator.schema.io",
    "save_plan": "allocator.schema.io",
    "save_table": "allocator.schema.io",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name == "solve":  # the solver package itself is callable (see allocator/solve/__init__.py)
        return import_module("allocator.solve")
    if name in _LAZY:
        module = import_module(_LAZY[name])
        return getattr(module, "sweep" if name == "pareto" else name)
    raise AttributeError(f"module 'allocator' has no attribute {name!r}")
