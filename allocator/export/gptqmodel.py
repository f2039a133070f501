"""GPTQModel: ``QuantizeConfig`` keyword arguments with a per-module ``dynamic`` override dict.

GPTQModel resolves a module by walking ``dynamic`` in order and applying ``re.match`` to the
module's full name (``model.layers.3.mlp.down_proj``): a ``-:`` key skips the module (kept in
fp16), a ``+:`` (or bare) key overrides ``bits``/``group_size``/``sym``; unmatched modules take
the base config. Every key here is anchored (``^...$``) and escaped, so it matches only the
units it lists. ``group_size=-1`` is per channel. GPTQModel leaves ``lm_head`` alone unless
``lm_head: True``, which is set when the plan quantizes it; ``desc_act`` comes from the export
options (default True, as allocator's own GPTQ uses act-order).
"""

from __future__ import annotations

import json

from allocator.export import EXPORTERS
from allocator.export.base import (
    ExportContext,
    ExportResult,
    groups_by_option,
    header_lines,
    most_common_quantized,
)
from allocator.patterns import anchored, exact_names_regex
from allocator.schema.option import Option
from allocator.schema.plan import Plan
from allocator.schema.targets import enforce


def option_fields(option: Option) -> dict[str, int | bool]:
    group = -1 if option.group_size is None else option.group_size
    return {"bits": option.bits, "group_size": group, "sym": option.symmetric}


def _is_lm_head(unit: str) -> bool:
    return unit == "lm_head" or unit.endswith(".lm_head")


@EXPORTERS.register("gptqmodel")
def export_gptqmodel(plan: Plan, context: ExportContext) -> ExportResult:
    """QuantizeConfig(**config) reproduces the plan; fp16 units become ``-:`` skips."""
    enforce(plan, context.target_rules("gptqmodel"), context.unit_shapes())
    base = most_common_quantized(plan) or Option.parse("b4-g128")
    dynamic: dict[str, dict[str, int | bool]] = {}
    skipped: list[str] = []
    for option, units in groups_by_option(plan):
        if option.is_fp16:
            skipped.extend(units)
        elif option.key != base.key:
            dynamic["+:" + anchored(exact_names_regex(units))] = option_fields(option)
    if skipped:  # GPTQModel moves "-:" keys first anyway; put them first so the order is honest
        dynamic = {"-:" + anchored(exact_names_regex(skipped)): {}, **dynamic}
    lm_head = any(_is_lm_head(a.unit) and not a.option.is_fp16 for a in plan.assignments)
    desc_act = bool(context.options.get("desc_act", True))
    config = {**option_fields(base), "desc_act": desc_act, "lm_head": lm_head, "dynamic": dynamic}
    methods = sorted({a.option.method for a in plan.assignments if not a.option.is_fp16})
    report = header_lines(
        plan,
        "gptqmodel",
        f"base: {base.key} ({option_fields(base)}); {len(dynamic)} dynamic keys; "
        f"{len(skipped)} units skipped (fp16)",
        f"plan methods {methods}: GPTQModel quantizes every non-skipped unit with GPTQ "
        f"(desc_act={desc_act}: allocator's own GPTQ uses act-order; set options desc_act)",
        f"lm_head: {'quantized as planned' if lm_head else 'not quantized (not in the plan or fp16)'}",
        "use: QuantizeConfig(**json.load(open(OUT))) then model.quantize(calibration)",
    )
    text = json.dumps(config, indent=2) + "\n"
    return ExportResult("gptqmodel", config, {"": text}, report)
