"""Where every weight of an offloaded model lives (``OffloadRuntime``): placeholders, positioned
reads, the hooks that load a block before it runs and free it after, holding and keeping blocks
loaded, committing modified blocks to scratch, lazy checkpoint tensors; and the no-op-in-memory
helpers the block-wise code calls (``holding``, ``keep_resident``, ``release_kept``). See
``allocator.models.offload``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from allocator.errors import UnsupportedError
from allocator.models.heap import return_freed_memory
from allocator.models.tensorfile import Entry, LazyTensor, TensorFiles, read_header

ATTR = "_allocator_offload"
GROUP_ATTR = "_allocator_offload_group"


def runtime_of(model: Any) -> OffloadRuntime | None:
    """The offload runtime of a model loaded with ``offload=True`` (None otherwise)."""
    return getattr(model, "__dict__", {}).get(ATTR)


def is_offloaded(model: Any) -> bool:
    return runtime_of(model) is not None


@dataclass
class _Slot:
    owner: nn.Module
    name: str
    key: str
    is_param: bool

    def get(self) -> torch.Tensor:
        return (self.owner._parameters if self.is_param else self.owner._buffers)[self.name]  # type: ignore[return-value]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _direct_slots(module: nn.Module, base: str) -> Iterator[_Slot]:
    for name, param in module._parameters.items():
        if param is not None:
            yield _Slot(module, name, _join(base, name), True)
    for name, buffer in module._buffers.items():
        if buffer is not None and name not in module._non_persistent_buffers_set:
            yield _Slot(module, name, _join(base, name), False)


def _slots(module: nn.Module, prefix: str, recurse: bool) -> Iterator[_Slot]:
    if not recurse:
        yield from _direct_slots(module, prefix)
        return
    for rel, sub in module.named_modules():
        yield from _direct_slots(sub, _join(prefix, rel))


class OffloadRuntime:
    """Where every weight of an offloaded model lives, and the hooks that load and free them."""

    def __init__(
        self,
        model: nn.Module,
        entries: dict[str, Entry],
        *,
        alias: dict[str, str],
        transposed: set[str],
        device: torch.device,
        activations: str | os.PathLike[str] | None = None,
    ) -> None:
        from allocator.models.blocks import find_backbone

        self.model = model
        self.entries = dict(entries)
        self.alias = dict(alias)
        self.transposed = set(transposed)
        self.device = device
        self.files = TensorFiles()
        self.activations = Path(activations) if activations is not None else None
        backbone = find_backbone(model)
        self.block_prefix = backbone.prefix
        self.n_blocks = len(backbone.layers)
        self._scalars: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        self._active: dict[int, list[list[_Slot]]] = {}
        self._kept: tuple[str, nn.Module, list[_Slot], bool] | None = None
        self._scratch: Path | None = None
        self._commits = 0
        self._handles: list[Any] = []
        self.loads = 0  # module loads (a block, the embeddings...)
        # weights read and still loaded, and the peak of their bytes (tensors made in place,
        # e.g. QuantLinear buffers before a commit, are not counted)
        self._resident: dict[int, tuple[Any, int]] = {}
        self.peak_resident_bytes = 0

    # -- placeholders ---------------------------------------------------------------------
    def _scalar(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (dtype, torch.device(device))
        scalar = self._scalars.get(key)
        if scalar is None:
            fill = float("nan") if dtype.is_floating_point else 0
            scalar = torch.full((), fill, dtype=dtype, device=device)
            self._scalars[key] = scalar
        return scalar

    def placeholder(
        self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        if any(int(s) == 0 for s in shape):
            return torch.empty(shape, dtype=dtype, device=device)
        return self._scalar(dtype, device).expand(shape)

    def is_placeholder(self, tensor: torch.Tensor) -> bool:
        if tensor.numel() == 0 or tensor.device.type == "meta":
            return False
        scalar = self._scalars.get((tensor.dtype, tensor.device))
        return scalar is not None and tensor.data_ptr() == scalar.data_ptr()

    # -- reading ----------------------------------------------------------------------------
    def source_key(self, key: str) -> str:
        return self.alias.get(key, key)

    def read(
        self, key: str, dtype: torch.dtype, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """The stored tensor of state-dict key ``key`` (tied names resolved), as dtype/device."""
        source = self.source_key(key)
        entry = self.entries.get(source)
        if entry is None:
            raise UnsupportedError(
                f"offload: no stored tensor for {key}; the model folder's safetensors files do "
                "not hold it under this name"
            )
        value = self.files.read(entry)
        if source in self.transposed:
            value = value.t().contiguous()
        return value.to(device=device, dtype=dtype)

    def _load_slot(self, slot: _Slot) -> bool:
        current = slot.get()
        if not self.is_placeholder(current):
            return False
        value = self.read(slot.key, current.dtype, current.device)
        if slot.is_param:
            current.data = value  # the Parameter object (and tied owners, grad flags) is kept
            holder = current
        else:
            slot.owner._buffers[slot.name] = value
            holder = value
        self._resident[id(holder)] = (weakref.ref(holder), value.numel() * value.element_size())
        self.peak_resident_bytes = max(self.peak_resident_bytes, self.resident_bytes)
        return True

    @property
    def resident_bytes(self) -> int:
        """Bytes of weights read from disk and still loaded (a parameter freed, or dropped
        with its module when apply replaced it, no longer counts)."""
        total = 0
        for key, (ref, size) in list(self._resident.items()):
            tensor = ref()
            if tensor is None or self.is_placeholder(tensor):
                del self._resident[key]
            else:
                total += size
        return total

    def _load(self, prefix: str, module: nn.Module, recurse: bool) -> list[_Slot]:
        loaded = [slot for slot in _slots(module, prefix, recurse) if self._load_slot(slot)]
        if loaded:
            self.loads += 1
        return loaded

    def _free_slot(self, slot: _Slot) -> None:
        current = slot.get()
        if self.is_placeholder(current):
            return
        empty = self.placeholder(tuple(current.shape), current.dtype, current.device)
        if slot.is_param:
            current.data = empty
            current.grad = None
        else:
            slot.owner._buffers[slot.name] = empty

    def _free(self, slots: list[_Slot], module: nn.Module) -> None:
        for slot in slots:
            self._free_slot(slot)
        for sub in module.modules():  # QuantLinear keeps its dequantized weight: drop it
            if isinstance(getattr(sub, "_cache", None), torch.Tensor):
                cast(Any, sub)._cache = None
        return_freed_memory()  # the block's weights, not only its placeholders, leave RSS

    # -- groups -----------------------------------------------------------------------------
    def block_of(self, name: str) -> str | None:
        """``model.layers.3`` for a name inside block 3 (or the block itself), else None."""
        head = self.block_prefix + "."
        if not name.startswith(head):
            return None
        index = name[len(head) :].split(".", 1)[0]
        return head + index if index.isdigit() else None

    def _group(self, target: nn.Module | str) -> tuple[str, nn.Module, bool]:
        if isinstance(target, str):
            block = self.block_of(target)
            name = block if block is not None else target
            return name, self.model.get_submodule(name), block is not None
        info = target.__dict__.get(GROUP_ATTR)
        if info is not None:
            return info[1], target, info[2]
        for name, module in self.model.named_modules():
            if module is target:
                return name, module, True
        raise ValueError("offload: the module is not part of this model")

    def install_hooks(self) -> None:
        """Load-before/free-after hooks on every block and every other module owning weights."""
        blocks = cast(nn.ModuleList, self.model.get_submodule(self.block_prefix))
        groups: list[tuple[str, nn.Module, bool]] = [
            (f"{self.block_prefix}.{i}", block, True) for i, block in enumerate(blocks)
        ]
        block_names = {g[0] for g in groups}
        for name, module in self.model.named_modules():
            if name == self.block_prefix or name in block_names or self.block_of(name):
                continue
            if any(True for _ in _direct_slots(module, name)):
                groups.append((name, module, False))
        for prefix, module, recurse in groups:
            module.__dict__[GROUP_ATTR] = (weakref.ref(self), prefix, recurse)
            self._handles.append(module.register_forward_pre_hook(self._pre(prefix, recurse)))
            self._handles.append(module.register_forward_hook(self._post(), always_call=True))

    def _pre(self, prefix: str, recurse: bool) -> Any:
        def hook(module: nn.Module, _args: Any) -> None:
            self._active.setdefault(id(module), []).append(self._load(prefix, module, recurse))

        return hook

    def _post(self) -> Any:
        def hook(module: nn.Module, _args: Any, _output: Any) -> None:
            stack = self._active.get(id(module))
            if stack:
                self._free(stack.pop(), module)

        return hook

    @contextlib.contextmanager
    def hold(self, target: nn.Module | str, *, commit: bool = False) -> Iterator[nn.Module]:
        """Keep a block (or module) loaded inside the block; ``commit`` writes it to scratch
        at the end and frees all of it (what ``apply`` does after compressing a block)."""
        prefix, module, recurse = self._group(target)
        loaded = self._load(prefix, module, recurse)
        ok = False
        try:
            yield module
            ok = True
        finally:
            if commit and ok:
                self.commit(prefix, module, recurse)
            else:
                self._free(loaded, module)

    def keep(self, name: str, *, commit: bool = False) -> None:
        """Keep the block owning ``name`` loaded until another block is asked for."""
        prefix, module, recurse = self._group(name)
        if self._kept is not None and self._kept[0] == prefix:
            return
        self.release_kept()
        self._kept = (prefix, module, self._load(prefix, module, recurse), commit)

    def release_kept(self) -> None:
        if self._kept is None:
            return
        prefix, module, loaded, commit = self._kept
        self._kept = None
        if commit:
            self.commit(prefix, module, True)
        else:
            self._free(loaded, module)

    # -- committing modified blocks ---------------------------------------------------------
    @property
    def scratch(self) -> Path:
        if self._scratch is None:
            root = os.environ.get("ALLOCATOR_OFFLOAD_SCRATCH") or None
            self._scratch = Path(tempfile.mkdtemp(prefix="allocator-offload-", dir=root))
            weakref.finalize(self, shutil.rmtree, str(self._scratch), True)
        return self._scratch

    def commit(self, prefix: str, module: nn.Module, recurse: bool = True) -> None:
        """Write the module's current weights to a scratch file, point its keys there, free it."""
        from safetensors.torch import save_file

        slots = list(_slots(module, prefix, recurse))
        state = {}
        for slot in slots:
            value = slot.get()
            if self.is_placeholder(value):
                self._load_slot(slot)
                value = slot.get()
            state[slot.key] = value.detach().contiguous().cpu()
        path = self.scratch / f"commit-{self._commits:05d}.safetensors"
        self._commits += 1
        save_file(state, str(path))
        del state
        for key, entry in read_header(path).items():
            self.entries[key] = entry
            self.alias.pop(key, None)
            self.transposed.discard(key)
        self._free(slots, module)

    # -- checkpoints ------------------------------------------------------------------------
    def lazy(self, key: str, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> Any:
        """The tensor of ``key`` for a checkpoint: the real one, or read when it is written."""
        want = dtype or tensor.dtype
        if not self.is_placeholder(tensor):
            return tensor.detach().to(want).contiguous().cpu()
        shape = tuple(int(s) for s in tensor.shape)
        return LazyTensor(want, shape, lambda: self.read(key, tensor.dtype).to(want))

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.files.close()


# -- helpers the block-wise code calls (no-ops for models in memory) --------------------------
def _runtime_of_group(module: nn.Module) -> OffloadRuntime | None:
    info = module.__dict__.get(GROUP_ATTR)
    return info[0]() if info is not None else None


def holding(module: nn.Module, *, commit: bool = False) -> contextlib.AbstractContextManager:
    """``hold`` for a block of an offloaded model; a no-op context for other modules."""
    runtime = _runtime_of_group(module)
    if runtime is None:
        return contextlib.nullcontext(module)
    return runtime.hold(module, commit=commit)


def keep_resident(model: nn.Module, name: str, *, commit: bool = False) -> None:
    runtime = runtime_of(model)
    if runtime is not None:
        runtime.keep(name, commit=commit)


def release_kept(model: nn.Module) -> None:
    runtime = runtime_of(model)
    if runtime is not None:
        runtime.release_kept()
