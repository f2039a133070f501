"""Packed checkpoints: save a compressed model to a folder atomically and load it back.

Folder contents:
- ``packed.safetensors``: the plan's units only: QuantLinear planes/index/scales/zeros, and the
  weights of fp16 units in fp16. Its size is what the plan predicts (``Plan.size_bytes``);
- ``rest.safetensors``: everything else (embeddings, norms, biases), in the model's dtype;
- ``plan.json``, ``quant_config.json`` (format version, per-unit layouts, tied aliases, sizes),
  the model's ``config.json`` and tokenizer files;
- ``checksums.sha256``: sha256 of every other file, checked before loading.
The folder is written under a temporary name next to the target and renamed into place, so a
reader never sees half a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from allocator.errors import InputError
from allocator.models.loader import LoadedModel
from allocator.models.offload import runtime_of
from allocator.models.tensorfile import write_safetensors
from allocator.models.trust import dtype_named, model_class_named
from allocator.quant.quant_linear import QuantLinear
from allocator.schema.io import load_plan, replace_folder, save_plan
from allocator.schema.plan import Plan

FORMAT = "allocator-packed"
FORMAT_VERSION = 1
PACKED_FILE = "packed.safetensors"
REST_FILE = "rest.safetensors"
CONFIG_FILE = "quant_config.json"
CHECKSUM_FILE = "checksums.sha256"


@dataclass
class CheckpointSizes:
    """Bytes of the plan units' tensors, of the packed file on disk (tensors + safetensors header),
    of the rest file, and the plan's prediction for the units."""

    packed_bytes: int
    packed_file_bytes: int
    rest_bytes: int
    predicted_bytes: float

    @property
    def relative_error(self) -> float:
        """(stored tensor bytes - predicted bytes) / predicted bytes."""
        return (self.packed_bytes - self.predicted_bytes) / self.predicted_bytes

    @property
    def file_relative_error(self) -> float:
        return (self.packed_file_bytes - self.predicted_bytes) / self.predicted_bytes


def _split_state(
    model: nn.Module, plan: Plan
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str], dict[str, Any]]:
    """(packed tensors, rest tensors, aliases of tied tensors, per-unit layouts)."""
    modules = dict(model.named_modules())
    units = {a.unit: a.option for a in plan.assignments}
    packed: dict[str, torch.Tensor] = {}
    layouts: dict[str, Any] = {}
    unit_keys: set[str] = set()
    for name, option in units.items():
        module = modules.get(name)
        if isinstance(module, QuantLinear):
            layouts[name] = module.layout()
            for key, tensor in module.state_dict().items():
                if key != "bias":
                    packed[f"{name}.{key}"] = tensor
                    unit_keys.add(f"{name}.{key}")
        elif isinstance(module, nn.Linear) and option.is_fp16:
            layouts[name] = {"fp16": True}
            packed[f"{name}.weight"] = module.weight.detach().to(torch.float16)
            unit_keys.add(f"{name}.weight")
        else:
            raise InputError(
                f"unit {name}: the model does not hold it compressed as the plan says "
                f"({option.key}); run apply_plan on the model first"
            )
    rest: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    for key, tensor in model.state_dict().items():
        if key in unit_keys:
            continue
        ident = (tensor.data_ptr(), tuple(tensor.shape))
        if ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        rest[key] = tensor.detach().contiguous()
    return packed, rest, aliases, layouts


def _split_state_offloaded(
    model: nn.Module, runtime: Any, plan: Plan
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str], dict[str, Any]]:
    """``_split_state`` of an offloaded model (``allocator.models.offload``): tensors still on
    disk become LazyTensors, read one at a time as the file is written.

    Tied tensors are recognized by the key their stored tensor is read from (in memory: by the
    storage they share), so aliases and file bytes equal the in-memory checkpoint's.
    """
    modules = dict(model.named_modules())
    packed: dict[str, Any] = {}
    layouts: dict[str, Any] = {}
    unit_keys: set[str] = set()
    for assignment in plan.assignments:
        name, option = assignment.unit, assignment.option
        module = modules.get(name)
        if isinstance(module, QuantLinear):
            layouts[name] = module.layout()
            for key, tensor in module.state_dict(keep_vars=True).items():
                if key != "bias":
                    packed[f"{name}.{key}"] = runtime.lazy(f"{name}.{key}", tensor)
                    unit_keys.add(f"{name}.{key}")
        elif isinstance(module, nn.Linear) and option.is_fp16:
            layouts[name] = {"fp16": True}
            packed[f"{name}.weight"] = runtime.lazy(f"{name}.weight", module.weight, torch.float16)
            unit_keys.add(f"{name}.weight")
        else:
            raise InputError(
                f"unit {name}: the model does not hold it compressed as the plan says "
                f"({option.key}); run apply_plan on the model first"
            )
    rest: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    seen: dict[Any, str] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        if key in unit_keys:
            continue
        ident = (
            ("stored", runtime.source_key(key), tuple(tensor.shape))
            if runtime.is_placeholder(tensor)
            else ("memory", tensor.data_ptr(), tuple(tensor.shape))
        )
        if ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        rest[key] = runtime.lazy(key, tensor)
    return packed, rest, aliases, layouts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_checksums(folder: Path) -> None:
    lines = [
        f"{_sha256(p)}  {p.name}"
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != CHECKSUM_FILE
    ]
    (folder / CHECKSUM_FILE).write_text("\n".join(lines) + "\n")


def _move_into_place(tmp: Path, out: Path) -> None:
    replace_folder(tmp, out, owned=lambda o: (o / CONFIG_FILE).is_file(),
                   what="an allocator checkpoint")  # fmt: skip


def save_checkpoint(
    model: nn.Module, plan: Plan, out: str | os.PathLike[str], *, tokenizer: Any = None
) -> CheckpointSizes:
    """Write the compressed model, its plan, config and tokenizer to ``out`` atomically."""
    from safetensors.torch import save_file

    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    runtime = runtime_of(model)
    if runtime is not None:  # offloaded: tensors are read from disk as they are written
        packed, rest, aliases, layouts = _split_state_offloaded(model, runtime, plan)
    else:
        packed, rest, aliases, layouts = _split_state(model, plan)
    write = write_safetensors if runtime is not None else save_file  # the same bytes
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        write({k: v.contiguous() for k, v in packed.items()}, str(tmp / PACKED_FILE))
        write(rest, str(tmp / REST_FILE))
        sizes = CheckpointSizes(
            packed_bytes=sum(t.numel() * t.element_size() for t in packed.values()),
            packed_file_bytes=(tmp / PACKED_FILE).stat().st_size,
            rest_bytes=(tmp / REST_FILE).stat().st_size,
            predicted_bytes=plan.size_bytes,
        )
        save_plan(plan, tmp / "plan.json")
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "units": layouts,
            "aliases": aliases,
            "sizes": asdict(sizes),
            "plan_hash": plan.content_hash(),
            "model_class": type(model).__name__,
            # the config alone may build more (BertModel(add_pooling_layer=False) has no pooler)
            "children": [k for k, v in model._modules.items() if v is not None],
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        config = getattr(model, "config", None)
        if config is not None:
            config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _write_checksums(tmp)
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sizes


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def verify_checksums(folder: Path) -> None:
    """InputError naming the first file that is missing or differs from its recorded sha256."""
    listing = folder / CHECKSUM_FILE
    if not listing.is_file():
        raise InputError(f"{listing}: missing; the checkpoint is incomplete, save it again")
    for line in listing.read_text().splitlines():
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        path = folder / name
        if not path.is_file():
            raise InputError(f"{path}: missing from the checkpoint; save it again")
        if _sha256(path) != digest:
            raise InputError(
                f"{path}: checksum mismatch, the file is corrupt or truncated; "
                "save the checkpoint again (allocator apply)"
            )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise InputError(f"{path}: cannot read it as safetensors ({exc}); save it again") from None


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{folder / CONFIG_FILE}: unreadable ({exc}); save it again") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{folder / CONFIG_FILE}: format {meta.get('format')} v{meta.get('format_version')} "
            f"is not {FORMAT} v{FORMAT_VERSION}; save it again with this version"
        )
    return meta


def _build_model(folder: Path, meta: dict[str, Any]) -> nn.Module:
    """The saved model's class built from its config (Auto class by the config when the class
    was not recorded), optional submodules it lacked removed, prepared as ``apply`` saw it."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from allocator.models.adapters import prepare_model
    from allocator.models.loader import is_encoder_config

    config = AutoConfig.from_pretrained(folder)
    dtype = dtype_named(meta.get("dtype", "float32"), where=f"{folder}: dtype")
    model_class = model_class_named(meta.get("model_class"), where=f"{folder}: model_class")
    if model_class is not None and hasattr(model_class, "_from_config"):
        model = model_class._from_config(config, dtype=dtype)
    else:
        auto = AutoModel if is_encoder_config(config) else AutoModelForCausalLM
        model = auto.from_config(config, dtype=dtype)
    if "children" in meta:
        for child in [k for k in model._modules if k not in meta["children"]]:
            setattr(model, child, None)
    prepare_model(model)
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for name, layout in meta["units"].items():
        if layout.get("fp16"):
            continue
        if name not in linears:
            raise InputError(
                f"{folder}: unit {str(name)[:80]!r} names no linear layer of the "
                f"{type(model).__name__} built from its config; the checkpoint is damaged or "
                "was made for another model"
            )
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantLinear(layout))
    return model


def load_checkpoint(folder: str | os.PathLike[str], *, device: str = "cpu") -> LoadedModel:
    """Load a packed checkpoint into a model whose units are QuantLinear (fp16 units nn.Linear)."""
    path = Path(folder)
    if not is_checkpoint(path):
        raise InputError(f"--model {path}: not an allocator checkpoint (no {CONFIG_FILE})")
    verify_checksums(path)
    meta = _read_meta(path)
    model = _build_model(path, meta)
    state = _read_safetensors(path / REST_FILE)
    dtype = dtype_named(meta.get("dtype", "float32"), where=f"{path}: dtype")
    for key, tensor in _read_safetensors(path / PACKED_FILE).items():
        unit = key.rpartition(".")[0]
        fp16_unit = meta["units"].get(unit, {}).get("fp16")
        state[key] = tensor.to(dtype) if fp16_unit else tensor
    result = model.load_state_dict(state, strict=False)
    aliases = meta.get("aliases", {})
    missing = [k for k in result.missing_keys if k not in aliases]
    if missing or result.unexpected_keys:
        raise InputError(
            f"{path}: tensors do not match the model (missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]}); the checkpoint is damaged or from another model"
        )
    with torch.no_grad():
        for key, source in aliases.items():
            target = model.get_parameter(key) if key in dict(model.named_parameters()) else None
            if target is not None and target.data_ptr() != state[source].data_ptr():
                target.copy_(model.state_dict()[source])
    model.eval().to(device)
    from transformers import AutoTokenizer

    tokenizer = None
    if (path / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path)
    from allocator.models.loader import model_task

    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        source=str(path),
        model_hash=_sha256(path / PACKED_FILE),
        task=model_task(model),
    )


def checkpoint_plan(folder: str | os.PathLike[str]) -> Plan:
    return load_plan(Path(folder) / "plan.json")
