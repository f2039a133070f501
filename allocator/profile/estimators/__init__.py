"""Sensitivity estimators, one module each, registered by name in ``ESTIMATORS``.

An estimator maps a ProfileContext to ``losses[unit][option_key]`` (a loss-scale prediction) or,
for rank-only importance scores (``kind="score"``), to ``scores[unit]`` that ``combine`` turns
into a table. Adding an estimator is adding one module here; its ``Estimator`` entry carries
what the CLI (``allocator estimators``, ``profile --help``), the API and the tests read: its
description, whether it needs gradients, the model tasks it works for, its default token budget.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from allocator.registry import Registry

DEFAULT_ESTIMATOR = "fisher"  # the one default of allocator profile, allocator run and the API
TASKS = ("causal_lm", "embedding")


@dataclass(frozen=True)
class Estimator:
    """``run(ctx)`` returns losses (kind "loss") or per-unit scores (kind "score").

    ``windows`` x ``seq_len`` is the default token budget; ``journaled`` estimators persist unit
    by unit and resume; ``checkpointed`` ones save their running sums beside the journal;
    ``needs_gradients``: backward passes through the model (memory and time of training);
    ``tasks``: the model kinds it works on (``causal_lm`` only: it reads next-token losses or
    logits); ``doc`` is the one-line description.
    """

    name: str
    run: Callable[[Any], Any]
    kind: Literal["loss", "score"] = "loss"
    windows: int = 64
    seq_len: int = 512
    journaled: bool = False
    checkpointed: bool = False
    doc: str = ""
    needs_gradients: bool = False
    tasks: tuple[str, ...] = TASKS

    @property
    def description(self) -> str:
        return self.doc


ESTIMATORS: Registry[Estimator] = Registry("estimator")


def register(estimator: Estimator) -> Estimator:
    ESTIMATORS.register(estimator.name)(estimator)
    return estimator


def load_all() -> None:
    """Import every estimator module (idempotent)."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def estimators_for(task: str) -> list[str]:
    """Names of the registered estimators that work on models of ``task``."""
    load_all()
    return [n for n in ESTIMATORS.names() if task in ESTIMATORS.get(n).tasks]


def estimator_table() -> list[dict[str, Any]]:
    """Every registered estimator with its metadata (for ``allocator estimators``)."""
    load_all()
    rows = []
    for name in ESTIMATORS.names():
        spec = ESTIMATORS.get(name)
        rows.append(
            {
                "name": name,
                "description": spec.description,
                "kind": spec.kind,
                "needs_gradients": spec.needs_gradients,
                "tasks": list(spec.tasks),
                "windows": spec.windows,
                "seq_len": spec.seq_len,
                "resumable": spec.journaled or spec.checkpointed,
                "default": name == DEFAULT_ESTIMATOR,
            }
        )
    return rows
