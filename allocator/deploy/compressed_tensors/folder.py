"""Writing and reading the folder: ``config.json`` with the ``quantization_config``,
``model.safetensors``, generation config and tokenizer, replaced atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from allocator.deploy.compressed_tensors.checks import check_model, check_plan
from allocator.deploy.compressed_tensors.tensors import folder_state, quantization_config
from allocator.errors import InputError
from allocator.schema.io import replace_folder
from allocator.schema.plan import Plan

WEIGHTS_FILE = "model.safetensors"


@dataclass
class CTResult:
    """What was written: the folder, its size, the config groups and notes for the report."""

    path: Path
    file_bytes: int
    tensor_bytes: int
    quantized_units: int
    fp16_units: int
    groups: dict[str, list[str]]
    notes: list[str] = field(default_factory=list)


def _is_compressed_tensors(out: Path) -> bool:
    config = out / "config.json"
    return config.is_file() and "quantization_config" in config.read_text()


def _write_config(model: nn.Module, folder: Path, dtype: torch.dtype) -> None:
    """The model's config.json with ``dtype`` (the model's config is left as it was)."""
    config = getattr(model, "config", None)
    if config is None:
        raise InputError(f"{type(model).__name__} has no Hugging Face config to write")
    saved_dtype = getattr(config, "dtype", None)
    config.dtype = dtype
    try:
        config.save_pretrained(folder)
    finally:
        config.dtype = saved_dtype


def _notes(plan: Plan) -> list[str]:
    notes = []
    if any(a.option.sparsity > 0 for a in plan.assignments):
        notes.append(
            "sparse units are stored dense (pruned weights = their zero point, exactly 0): "
            "compressed-tensors 0.20.1 has no sparse compressor"
        )
    if any(not a.option.is_fp16 and not a.option.symmetric for a in plan.assignments):
        notes.append(
            "asymmetric units: vLLM reads their packed zero points (4/8-bit); transformers "
            "with compressed-tensors 0.20.1 cannot load asymmetric pack-quantized layers "
            "(use -sym options, or --target transformers to be told)"
        )
    return notes


def save_compressed_tensors(
    model: nn.Module,
    plan: Plan,
    out: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    dtype: torch.dtype | None = None,
    target: str | None = None,
) -> CTResult:
    """Write ``model`` (its units compressed by ``plan``) as a compressed-tensors folder, atomically.

    ``dtype`` casts the tensors that are not quantized (embeddings, norms, fp16 units, biases);
    default: as the model holds them, so the folder computes what allocator's model computes.
    """
    from compressed_tensors.compressors import ModelCompressor
    from safetensors.torch import save_file

    shapes = check_model(model, plan)
    check_plan(plan, shapes, target=target)
    state = folder_state(model, plan, dtype)
    qconfig = quantization_config(state.groups, state.ignore)
    target_dir = Path(out)
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target_dir.parent, prefix=f".{target_dir.name}.tmp-"))
    try:
        save_file(state.tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        _write_config(model, tmp, dtype or next(model.parameters()).dtype)
        generation = getattr(model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        ModelCompressor(quantization_config=qconfig).update_config(str(tmp))
        file_bytes = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file())
        replace_folder(
            tmp, target_dir, owned=_is_compressed_tensors, what="a compressed-tensors folder"
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CTResult(
        path=target_dir,
        file_bytes=file_bytes,
        tensor_bytes=sum(t.numel() * t.element_size() for t in state.tensors.values()),
        quantized_units=sum(len(u) for u in state.groups.values()),
        fp16_units=state.fp16_units,
        groups={k: list(v) for k, v in state.groups.items()},
        notes=_notes(plan),
    )


def read_folder(folder: str | os.PathLike[str]) -> tuple[Any, dict[str, torch.Tensor]]:
    """(the library's QuantizationConfig from config.json, the folder's tensors)."""
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    path = Path(folder)
    data = json.loads((path / "config.json").read_text()).get("quantization_config")
    if data is None:
        raise InputError(f"{path}/config.json: no quantization_config")
    return QuantizationConfig.model_validate(data), load_file(str(path / WEIGHTS_FILE))
