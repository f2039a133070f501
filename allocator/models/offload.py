"""Block-wise offloaded execution: a model whose weights stay on disk until a block runs.

``load_offloaded(folder)`` builds the model's skeleton on the meta device (no weight memory),
ties and prepares it as the loader does (GPT-2 Conv1D -> nn.Linear), and gives every parameter
a one-element placeholder of its shape and dtype on the target device (a NaN scalar expanded,
so device and shape queries hold and a computation that reads an unloaded weight yields NaN,
never plausible numbers). Weights are read from the folder's safetensors files (sharded or not)
with positioned reads, tensor by tensor (``allocator.models.tensorfile``), only when needed:

- every block of the block stack and every other module owning weights (embeddings, final norm,
  head) gets forward hooks that load its weights before it runs and free them after, so a plain
  ``model(input_ids)`` streams the model through memory one block at a time;
- ``run_block`` and the block-by-block loops hold a block for all cached batches
  (``hold``), so each block is read once per pass, not once per batch;
- ``keep(name)`` keeps the block owning a unit loaded until a unit of another block is asked
  for (the estimators' per-unit loops read weights through ``ProfileContext.module``);
- ``hold(block, commit=True)`` (apply) writes the block as it is at the end (QuantLinear
  buffers, fp16-rounded weights, norms) to a scratch safetensors file and frees it: the model
  stays usable (evaluating it streams the compressed blocks from scratch) and
  ``save_checkpoint`` writes it tensor by tensor (``lazy``), bit-identical to the
  checkpoint of the same model compressed in memory.

Tied weights (embeddings and head) are one parameter read from whichever name the files hold.
Refused with a clear message: fused MoE experts (transformers renames and fuses expert weights
when loading, so the files' names are not the model's) and weights the files lack
(``from_pretrained`` would initialize them randomly). ``device="cuda"`` reads each block to the
GPU when it runs. With ``activations`` (``--offload-activations DIR``) the hidden states cached
between blocks live in files under DIR (``allocator.models.activations``).
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
from typing import Any

import torch
from torch import nn

from allocator.errors import UnsupportedError
from allocator.models.tensorfile import Entry, LazyTensor, TensorFiles, folder_entries, read_header

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
                sub._cache = None  # type: ignore[attr-defined]

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
        blocks = self.model.get_submodule(self.block_prefix)
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


# -- loading ----------------------------------------------------------------------------------
def _skeleton(folder: Path, dtype: torch.dtype) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from allocator.models.loader import is_encoder_config

    config = AutoConfig.from_pretrained(folder)
    auto = AutoModel if is_encoder_config(config) else AutoModelForCausalLM
    with init_empty_weights(include_buffers=False):
        model = auto.from_config(config, dtype=dtype)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def _renamed(model: nn.Module, entries: dict[str, Entry]) -> dict[str, Entry]:
    """The files' tensors under the model's names: transformers' own renamings of old checkpoint
    names (GPT-NeoX ``embed_out`` -> ``lm_head``, ``LayerNorm.gamma`` -> ``.weight``) applied
    to the names the model lacks. Converters that fuse or split tensors are not applied."""
    import re

    try:
        from transformers.conversion_mapping import WeightRenaming, get_model_conversion_mapping

        renames = [t for t in get_model_conversion_mapping(model) if type(t) is WeightRenaming]
    except Exception:  # an older transformers without conversion mappings
        return entries
    known = set(model.state_dict())
    out: dict[str, Entry] = {}
    for key, entry in entries.items():
        name = key
        if name not in known:
            for rename in renames:
                sources, targets = list(rename.source_patterns), list(rename.target_patterns)
                for i, pattern in enumerate(sources):
                    name = re.sub(pattern, targets[min(i, len(targets) - 1)], name)
        out.setdefault(name, entry)
    return out


def load_offloaded(
    folder: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    *,
    activations: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """The model of a safetensors folder with every weight left on disk (see the module doc)."""
    from allocator.models.adapters import is_conv1d, is_fused_experts, prepare_model

    root = Path(folder)
    model = _skeleton(root, dtype)
    fused = [n for n, m in model.named_modules() if is_fused_experts(m)]
    if fused:
        raise UnsupportedError(
            f"--offload: {type(model).__name__} has fused MoE experts ({fused[0]}, ...), whose "
            "weights transformers renames and fuses when loading; offloaded execution reads the "
            "files' tensors by the model's own names and does not handle them; load it in memory"
        )
    conv = {n for n, m in model.named_modules() if is_conv1d(m)}
    prepare_model(model)
    entries = folder_entries(root)
    if not entries:
        raise UnsupportedError(f"--offload: {root} holds no safetensors weights to read lazily")
    entries = _renamed(model, entries)
    target = torch.device(device)
    alias: dict[str, str] = {}
    transposed = {f"{n}.weight" for n in conv if f"{n}.weight" in entries}
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    missing = []
    for keys in names.values():
        stored = next((k for k in keys if k in entries), None)
        if stored is None:
            missing.extend(keys)
            continue
        for key in keys:
            if key != stored:
                alias[key] = stored
    pooler = getattr(model, "pooler", None)
    if missing and pooler is not None and all(k.startswith("pooler.") for k in missing):
        # an encoder saved without its pooler (BertModel(add_pooling_layer=False)): drop it
        model.pooler = None
        missing = []
    if missing:
        raise UnsupportedError(
            f"--offload: the safetensors files of {root} lack {len(missing)} weights of "
            f"{type(model).__name__} ({', '.join(missing[:4])}); from_pretrained would "
            "initialize them randomly, offloaded loading refuses; load the model in memory"
        )
    runtime = OffloadRuntime(
        model, entries, alias=alias, transposed=transposed, device=target, activations=activations
    )
    replaced: dict[int, nn.Parameter] = {}
    buffer_names = {id(b): n for n, b in model.named_buffers(remove_duplicate=False)}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            new = replaced.get(id(param))
            if new is None:
                shape = tuple(int(s) for s in param.shape)
                new = nn.Parameter(
                    runtime.placeholder(shape, param.dtype, target),
                    requires_grad=param.requires_grad,
                )
                replaced[id(param)] = new
            module._parameters[name] = new
        for name, buffer in list(module._buffers.items()):
            if buffer is None:
                continue
            persistent = name not in module._non_persistent_buffers_set
            full = buffer_names.get(id(buffer), name)
            if persistent and full in entries:
                shape = tuple(int(s) for s in buffer.shape)
                module._buffers[name] = runtime.placeholder(shape, buffer.dtype, target)
            elif buffer.device.type == "meta":
                raise UnsupportedError(f"--offload: buffer {full} has no value")
            else:
                module._buffers[name] = buffer.to(target)
    model.eval()
    runtime.install_hooks()
    model.__dict__[ATTR] = runtime
    return model


# -- evaluation: every window through one block at a time ------------------------------------
class StreamedLM:
    """Stands in for an offloaded causal LM in ``allocator.evaluate``: the last hidden state of
    every window is computed block by block up front (each block read once, not once per
    batch), and a call with one batch of those windows returns its logits."""

    def __init__(self, model: nn.Module, windows: torch.Tensor, batch_size: int) -> None:
        from allocator.models.blocks import find_backbone, record_block_calls, run_block

        self.model = model
        self.backbone = find_backbone(model)
        with torch.no_grad():
            inputs = record_block_calls(self.backbone, windows, batch_size)
            for block in self.backbone.layers:
                inputs = run_block(block, inputs)
        self._batches = [
            (windows[start : start + batch_size], hidden)
            for start, hidden in zip(
                range(0, windows.shape[0], batch_size), inputs.hidden, strict=True
            )
        ]

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    def get_output_embeddings(self) -> Any:
        return self.model.get_output_embeddings()

    @torch.no_grad()
    def __call__(self, *, input_ids: torch.Tensor, **_: Any) -> Any:
        from types import SimpleNamespace

        batch = input_ids.cpu()
        for ids, hidden in self._batches:
            if ids.shape == batch.shape and torch.equal(ids, batch):
                return SimpleNamespace(logits=self.backbone.logits(hidden))
        raise ValueError("StreamedLM: called with windows it was not built on")


def streamed(model: Any, windows: torch.Tensor, batch_size: int) -> Any:
    """``StreamedLM`` for an offloaded causal LM, the model itself otherwise."""
    if runtime_of(model) is None or not hasattr(model, "get_output_embeddings"):
        return model
    if model.get_output_embeddings() is None:
        return model
    return StreamedLM(model, windows, batch_size)
