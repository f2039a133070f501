"""NVIDIA ModelOpt: a ``mtq.quantize`` config with one wildcard entry per weight quantizer.

ModelOpt matches ``quant_cfg`` keys against quantizer module names with ``fnmatch``
(``model.layers.3.mlp.down_proj.weight_quantizer``), applies ``default`` to every quantizer first
and then each key in order (a later match overrides an earlier one). Here ``default`` disables
all quantizers and each planned unit gets ``*<unit>.weight_quantizer``; fp16 units get no entry
and stay disabled. INT4 uses ``block_sizes {-1: g}``, INT8 ``axis: 0`` (per channel). Written as
YAML because ``block_sizes`` has the integer key ``-1``.
"""

from __future__ import annotations

from typing import Any

import yaml

from allocator.export import EXPORTERS
from allocator.export.base import ExportContext, ExportResult, header_lines
from allocator.export.rules import enforce, get_rules
from allocator.schema.option import Option
from allocator.schema.plan import Plan


def quantizer_fields(option: Option) -> dict[str, Any]:
    if option.group_size is None:
        return {"num_bits": option.bits, "axis": 0, "enable": True}
    return {
        "num_bits": option.bits,
        "block_sizes": {-1: option.group_size, "type": "static"},
        "enable": True,
    }


@EXPORTERS.register("modelopt")
def export_modelopt(plan: Plan, context: ExportContext) -> ExportResult:
    """``{"quant_cfg": {...}, "algorithm": "max"}`` for ``modelopt.torch.quantization.quantize``."""
    enforce(plan, get_rules("modelopt"))
    quant_cfg: dict[str, Any] = {"default": {"enable": False}}
    for a in plan.assignments:
        if not a.option.is_fp16:
            quant_cfg[f"*{a.unit}.weight_quantizer"] = quantizer_fields(a.option)
    methods = {a.option.method for a in plan.assignments if not a.option.is_fp16}
    algorithm: Any = {"method": "awq_lite", "alpha_step": 0.1} if methods == {"awq"} else "max"
    config = {"quant_cfg": quant_cfg, "algorithm": algorithm}
    report = header_lines(
        plan,
        "modelopt",
        f"{len(quant_cfg) - 1} weight quantizers enabled; inputs, outputs and the rest disabled",
        "use: mtq.quantize(model, yaml.safe_load(open(OUT)), forward_loop)",
    )
    text = yaml.safe_dump(config, sort_keys=False)
    return ExportResult("modelopt", config, {"": text}, report)
