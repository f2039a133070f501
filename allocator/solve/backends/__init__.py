"""Solver backends. Every module in this folder registers itself in ``BACKENDS`` on import, so
adding a backend is adding one file."""

from __future__ import annotations

import importlib
import pkgutil


def load_all() -> None:
    """Import every backend module (idempotent)."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
