"""A compressed model as a compressed-tensors Hugging Face folder (transformers, vLLM, SGLang).

What is written, for a model whose plan units hold allocator's quantized weights (``QuantLinear``
after ``apply_plan`` or ``load_checkpoint``):

- ``config.json``: the model's config with a ``quantization_config`` written by the library's
  ``ModelCompressor.update_config``: one config group per (bits, group size, symmetry) the plan
  uses, each targeting the exact names of its units (anchored ``re:`` patterns), format
  ``pack-quantized``, status ``compressed``; every other linear layer (fp16 units, ``lm_head``)
  is listed in ``ignore`` by name, as vLLM needs a target or an ignore entry for each layer;
- ``model.safetensors``: per quantized unit ``weight_packed`` (the library's ``pack_to_int32``
  of allocator's codes shifted to signed: ``q = code - 2^(b-1)``), ``weight_scale`` (allocator's
  fp16 scales, (out, groups)), ``weight_zero_point`` for asymmetric units (``zero - 2^(b-1)``,
  packed along the output dimension as the library's compressor does) and ``weight_shape``;
  every other tensor as the model holds it (``dtype`` may cast them);
- tokenizer and generation config files.

The values are allocator's (GPTQ/SparseGPT codes and scales), never re-quantized:
``(q - zp) * scale`` equals allocator's ``(code - zero) * scale`` exactly. Pruned weights of
sparse units are stored as their group's zero point, so they dequantize to exactly 0; the
library (0.20.1) has no sparse compressor any more (``ModelCompressor`` writes an empty
``sparsity_config`` and refuses Sparse24 configs), so 2:4 units are stored dense.

Checks before writing (``check_plan``): bits 1-8, group sizes that divide the layer's inputs
(compressed-tensors has no ragged last group), linear layers that transformers builds from the
config with the same shapes (GPT-2's Conv1D and fused MoE experts are not); ``target="vllm"``
adds the vLLM rules of ``allocator.schema.targets``, ``target="transformers"`` refuses asymmetric
units (transformers 5 with compressed-tensors 0.20.1 cannot load asymmetric ``pack-quantized``
layers: its loader expects unpacked zero points, and the library's own asymmetric checkpoints
fail the same way).
"""

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

from allocator.errors import InputError, UnsupportedError
from allocator.export.compressed_tensors import weight_args
from allocator.patterns import exact_name_patterns
from allocator.quant.quant_linear import QuantLinear
from allocator.schema.io import replace_folder
from allocator.schema.option import Option
from allocator.schema.plan import Plan

FORMAT = "compressed-tensors"
FORMAT_PACKED = "pack-quantized"
TARGETS = ("vllm", "transformers")
WEIGHTS_FILE = "model.safetensors"
SHOWN = 20


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


def option_problem(option: Option, in_features: int | None = None) -> str | None:
    """Why compressed-tensors cannot hold ``option`` on a weight with ``in_features`` inputs."""
    if option.is_fp16:
        return None
    if not 1 <= option.bits <= 8:
        return f"bits={option.bits}: pack-quantized holds 1 to 8 bits"
    group = option.group_size
    ragged = group is not None and in_features is not None and in_features % group
    if ragged and group < in_features:  # type: ignore[operator]
        return (
            f"group size {group} does not divide the {in_features} inputs "
            "(compressed-tensors has no ragged last group)"
        )
    return None


def _raise(problems: list[str], what: str) -> None:
    if not problems:
        return
    shown = "\n  ".join(problems[:SHOWN])
    more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    raise UnsupportedError(f"{what}; {len(problems)} problem(s):\n  {shown}{more}")


def check_plan(
    plan: Plan,
    shapes: dict[str, tuple[int, int]] | None = None,
    *,
    target: str | None = None,
) -> None:
    """Raise UnsupportedError naming every unit whose option the format (or target) cannot hold,
    with the formats that could."""
    from allocator.deploy import formats_for

    if target not in (None, *TARGETS):
        raise InputError(f"--target {target!r}: with --format {FORMAT} use one of {TARGETS}")
    shapes = shapes or {}
    problems = []
    for a in plan.assignments:
        shape = shapes.get(a.unit)
        in_features = shape[1] if shape else None
        why = option_problem(a.option, in_features)
        asym = not a.option.is_fp16 and not a.option.symmetric
        if why is None and target == "transformers" and asym:
            why = (
                "asymmetric (zero point): transformers with compressed-tensors 0.20.1 cannot "
                "load asymmetric pack-quantized layers; use -sym options"
            )
        if why:
            could = ", ".join(f for f in formats_for(a.option, in_features) if f != FORMAT)
            problems.append(f"{a.unit}: {a.option.key}: {why} (formats that can hold it: {could})")
    _raise(problems, f"the plan does not fit --format {FORMAT}")
    if target == "vllm":
        from allocator.schema.targets import enforce, get_rules

        enforce(plan, get_rules("vllm"), shapes)


def _fresh_linears(model: nn.Module) -> dict[str, tuple[int, int]] | None:
    """Linear layers (name -> weight shape) of the model's class built from its config on the
    meta device: the layout transformers will load, before allocator's ``prepare_model``."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(type(model), "_from_config"):
        return None
    with torch.device("meta"):
        fresh = type(model)._from_config(config)
    return {
        n: tuple(m.weight.shape)  # type: ignore[misc]
        for n, m in fresh.named_modules()
        if isinstance(m, nn.Linear)
    }


def check_model(model: nn.Module, plan: Plan) -> dict[str, tuple[int, int]]:
    """Unit shapes, after checking every unit is a linear layer transformers builds from the
    config with the same shape (else the folder could not be loaded)."""
    modules = dict(model.named_modules())
    fresh = _fresh_linears(model)
    shapes: dict[str, tuple[int, int]] = {}
    problems = []
    for a in plan.assignments:
        module = modules.get(a.unit)
        if isinstance(module, QuantLinear):
            shape = (module.out_features, module.in_features)
        elif isinstance(module, nn.Linear):
            shape = tuple(module.weight.shape)  # type: ignore[assignment]
        else:
            problems.append(f"{a.unit}: not a linear layer of the model")
            continue
        shapes[a.unit] = shape
        if fresh is not None and fresh.get(a.unit) != shape:
            problems.append(
                f"{a.unit}: {type(model).__name__} built from its config has no nn.Linear of shape "
                f"{shape} there (GPT-2 Conv1D and fused MoE experts are re-laid out by allocator; "
                "formats that can hold it: allocator)"
            )
    _raise(problems, f"the model cannot be written as --format {FORMAT}")
    return shapes


def unit_codes(module: QuantLinear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Allocator's codes (out, in) int64, scales and zeros (out, groups) fp16 of a QuantLinear;
    pruned weights of sparse layouts take their group's zero point (so they dequantize to 0)."""
    from allocator.quant.packing import PackedWeight, unpack_codes

    packed = module.packed()
    zeros = packed.zeros
    if isinstance(packed, PackedWeight):
        codes_kn = unpack_codes(packed.planes, packed.bits, packed.in_features).long()
    else:
        codes_kn, mask = packed.codes_kn()
        groups = torch.arange(packed.in_features) // packed.group_size
        codes_kn = torch.where(mask, codes_kn.long(), zeros.float()[groups].long())
    return codes_kn.t().contiguous(), packed.scales.t().contiguous(), zeros.t().contiguous()


def scheme_args(module: QuantLinear, option: Option) -> dict[str, Any]:
    """compressed-tensors weight QuantizationArgs of a unit: one group spanning all inputs is
    written as per-channel (same values, and no group size larger than the layer)."""
    per_channel = module.group_size >= module.in_features
    opt = option.model_copy(update={"group_size": None if per_channel else module.group_size})
    return weight_args(opt)


def unit_tensors(module: QuantLinear, option: Option) -> dict[str, torch.Tensor]:
    """The pack-quantized tensors of one unit (local names), from allocator's codes."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    bits = module.bits
    offset = 1 << (bits - 1)
    codes, scales, zeros = unit_codes(module)
    out: dict[str, torch.Tensor] = {
        "weight_packed": pack_to_int32((codes - offset).to(torch.int8), bits),
        "weight_scale": scales.to(torch.float16),
        "weight_shape": torch.tensor([module.out_features, module.in_features]),
    }
    if not module.symmetric:
        zp = zeros.float()
        if not torch.equal(zp, zp.round()) or zp.min() < 0 or zp.max() > 2**bits - 1:
            raise UnsupportedError(
                f"unit {option.key}: zero points are not integers in [0, {2**bits - 1}]; "
                "compressed-tensors stores integer zero points"
            )
        out["weight_zero_point"] = pack_to_int32((zp.long() - offset).to(torch.int8), bits, 0)
    return out


def _scheme_key(args: dict[str, Any]) -> str:
    return json.dumps(args, sort_keys=True)


def quantization_config(groups: dict[str, list[str]], ignore: list[str]) -> Any:
    """The library's QuantizationConfig: one config group per scheme (key: JSON of its args),
    targets the anchored exact-name patterns of its units."""
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
    )

    config_groups = {}
    for i, (key, units) in enumerate(groups.items()):
        config_groups[f"group_{i}"] = QuantizationScheme(
            targets=["re:" + p for p in exact_name_patterns(units)],
            weights=QuantizationArgs(**json.loads(key)),
            format=FORMAT_PACKED,
        )
    return QuantizationConfig(
        config_groups=config_groups,
        format=FORMAT_PACKED,
        quantization_status="compressed",
        ignore=ignore,
    )


def _state(
    model: nn.Module, plan: Plan, dtype: torch.dtype | None
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]], list[str], int]:
    """(tensors to save, scheme key -> units, ignored linear names, fp16 unit count)."""
    modules = dict(model.named_modules())
    options = plan.options_by_unit()
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[str, list[str]] = {}
    skip: set[str] = set()
    n_fp16 = 0
    for unit, option in options.items():
        module = modules[unit]
        if isinstance(module, QuantLinear):
            for key, tensor in unit_tensors(module, option).items():
                tensors[f"{unit}.{key}"] = tensor
            groups.setdefault(_scheme_key(scheme_args(module, option)), []).append(unit)
            skip.update(f"{unit}.{k}" for k in module.state_dict() if k != "bias")
        elif isinstance(module, nn.Linear) and option.is_fp16:
            n_fp16 += 1
        else:
            raise InputError(
                f"unit {unit}: the model does not hold it compressed as the plan says "
                f"({option.key}); apply the plan first"
            )
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    for key, tensor in model.state_dict().items():
        if key in skip:
            continue
        ident = (tensor.data_ptr(), tuple(tensor.shape))
        if ident in seen:  # tied (lm_head = embeddings): transformers re-ties from the config
            continue
        seen[ident] = key
        value = tensor.detach()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    quantized = {u for units in groups.values() for u in units}
    ignore = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear | QuantLinear) and n not in quantized
    ]
    return tensors, groups, ignore, n_fp16


def _is_compressed_tensors(out: Path) -> bool:
    config = out / "config.json"
    return config.is_file() and "quantization_config" in config.read_text()


def _move_into_place(tmp: Path, out: Path) -> None:
    replace_folder(tmp, out, owned=_is_compressed_tensors, what="a compressed-tensors folder")


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
    tensors, groups, ignore, n_fp16 = _state(model, plan, dtype)
    qconfig = quantization_config(groups, ignore)
    target_dir = Path(out)
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target_dir.parent, prefix=f".{target_dir.name}.tmp-"))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        config = model.config  # type: ignore[attr-defined]
        saved_dtype = getattr(config, "dtype", None)
        config.dtype = dtype or next(model.parameters()).dtype
        try:
            config.save_pretrained(tmp)
        finally:
            config.dtype = saved_dtype
        generation = getattr(model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        ModelCompressor(quantization_config=qconfig).update_config(str(tmp))
        file_bytes = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file())
        _move_into_place(tmp, target_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
    return CTResult(
        path=target_dir,
        file_bytes=file_bytes,
        tensor_bytes=sum(t.numel() * t.element_size() for t in tensors.values()),
        quantized_units=sum(len(u) for u in groups.values()),
        fp16_units=n_fp16,
        groups={k: list(v) for k, v in groups.items()},
        notes=notes,
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


def verify_folder(folder: str | os.PathLike[str], model: nn.Module) -> float:
    """Check a written folder with the library and return the max abs difference between its
    dequantized units and ``model``'s (0.0 when exact).

    The library's ``CompressedTensorsDequantizer.validate`` must accept the folder (every
    targeted module complete, no leftover quantization parameters); then each unit is
    decompressed by the library's ``pack-quantized`` compressor with fp32 scales (as transformers
    does when it loads the folder in fp32) and compared with allocator's dequantized weight.
    """
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import (
        CompressedTensorsDequantizer,
    )
    from compressed_tensors.utils.match import match_name

    qconfig, tensors = read_folder(folder)
    CompressedTensorsDequantizer(str(folder), dtype=torch.float32).validate(dict(tensors))
    modules = dict(model.named_modules())
    worst = 0.0
    for scheme in qconfig.config_groups.values():
        compressor = BaseCompressor.get_value_from_registry(scheme.format or FORMAT_PACKED)
        names = compressor.compression_param_names(scheme)
        for name, module in modules.items():
            if not isinstance(module, QuantLinear):
                continue
            if not any(match_name(name, t) for t in scheme.targets):
                continue
            state = {k: tensors[f"{name}.{k}"] for k in names}
            state["weight_scale"] = state["weight_scale"].float()
            weight = compressor.decompress(state, scheme)["weight"].float()
            ours = module.dequantized_weight(torch.float32).cpu()
            worst = max(worst, float((weight - ours).abs().max()))
    return worst


def precheck(
    model: nn.Module, plan: Plan, *, target: str | None = None, checkpoint: str | None = None
) -> None:
    """Everything that can be checked before the (minutes-long) compression: the model's layout,
    the plan's options for the format and target, and, when ``model`` was loaded from an
    allocator checkpoint, that the checkpoint was made by this very plan."""
    shapes = check_model(model, plan)
    check_plan(plan, shapes, target=target)
    if checkpoint is not None:
        from allocator.quant.checkpoint import checkpoint_plan

        if checkpoint_plan(checkpoint).content_hash() != plan.content_hash():
            raise InputError(
                f"--model {checkpoint}: the checkpoint was made by another plan than --plan; "
                "give its own plan (plan.json inside it) or the original model"
            )


def write_and_verify(
    model: nn.Module,
    plan: Plan,
    out: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    target: str | None = None,
    dtype: str | None = None,
) -> list[str]:
    """Write the folder, verify it with the library, and return the report's lines."""
    from allocator.models.trust import dtype_named

    torch_dtype = None if dtype is None else dtype_named(dtype, where="--dtype")
    result = save_compressed_tensors(
        model, plan, out, tokenizer=tokenizer, dtype=torch_dtype, target=target
    )
    worst = verify_folder(out, model)
    if worst != 0.0:
        raise UnsupportedError(
            f"{out}: compressed-tensors decompresses a unit {worst:.3g} away from allocator's "
            "weights; please report this"
        )
    schemes = []
    for key, units in result.groups.items():
        args = json.loads(key)
        group = "channel" if args["group_size"] is None else f"g{args['group_size']}"
        sym = "sym" if args["symmetric"] else "asym"
        schemes.append(f"{args['num_bits']}-bit {group} {sym} x{len(units)}")
    return [
        f"compressed-tensors  {result.path} ({result.file_bytes / 2**20:.3f} MiB)",
        f"config groups       {len(result.groups)}: {', '.join(schemes)}",
        f"units               {result.quantized_units} pack-quantized, {result.fp16_units} fp16 (ignored)",
        "verified            compressed-tensors validation passed; every unit decompresses to "
        "allocator's weights exactly",
        *(f"note                {n}" for n in result.notes),
        f"avg bits            {plan.avg_bits:.4f}",
    ]
