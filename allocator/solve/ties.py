"""Tie presets: which units a runtime fuses and so must share one option.

``qkv`` ties the q/k/v projections of one attention block, ``gate_up`` the gate/up projections of
one MLP, ``moe_experts`` the same projection of every expert in one MoE block. A unit's ``tie``
field (set by the model scanner) is used when it names the preset's group; otherwise the key is
derived from the unit name. A ``target`` adds the presets its
runtime fuses (``allocator.solve.targets``).
"""

from __future__ import annotations

import re

from allocator.schema.unit import Unit

_PRESET_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "qkv": (re.compile(r"(self_attn|attention|attn)\.(q_proj|k_proj|v_proj)$"), r"\1.qkv"),
    "gate_up": (re.compile(r"(mlp|feed_forward)\.(gate_proj|up_proj|w1|w3)$"), r"\1.gate_up"),
}
_EXPERT_RE = re.compile(r"\.experts\.\d+\.")


def preset_key(unit: Unit, preset: str) -> str | None:
    """The group key of ``unit`` under ``preset`` (units with equal keys are tied), or None."""
    if preset == "moe_experts":
        return _EXPERT_RE.sub(".experts.*.", unit.name) if _EXPERT_RE.search(unit.name) else None
    pattern, replacement = _PRESET_PATTERNS[preset]
    suffix = replacement.split(".")[-1]
    if unit.tie is not None and unit.tie.endswith("." + suffix):
        return unit.tie
    return pattern.sub(replacement, unit.name) if pattern.search(unit.name) else None


def active_presets(tie_presets: list[str]) -> list[str]:
    """The presets asked for, each once, in a stable order."""
    return list(dict.fromkeys(tie_presets))
