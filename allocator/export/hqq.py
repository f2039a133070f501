"""HQQ through transformers: ``HqqConfig(dynamic_config=...)`` keyed by projection type.

transformers maps a module to its "linear tag" by dropping ``model``, ``layers`` and numeric parts
(``model.layers.3.self_attn.q_proj`` -> ``self_attn.q_proj``), so a plan can be expressed only
when every unit of a tag shares one option; otherwise the export refuses and names the tags.
Tags whose units are all fp16 go to ``skip_modules``. HQQ always stores a zero point.
"""

from __future__ import annotations

import json
from typing import Any

from allocator.export import EXPORTERS
from allocator.export.base import ExportContext, ExportResult, header_lines
from allocator.schema.plan import Plan
from allocator.schema.targets import enforce, kind_of


@EXPORTERS.register("hqq")
def export_hqq(plan: Plan, context: ExportContext) -> ExportResult:
    """``{"dynamic_config": {tag: {"nbits", "group_size"}}, "skip_modules": [...]}``."""
    enforce(plan, context.target_rules("hqq"), context.unit_shapes())
    dynamic: dict[str, dict[str, Any]] = {}
    skip = ["lm_head"]
    for a in plan.assignments:
        tag = kind_of(a.unit)
        if a.option.is_fp16:
            if tag not in skip:
                skip.append(tag)
        else:
            dynamic[tag] = {"nbits": a.option.bits, "group_size": a.option.group_size}
    config = {"dynamic_config": dynamic, "skip_modules": skip}
    report = header_lines(
        plan,
        "hqq",
        f"collapsed to {len(dynamic)} projection types; skip_modules {skip}",
        "use: HqqConfig(**json.load(open(OUT))) as quantization_config in from_pretrained",
    )
    return ExportResult("hqq", config, {"": json.dumps(config, indent=2) + "\n"}, report)
