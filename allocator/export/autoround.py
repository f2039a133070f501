"""AutoRound: ``layer_config`` keyed by exact module names.

AutoRound (``set_layer_config``) takes a key that is a supported layer's exact name as is; any
other key is made a regex (substring ``re.search`` unless it holds regex tokens) and applied to
every supported layer. Keys here are exact names, so no fuzzy expansion happens; fp16 units get
``bits: 16`` (AutoRound leaves layers with 16 bits unquantized).
"""

from __future__ import annotations

import json

from allocator.export import EXPORTERS
from allocator.export.base import ExportContext, ExportResult, header_lines, most_common_quantized
from allocator.schema.option import Option
from allocator.schema.plan import Plan
from allocator.schema.targets import enforce


def option_fields(option: Option) -> dict[str, int | bool | str]:
    if option.is_fp16:
        return {"bits": 16, "data_type": "float"}
    group = -1 if option.group_size is None else option.group_size
    return {"bits": option.bits, "group_size": group, "sym": option.symmetric, "data_type": "int"}


@EXPORTERS.register("autoround")
def export_autoround(plan: Plan, context: ExportContext) -> ExportResult:
    """AutoRound(model, tokenizer, bits=, group_size=, sym=, layer_config=) arguments."""
    enforce(plan, context.target_rules("autoround"), context.unit_shapes())
    base = most_common_quantized(plan) or Option.parse("b4-g128")
    layer_config = {a.unit: option_fields(a.option) for a in plan.assignments}
    base_fields = option_fields(base)
    config = {
        "bits": base_fields["bits"],
        "group_size": base_fields["group_size"],
        "sym": base_fields["sym"],
        "layer_config": layer_config,
    }
    if any(
        (a.unit == "lm_head" or a.unit.endswith(".lm_head")) and not a.option.is_fp16
        for a in plan.assignments
    ):
        config["quant_lm_head"] = True  # AutoRound skips lm_head unless asked
    n_fp16 = sum(a.option.is_fp16 for a in plan.assignments)
    report = header_lines(
        plan,
        "autoround",
        f"default scheme {base.key}; {len(layer_config)} exact-name layer_config entries "
        f"({n_fp16} kept at 16 bits)",
        "use: AutoRound(model, tokenizer, **json.load(open(OUT))).quantize_and_save(...)",
    )
    return ExportResult("autoround", config, {"": json.dumps(config, indent=2) + "\n"}, report)
