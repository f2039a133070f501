"""GPTQModel: ``QuantizeConfig`` keyword arguments with a per-module ``dynamic`` override dict.

GPTQModel resolves a module by walking ``dynamic`` in order and applying ``re.match`` to the
module's full name (``model.layers.3.mlp.down_proj``): a ``-:`` key skips the module (kept in
fp16), a ``+:`` (or bare) key overrides ``bits``/``group_size``/``sym``; unmatched modules take
the base config. Every key here is anchored (``^...$``) and escaped, so it matches only the
units it lists. ``group_size=-1`` is per channel.
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
from allocator.schema.targets import enforce, get_rules


def option_fields(option: Option) -> dict[str, int | bool]:
    group = -1 if option.group_size is None else option.group_size
    return {"bits": option.bits, "group_size": group, "sym": option.symmetric}


@EXPORTERS.register("gptqmodel")
def export_gptqmodel(plan: Plan, context: ExportContext) -> ExportResult:
    """QuantizeConfig(**config) reproduces the plan; fp16 units become ``-:`` skips."""
    enforce(plan, get_rules("gptqmodel"), context.unit_shapes())
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
    config = {**option_fields(base), "desc_act": False, "dynamic": dynamic}
    methods = sorted({a.option.method for a in plan.assignments if not a.option.is_fp16})
    report = header_lines(
        plan,
        "gptqmodel",
        f"base: {base.key} ({option_fields(base)}); {len(dynamic)} dynamic keys; "
        f"{len(skipped)} units skipped (fp16)",
        f"plan methods {methods}: GPTQModel quantizes every non-skipped unit with GPTQ",
        "use: QuantizeConfig(**json.load(open(OUT))) then model.quantize(calibration)",
    )
    text = json.dumps(config, indent=2) + "\n"
    return ExportResult("gptqmodel", config, {"": text}, report)
