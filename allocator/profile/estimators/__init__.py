"""Sensitivity estimators, one module each, registered by name in ``ESTIMATORS``.

An estimator maps a ProfileContext to ``losses[unit][option_key]`` (a loss-scale prediction) or,
for rank-only importance scores (``kind="score"``), to ``scores[unit]`` that ``combine`` turns
into a table. Adding an estimator is adding one module here.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from allocator.registry import Registry


@dataclass(frozen=True)
class Estimator:
    """``run(ctx)`` returns losses (kind "loss") or per-unit scores (kind "score").

    ``windows`` x ``seq_len`` is the default token budget; ``journaled`` estimators persist unit
    by unit and resume; ``checkpointed`` ones save their running sums beside the journal.
    """

    name: str
    run: Callable[[Any], Any]
    kind: Literal["loss", "score"] = "loss"
    windows: int = 64
    seq_len: int = 512
    journaled: bool = False
    checkpointed: bool = False
    doc: str = ""


ESTIMATORS: Registry[Estimator] = Registry("estimator")


def register(estimator: Estimator) -> Estimator:
    ESTIMATORS.register(estimator.name)(estimator)
    return estimator


def load_all() -> None:
    """Import every estimator module (idempotent)."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
