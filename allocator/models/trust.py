"""What a checkpoint or model folder may name: known dtypes, known classes, safetensors weights.

Checkpoint metadata is data from a file; it never selects an arbitrary attribute of torch or
transformers, and a model folder without safetensors weights (pickled ``.bin`` files, which run
code when loaded) is refused unless the user opts in with ``ALLOCATOR_ALLOW_PICKLE=1``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from allocator.errors import InputError

DTYPES = ("float32", "float16", "bfloat16", "float64")


def dtype_named(name: Any, *, where: str) -> Any:
    """The torch dtype called ``name`` (only the floating types a checkpoint may hold)."""
    import torch

    if name not in DTYPES:
        raise InputError(
            f"{where}: dtype {str(name)[:40]!r} is not one of {', '.join(DTYPES)}; the checkpoint "
            "metadata is damaged or not allocator's"
        )
    return getattr(torch, name)


def model_class_named(name: Any, *, where: str) -> Any:
    """A transformers model class by name (a PreTrainedModel subclass), or None when unnamed."""
    if not name:
        return None
    import transformers

    cls = getattr(transformers, str(name), None) if str(name).isidentifier() else None
    base = getattr(transformers, "PreTrainedModel", None)
    if cls is None or not isinstance(cls, type) or base is None or not issubclass(cls, base):
        raise InputError(
            f"{where}: model class {str(name)[:60]!r} is not a transformers model class; the "
            "checkpoint metadata is damaged or not allocator's"
        )
    return cls


def require_safetensors(folder: Path) -> None:
    """Refuse folders whose weights are only pickled files (opt in: ALLOCATOR_ALLOW_PICKLE=1)."""
    if any(folder.glob("*.safetensors")) or os.environ.get("ALLOCATOR_ALLOW_PICKLE") == "1":
        return
    pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
    if pickled:
        raise InputError(
            f"--model {folder}: weights only as pickle files ({', '.join(pickled[:3])}), which run "
            "code when loaded; convert them to safetensors or set ALLOCATOR_ALLOW_PICKLE=1 if you "
            "trust the folder"
        )
