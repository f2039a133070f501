"""safetensors files read tensor by tensor and written tensor by tensor.

``TensorFiles`` reads single tensors with positioned reads (``os.pread``) at the offsets the
file's header gives: no page of the file is mapped into the process, so resident memory is the
tensors in use, not the part of the file touched so far (a memory-mapped read, like
``safe_open``, keeps every touched page in the process's RSS until the file is closed).

``write_safetensors`` writes a file from tensors that are produced one at a time (``LazyTensor``:
a dtype, a shape and a function returning the tensor), so a file larger than memory can be
written. Its bytes are exactly those of ``safetensors.torch.save_file`` for the same tensors:
the header lists tensors by dtype (the safetensors enum order, largest first), then by name,
and is padded with spaces to a multiple of 8 bytes (``tests/offload`` checks this).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# safetensors' Dtype enum order (the header sorts tensors by it, descending)
_DTYPE_ORDER = (
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16",
    "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64",
)  # fmt: skip
_TO_NAME = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
    torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32", torch.float32: "F32",
    torch.float64: "F64", torch.int64: "I64",
}  # fmt: skip
_FROM_NAME = {v: k for k, v in _TO_NAME.items()}
for _name, _attr in (("F8_E5M2", "float8_e5m2"), ("F8_E4M3", "float8_e4m3fn"),
                     ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):  # fmt: skip
    if hasattr(torch, _attr):
        _TO_NAME[getattr(torch, _attr)] = _name
        _FROM_NAME[_name] = getattr(torch, _attr)


@dataclass(frozen=True)
class Entry:
    """Where one tensor lies in a safetensors file."""

    path: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def read_header(path: str | os.PathLike[str]) -> dict[str, Entry]:
    """Name -> Entry of every tensor in a safetensors file (reads only the header)."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    base = 8 + length
    out: dict[str, Entry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _FROM_NAME.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, not readable here")
        begin, stop = info["data_offsets"]
        out[name] = Entry(str(path), dtype, tuple(info["shape"]), base + begin, base + stop)
    return out


class TensorFiles:
    """Open safetensors files; ``read(entry)`` returns one tensor (a fresh CPU copy)."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self.bytes_read = 0

    def _fd(self, path: str) -> int:
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                fd = os.open(path, os.O_RDONLY)
                self._fds[path] = fd
            return fd

    def read(self, entry: Entry) -> torch.Tensor:
        size = entry.end - entry.start
        buffer = torch.empty(size, dtype=torch.uint8)
        view = buffer.numpy().data  # a writable memoryview of the tensor's bytes
        fd, done = self._fd(entry.path), 0
        while done < size:
            got = os.preadv(fd, [view[done:]], entry.start + done)
            if got <= 0:
                raise OSError(f"{entry.path}: file ends before tensor bytes {entry.start}..")
            done += got
        self.bytes_read += size
        if size == 0:
            return torch.empty(entry.shape, dtype=entry.dtype)
        return buffer.view(entry.dtype).reshape(entry.shape)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def read_tensor(path: str | os.PathLike[str], name: str) -> torch.Tensor:
    """One tensor of a safetensors file, read without mapping the file."""
    files = TensorFiles()
    try:
        return files.read(read_header(path)[name])
    finally:
        files.close()


@dataclass
class LazyTensor:
    """A tensor to be produced when written: dtype and shape now, ``load()`` later."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    load: Callable[[], torch.Tensor]

    def numel(self) -> int:
        n = 1
        for size in self.shape:
            n *= int(size)
        return n

    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def contiguous(self) -> LazyTensor:
        return self


def _spec(value: torch.Tensor | LazyTensor) -> tuple[torch.dtype, tuple[int, ...]]:
    return value.dtype, tuple(int(s) for s in value.shape)


def _bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().contiguous().cpu().reshape(-1)
    return flat.view(torch.uint8).numpy().data if flat.numel() else memoryview(b"")


def write_safetensors(
    tensors: dict[str, torch.Tensor | LazyTensor], path: str | os.PathLike[str]
) -> None:
    """Write ``tensors`` as a safetensors file, loading each LazyTensor only when it is written.

    The bytes equal ``safetensors.torch.save_file(tensors, path)`` for the same tensors.
    """
    specs = {name: _spec(value) for name, value in tensors.items()}
    rank = {name: i for i, name in enumerate(_DTYPE_ORDER)}

    def key(name: str) -> tuple[int, str]:
        return (-rank[_TO_NAME[specs[name][0]]], name)

    order = sorted(specs, key=key)
    header: dict[str, object] = {}
    offset = 0
    for name in order:
        dtype, shape = specs[name]
        n = 1
        for s in shape:
            n *= s
        size = n * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _TO_NAME[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for name in order:
            value = tensors[name]
            tensor = value.load() if isinstance(value, LazyTensor) else value
            if tensor.dtype != specs[name][0] or tuple(tensor.shape) != specs[name][1]:
                raise ValueError(
                    f"{name}: produced {tensor.dtype} {tuple(tensor.shape)}, announced "
                    f"{specs[name][0]} {specs[name][1]}"
                )
            out.write(_bytes(tensor))
            del tensor


def folder_entries(folder: str | os.PathLike[str]) -> dict[str, Entry]:
    """Every tensor of a model folder's safetensors files (sharded or not): name -> Entry."""
    root = Path(folder)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({root / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = sorted(root.glob("*.safetensors"))
    out: dict[str, Entry] = {}
    for file in files:
        out.update(read_header(file))
    return out
