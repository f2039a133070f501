"""llama.cpp importance matrices as per-column activation weights ``{hf_module: np.ndarray}``.

Two file formats:

- GGUF (llama.cpp since mid-2025): tensors ``<tensor>.in_sum2`` (sum of squared inputs per column,
  shape ``(n_mat, in_features)``) and ``<tensor>.counts`` (rows seen, shape ``(n_mat, 1)``), where
  ``<tensor>`` is a GGUF weight name such as ``blk.3.attn_q.weight`` and ``n_mat`` is 1 for dense
  layers or the expert count. The weight is ``in_sum2 / counts`` (1 where nothing was seen, as
  llama-quantize does).
- legacy ``.dat``: int32 entry count; per entry int32 name length, name, int32 ``ncall``, int32
  ``nval``, ``nval`` float32 values (already divided by the token count and multiplied by
  ``ncall``); then optionally int32 chunk count, int32 dataset-name length and the name. The
  weight is ``values / ncall``.

Either way the result is the mean of ``x_j^2`` over calibration tokens for input column ``j``: the
diagonal of ``E[x x^T]``, i.e. a diagonal Hessian proxy for ``||(W - W_q) x||^2``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from allocator.errors import InputError
from allocator.models.gguf_names import gguf_to_hf
from allocator.schema.unit import Unit


@dataclass
class Imatrix:
    """Per-column weights by Hugging Face module name; ``unmapped`` keeps GGUF-named extras."""

    weights: dict[str, np.ndarray]
    unmapped: dict[str, np.ndarray] = field(default_factory=dict)
    chunk_count: int | None = None
    datasets: list[str] = field(default_factory=list)
    source_format: str = "gguf"

    def for_units(self, units: Iterable[Unit]) -> dict[str, np.ndarray]:
        """Weights of the given units, checked against their input size.

        Raises InputError naming the unit when the imatrix has no entry for it or when its
        length differs from the unit's ``in_features`` (an imatrix of another model).
        """
        out = {}
        for unit in units:
            values = self.weights.get(unit.name)
            if values is None:
                raise InputError(
                    f"imatrix has no entry for unit {unit.name!r}; was it computed on this model?"
                )
            if unit.in_features is not None and values.shape[-1] != unit.in_features:
                raise InputError(
                    f"imatrix entry for {unit.name!r} has {values.shape[-1]} columns but the unit "
                    f"has {unit.in_features} inputs; the imatrix belongs to another model"
                )
            out[unit.name] = values
        return out


def read_imatrix(path: str | os.PathLike[str], model_type: str = "llama") -> Imatrix:
    """Read a GGUF or legacy ``.dat`` imatrix; dense layers give 1-D arrays of ``in_features``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such imatrix file; check the path")
    with p.open("rb") as handle:
        magic = handle.read(4)
    raw, chunks, datasets, fmt = _read_gguf(p) if magic == b"GGUF" else (*_read_legacy(p), "legacy")
    result = Imatrix(weights={}, chunk_count=chunks, datasets=datasets, source_format=fmt)
    for tensor, values in raw.items():
        hf = gguf_to_hf(tensor, model_type)
        target = result.weights if hf is not None else result.unmapped
        target[hf or tensor] = values[0] if values.shape[0] == 1 else values
    return result


def _read_gguf(path: Path) -> tuple[dict[str, np.ndarray], int | None, list[str], str]:
    try:
        from gguf import GGUFReader
    except ImportError as exc:  # pragma: no cover - gguf is a declared dependency
        raise InputError("reading GGUF imatrix files needs the 'gguf' package") from exc
    reader = GGUFReader(path)
    tensors = {t.name: np.asarray(t.data, dtype=np.float64) for t in reader.tensors}
    raw: dict[str, np.ndarray] = {}
    for name, sums in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name.removesuffix(".in_sum2")
        if base + ".counts" not in tensors:
            raise InputError(f"{path}: tensor {name} has no matching {base}.counts")
        counts = tensors[base + ".counts"].reshape(-1)
        sums2d = sums.reshape(counts.size, -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(counts[:, None] > 0, sums2d / counts[:, None], 1.0)
        raw[base] = mean
    if not raw:
        raise InputError(
            f"{path}: GGUF file holds no '<tensor>.in_sum2' entries; is it an imatrix?"
        )
    chunks = _field(reader, "imatrix.chunk_count")
    datasets = _field(reader, "imatrix.datasets") or []
    return (
        raw,
        None if chunks is None else int(chunks),
        list(datasets) if isinstance(datasets, list) else [str(datasets)],
        "gguf",
    )


def _field(reader: Any, key: str) -> Any:
    entry = reader.fields.get(key)
    if entry is None:
        return None
    try:
        return entry.contents()
    except Exception:  # older gguf versions: decode by hand
        parts = [entry.parts[i] for i in entry.data]
        return parts[0][0] if len(parts) == 1 else [bytes(p).decode() for p in parts]


def _read_legacy(path: Path) -> tuple[dict[str, np.ndarray], int | None, list[str]]:
    data = path.read_bytes()
    offset = 0

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal offset
        size = struct.calcsize(fmt)
        if offset + size > len(data):
            raise InputError(f"{path}: truncated legacy imatrix at byte {offset}")
        values = struct.unpack_from(fmt, data, offset)
        offset += size
        return values

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise InputError(f"{path}: legacy imatrix declares {n_entries} entries; expected >= 1")
    raw: dict[str, np.ndarray] = {}
    for _ in range(n_entries):
        (length,) = take("<i")
        name = take(f"<{length}s")[0].decode()
        ncall, nval = take("<ii")
        if nval < 1:
            raise InputError(f"{path}: entry {name!r} has nval={nval}")
        values = np.asarray(take(f"<{nval}f"), dtype=np.float64)
        raw[name] = (values / ncall if ncall > 0 else values)[None, :]
    chunks, datasets = None, []
    if offset + 4 <= len(data):
        (chunks,) = take("<i")
        if offset + 4 <= len(data):
            (length,) = take("<i")
            if length > 0:
                datasets = [take(f"<{length}s")[0].decode()]
    return raw, chunks, datasets
