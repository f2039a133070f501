"""A written folder checked by the compressed-tensors library, and the write-then-verify step
``allocator apply --format compressed-tensors`` runs."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from allocator.deploy.compressed_tensors.folder import read_folder, save_compressed_tensors
from allocator.deploy.compressed_tensors.tensors import FORMAT_PACKED
from allocator.errors import UnsupportedError
from allocator.quant.quant_linear import QuantLinear
from allocator.schema.plan import Plan


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
