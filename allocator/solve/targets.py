"""``target:`` in the constraints: fold an export target's restrictions into the constraints.

A target (``vllm``, ``gptqmodel``, ``llamacpp``, ...; see ``allocator.schema.targets``) admits only
some options, may fuse units (q/k/v, gate/up) so they share one option, and may need per-unit
rules (group sizes that divide a layer's input size; ggml types that need rows of 256). Solving
with ``target`` set gives a plan that the target's exporter accepts as is.
"""

from __future__ import annotations

from typing import Any

from allocator.errors import InputError
from allocator.schema.constraints import Constraints
from allocator.schema.table import SensitivityTable
from allocator.schema.targets import constraints_for_target


def with_target(
    constraints: Constraints, table: SensitivityTable, units: list[str] | None = None
) -> Constraints:
    """``constraints`` with the target's allowed options, per-unit rules, ties and tie presets
    added (the user's own restrictions still apply on top). ``units``: the unit names the plan
    covers (default: every table unit). Without a target, ``constraints`` is returned as is."""
    if constraints.target is None:
        return constraints
    names = set(units) if units is not None else {u.name for u in table.units}
    covered = [u for u in table.units if u.name in names]
    extra = constraints_for_target(constraints.target, table.options, covered)
    offered = {k for u in covered for k in table.losses[u.name]}
    target_keys = set(extra["allowed"]["keys"])
    user = constraints.allowed
    keys = [
        o.key
        for o in table.options
        if o.key in target_keys and o.key in offered and (user is None or user.allows(o))
    ]
    if not keys:
        raise InputError(
            f"constraints target = {constraints.target!r} admits none of the table's options "
            f"{sorted(offered)}{' left by allowed' if user is not None else ''}; profile options "
            f"the target supports (see 'allocator export --help') or drop the target"
        )
    fields = constraints.model_dump()
    fields["allowed"] = {**(user.model_dump() if user is not None else {}), "keys": keys}
    fields["rules"] += [
        {**rule, "source": _source(constraints.target, rule)} for rule in extra.get("rules", [])
    ]
    fields["ties"] += extra.get("ties", [])
    fields["tie_presets"] = list(dict.fromkeys(fields["tie_presets"] + extra["tie_presets"]))
    return Constraints.model_validate(fields)


def _source(target: str, rule: dict[str, Any]) -> str:
    """What a rule the target adds says about itself in errors (never the user's rules[k])."""
    allow = rule.get("allow", {})
    if "group_size" in allow:
        why = "group size must divide the layer's in_features"
    elif "bits" in allow:
        why = "rows that are not a multiple of 256 have no 2/3/6-bit ggml type"
    else:
        why = "per-unit restriction"
    return f"target {target!r} rule for {rule['pattern'][:60]!r}: {why}"
