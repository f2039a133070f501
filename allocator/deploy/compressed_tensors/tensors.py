"""The folder's contents built from a model: pack-quantized tensors and the quantization config.

Per quantized unit ``weight_packed`` (the library's ``pack_to_int32`` of allocator's codes
shifted to signed: ``q = code - 2^(b-1)``), ``weight_scale`` (allocator's fp16 scales,
(out, groups)), ``weight_zero_point`` for asymmetric units (``zero - 2^(b-1)``, packed along the
output dimension as the library's compressor does) and ``weight_shape``; every other tensor as the
model holds it. One config group per (bits, group size, symmetry), targeting its units' exact
names; every other linear layer is listed in ``ignore``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from allocator.errors import InputError, UnsupportedError
from allocator.export.compressed_tensors import weight_args
from allocator.patterns import exact_name_patterns
from allocator.quant.quant_linear import QuantLinear
from allocator.schema.option import Option
from allocator.schema.plan import Plan

FORMAT_PACKED = "pack-quantized"


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


def scheme_key(args: dict[str, Any]) -> str:
    """A config group's key: its weight QuantizationArgs as sorted JSON."""
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


@dataclass
class FolderState:
    """What goes into the folder: the tensors to save, scheme key -> units, the linear layers
    left unquantized (``ignore``) and how many plan units are fp16."""

    tensors: dict[str, torch.Tensor]
    groups: dict[str, list[str]]
    ignore: list[str]
    fp16_units: int


def folder_state(model: nn.Module, plan: Plan, dtype: torch.dtype | None) -> FolderState:
    """The folder's tensors and config groups; ``dtype`` casts the floating tensors that are not
    quantized. Tied tensors (``lm_head`` = embeddings) are saved once: transformers re-ties them."""
    modules = dict(model.named_modules())
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[str, list[str]] = {}
    skip: set[str] = set()
    n_fp16 = 0
    for unit, option in plan.options_by_unit().items():
        module = modules[unit]
        if isinstance(module, QuantLinear):
            for key, tensor in unit_tensors(module, option).items():
                tensors[f"{unit}.{key}"] = tensor
            groups.setdefault(scheme_key(scheme_args(module, option)), []).append(unit)
            skip.update(f"{unit}.{k}" for k in module.state_dict() if k != "bias")
        elif isinstance(module, nn.Linear) and option.is_fp16:
            n_fp16 += 1
        else:
            raise InputError(
                f"unit {unit}: the model does not hold it compressed as the plan says "
                f"({option.key}); apply the plan first"
            )
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for key, tensor in model.state_dict().items():
        ident = (tensor.data_ptr(), tuple(tensor.shape))
        if key in skip or ident in seen:
            continue
        seen.add(ident)
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
    return FolderState(tensors, groups, ignore, n_fp16)
