"""A journal of sequential (GPTQ-style) apply: each finished block's compressed units on disk.

``apply_plan(..., journal=DIR)`` writes ``DIR/block-NNNN.safetensors`` after compressing a
block: every unit's packed buffers (QuantLinear) or fp16-rounded weight, with the layouts and
the job's identity (plan, method, calibration windows) in the file's metadata. A rerun with the
same identity restores those blocks instead of collecting statistics and compressing again
(it still runs each restored block forward, so the next block sees the compressed model's
activations), so a killed apply loses at most the block it was working on. Files of another
identity are an error that says what to do; each file is written atomically.

``open_apply_journal`` is the ``allocator apply --journal/--resume`` convention, the one
``allocator profile`` follows: an existing journal is continued only with ``resume``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from allocator.errors import InputError
from allocator.schema.io import atomic_write_bytes

FORMAT = "allocator-apply-journal/1"


class ApplyJournal:
    """Finished blocks of one apply job (``identity``: a hash of what the blocks depend on)."""

    def __init__(
        self, folder: str | os.PathLike[str], identity: str, *, discard_other: bool = False
    ) -> None:
        """``discard_other``: a journal of another identity in ``folder`` is deleted (callers
        that hash their inputs, like ``run``) instead of being an error on first use."""
        self.folder = Path(folder)
        self.identity = identity
        marker = self.folder / "identity"
        if self.folder.is_dir() and any(self.folder.iterdir()):
            known = marker.read_text().strip() if marker.is_file() else None
            if known != identity:
                if not discard_other:
                    raise InputError(
                        f"{self.folder}: journal of another apply job (other plan, method or "
                        f"calibration windows); delete {self.folder} to start over"
                    )
                self.discard()
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(marker, identity.encode())

    def _path(self, index: int) -> Path:
        return self.folder / f"block-{index:04d}.safetensors"

    def restore(self, index: int, model: nn.Module, names: list[str]) -> bool:
        """Put block ``index``'s journaled units into ``model``; False when it is not journaled."""
        from safetensors import safe_open

        from allocator.quant.quant_linear import QuantLinear

        path = self._path(index)
        if not path.is_file():
            return False
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("identity") != self.identity:
                raise InputError(
                    f"{path}: journal of another apply job (other plan, method or calibration "
                    f"windows); delete {self.folder} to start over"
                )
            units = json.loads(meta["units"])
            if sorted(units) != sorted(names):
                raise InputError(f"{path}: journaled units {sorted(units)[:3]} do not match the "
                                 f"plan's {sorted(names)[:3]}; delete {self.folder}")  # fmt: skip
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        for name, layout in units.items():
            prefix = f"{name}."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            target = model.get_submodule(name)
            if layout is None:  # fp16 unit: an nn.Linear whose weight was rounded
                with torch.no_grad():
                    target.weight.copy_(state["weight"].to(target.weight.dtype))
                continue
            module = QuantLinear(layout)
            module.load_state_dict(state, strict=True)
            parent, _, child = name.rpartition(".")
            device = next((t.device for t in target.parameters()), torch.device("cpu"))
            setattr(model.get_submodule(parent) if parent else model, child, module.to(device))
        return True

    def save(self, index: int, model: nn.Module, names: list[str]) -> None:
        """Journal block ``index``'s compressed units (atomic)."""
        from safetensors.torch import save

        from allocator.quant.quant_linear import QuantLinear

        units: dict[str, object] = {}
        tensors: dict[str, torch.Tensor] = {}
        for name in names:
            module = model.get_submodule(name)
            if isinstance(module, QuantLinear):
                units[name] = module.layout()
                state = module.state_dict()
            else:
                units[name] = None
                state = {"weight": module.weight}
            for key, value in state.items():
                tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
        meta = {"format": FORMAT, "identity": self.identity, "units": json.dumps(units)}
        atomic_write_bytes(self._path(index), save(tensors, metadata=meta))

    def discard(self) -> None:
        """Remove the journal (after the compressed model is saved)."""
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


def apply_identity(*parts: object) -> str:
    """The identity of an apply job: a hash of what its compressed blocks depend on (the
    ``APPLY_REVISION`` included: a journal of older code is not resumed)."""
    import hashlib

    from allocator.quant import APPLY_REVISION

    text = json.dumps([str(part) for part in (*parts, APPLY_REVISION)], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def open_apply_journal(
    folder: str | os.PathLike[str], identity: str, *, resume: bool
) -> ApplyJournal:
    """The journal of ``allocator apply``: a folder holding finished blocks is continued with
    ``resume`` (another job's is refused), and without it is an error, never reused silently
    (a folder without blocks holds nothing to lose and is started over)."""
    path = Path(folder)
    if resume:
        return ApplyJournal(path, identity)
    if path.is_dir() and any(path.glob("block-*.safetensors")):
        raise InputError(
            f"{path}: a journal of an earlier apply exists; pass --resume to continue it (or "
            "delete it to start over)"
        )
    return ApplyJournal(path, identity, discard_other=True)
