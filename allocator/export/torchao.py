"""torchao: an ``FqnToConfig`` (alias ``ModuleFqnToConfig``) in torchao's own serialized form.

torchao resolves a module by exact FQN key first, then by the first ``re:`` key whose regex
``re.fullmatch``-es the FQN, then ``_default``. Keys here are ``re:`` regexes of exact names (one
per option), fp16 units map to ``None``, and there is no ``_default``, so modules outside the plan
are never touched. Options become ``IntxWeightOnlyConfig`` (``torch.int1``..``torch.int8``,
``PerGroup(g)`` or ``PerAxis(0)``, symmetric or asymmetric mapping). The file loads with
``torchao.core.config.config_from_dict`` and is what transformers' ``TorchAoConfig`` stores.
"""

from __future__ import annotations

import json
from typing import Any

from allocator.export import EXPORTERS
from allocator.export.base import ExportContext, ExportResult, groups_by_option, header_lines
from allocator.patterns import exact_names_regex
from allocator.schema.option import Option
from allocator.schema.plan import Plan
from allocator.schema.targets import enforce


def intx_config(option: Option) -> dict[str, Any]:
    """Serialized ``IntxWeightOnlyConfig`` of an option (torchao config_to_dict layout)."""
    if option.group_size is None:
        granularity = {"_type": "PerAxis", "_version": 1, "_data": {"axis": 0}}
    else:
        granularity = {
            "_type": "PerGroup",
            "_version": 1,
            "_data": {"group_size": option.group_size},
        }
    mapping = "SYMMETRIC" if option.symmetric else "ASYMMETRIC"
    return {
        "_type": "IntxWeightOnlyConfig",
        "_version": 2,
        "_data": {
            "weight_dtype": {"_type": "torch.dtype", "_data": f"int{option.bits}"},
            "granularity": granularity,
            "mapping_type": {"_type": "MappingType", "_data": mapping},
        },
    }


@EXPORTERS.register("torchao")
def export_torchao(plan: Plan, context: ExportContext) -> ExportResult:
    """Serialized FqnToConfig: one ``re:`` key per option, fp16 units mapped to None."""
    enforce(plan, context.target_rules("torchao"), context.unit_shapes())
    fqn_to_config: dict[str, Any] = {}
    for option, units in groups_by_option(plan):
        key = "re:" + exact_names_regex(units)
        fqn_to_config[key] = None if option.is_fp16 else intx_config(option)
    config = {"_type": "FqnToConfig", "_version": 1, "_data": {"fqn_to_config": fqn_to_config}}
    report = header_lines(
        plan,
        "torchao",
        f"{len(fqn_to_config)} re: keys (one per option), fullmatch semantics, no _default",
        "use: quantize_(model, config_from_dict(json.load(open(OUT)))) "
        "or TorchAoConfig(quant_type=config_from_dict(...))",
    )
    return ExportResult("torchao", config, {"": json.dumps(config, indent=2) + "\n"}, report)
