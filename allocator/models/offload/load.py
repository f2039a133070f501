"""``load_offloaded``: a safetensors folder's model built on the meta device, every weight a
placeholder read by its ``OffloadRuntime`` when its block runs (see ``allocator.models.offload``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from allocator.errors import UnsupportedError
from allocator.models.heap import map_large_allocations
from allocator.models.offload.runtime import ATTR, OffloadRuntime
from allocator.models.tensorfile import Entry, folder_entries


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

        renames = [
            t for t in get_model_conversion_mapping(cast(Any, model)) if type(t) is WeightRenaming
        ]
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
    map_large_allocations()  # freed blocks leave the resident size instead of staying on the heap
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
        cast(Any, model).pooler = None
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
        for name, old in list(module._parameters.items()):
            if old is None:
                continue
            new = replaced.get(id(old))
            if new is None:
                shape = tuple(int(s) for s in old.shape)
                new = nn.Parameter(
                    runtime.placeholder(shape, old.dtype, target),
                    requires_grad=old.requires_grad,
                )
                replaced[id(old)] = new
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
