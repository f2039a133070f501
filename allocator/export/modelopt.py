"""NVIDIA ModelOpt: a ``mtq.quantize`` config with one wildcard entry per weight quantizer.

ModelOpt matches wildcard patterns against quantizer module names with ``fnmatch``
(``model.layers.3.mlp.down_proj.weight_quantizer``) and applies entries in order, a later match
overriding an earlier one. The main file uses the list format of ModelOpt >= 0.47
(``[{"quantizer_name": "*", "enable": False}, {"quantizer_name": ..., "cfg": {...}}, ...]``); the
``.legacy.yaml`` companion holds the same thing as the older dict format (``default`` applied
first, then the keys), which 0.47 still reads with a deprecation warning. Every quantizer is
disabled first and each planned unit gets ``*<unit>.weight_quantizer``; fp16 units get no entry
and stay disabled. INT4 uses ``block_sizes {-1: g}``, INT8 ``axis: 0`` (per channel). Written as
YAML because ``block_sizes`` has the integer key ``-1``.
"""

from __future__ import annotations

from typing import Any

import yaml

from allocator.export import EXPORTERS
from allocator.export.base import ExportContext, ExportResult, header_lines
from allocator.schema.option import Option
from allocator.schema.plan import Plan
from allocator.schema.targets import enforce


def quantizer_fields(option: Option) -> dict[str, Any]:
    """TensorQuantizer attributes of a symmetric integer option."""
    if option.group_size is None:
        return {"num_bits": option.bits, "axis": 0}
    return {"num_bits": option.bits, "block_sizes": {-1: option.group_size, "type": "static"}}


@EXPORTERS.register("modelopt")
def export_modelopt(plan: Plan, context: ExportContext) -> ExportResult:
    """``{"quant_cfg": [...], "algorithm": "max"}`` for ``modelopt.torch.quantization.quantize``."""
    enforce(plan, context.target_rules("modelopt"), context.unit_shapes())
    entries: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
    legacy: dict[str, Any] = {"default": {"enable": False}}
    for a in plan.assignments:
        if not a.option.is_fp16:
            pattern = f"*{a.unit}.weight_quantizer"
            entries.append(
                {"quantizer_name": pattern, "cfg": quantizer_fields(a.option), "enable": True}
            )
            legacy[pattern] = {**quantizer_fields(a.option), "enable": True}
    methods = {a.option.method for a in plan.assignments if not a.option.is_fp16}
    algorithm: Any = {"method": "awq_lite", "alpha_step": 0.1} if methods == {"awq"} else "max"
    config = {"quant_cfg": entries, "algorithm": algorithm}
    legacy_config = {"quant_cfg": legacy, "algorithm": algorithm}
    report = header_lines(
        plan,
        "modelopt",
        f"{len(entries) - 1} weight quantizers enabled; inputs, outputs and the rest disabled",
        "use: mtq.quantize(model, yaml.safe_load(open(OUT)), forward_loop)",
    )
    files = {
        "": yaml.safe_dump(config, sort_keys=False),
        ".legacy.yaml": yaml.safe_dump(legacy_config, sort_keys=False),
    }
    return ExportResult("modelopt", config, files, report)
