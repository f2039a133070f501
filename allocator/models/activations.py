"""Hidden states cached between blocks, in memory (a list) or in files (``--offload-activations``).

Block-by-block work keeps the hidden state entering a block for every calibration batch
(``BlockInputs.hidden``); the measured tables keep them for every block. When they do not fit
in memory, an offloaded model loaded with ``offload_activations=DIR`` stores them as one
safetensors file per batch under DIR (``DiskTensors``): appending writes the file, indexing
reads it back (positioned reads, nothing stays mapped), so memory holds the batches in use.
Each list gets its own folder, deleted with the list.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from allocator.models.tensorfile import Entry, TensorFiles, read_header


def _cleanup(folder: str, files: TensorFiles) -> None:
    files.close()
    shutil.rmtree(folder, ignore_errors=True)


class DiskTensors:
    """A list of tensors kept in files under ``root`` (append, index, iterate, len)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="hidden-", dir=self.root))
        self._files = TensorFiles()
        self._entries: list[Entry] = []
        self._devices: list[torch.device] = []
        self._writes = 0
        weakref.finalize(self, _cleanup, str(self.folder), self._files)

    def _write(self, tensor: torch.Tensor) -> Entry:
        from safetensors.torch import save_file

        path = self.folder / f"{self._writes:06d}.safetensors"
        self._writes += 1
        save_file({"t": tensor.detach().contiguous().cpu()}, str(path))
        return read_header(path)["t"]

    def append(self, tensor: torch.Tensor) -> None:
        self._entries.append(self._write(tensor))
        self._devices.append(tensor.device)

    def __setitem__(self, index: int, tensor: torch.Tensor) -> None:
        old = self._entries[index]
        self._entries[index] = self._write(tensor)
        self._devices[index] = tensor.device
        Path(old.path).unlink(missing_ok=True)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._files.read(self._entries[index]).to(self._devices[index])

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for index in range(len(self._entries)):
            yield self[index]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [entry.shape for entry in self._entries]


def hidden_list(model: Any) -> list[torch.Tensor] | DiskTensors:
    """An empty list for a model's cached hidden states (files for ``--offload-activations``)."""
    from allocator.models.offload import runtime_of

    runtime = runtime_of(model)
    if runtime is not None and runtime.activations is not None:
        return DiskTensors(runtime.activations)
    return []


def like(hidden: Any) -> list[torch.Tensor] | DiskTensors:
    """An empty list kept where ``hidden`` is kept (memory or files)."""
    return DiskTensors(hidden.root) if isinstance(hidden, DiskTensors) else []


def n_tokens(hidden: Any) -> int:
    """Tokens of cached hidden states (B, L, d) per batch, without reading files back."""
    shapes = hidden.shapes if isinstance(hidden, DiskTensors) else [h.shape for h in hidden]
    return sum(int(s[0]) * int(s[1]) for s in shapes)
