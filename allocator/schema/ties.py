"""Tie presets: which units a runtime fuses and so must share one option.

``qkv`` ties the q/k/v projections of one attention block, ``gate_up`` the gate/up projections of
one MLP, ``moe_experts`` the same projection of every expert in one MoE block. A unit's ``tie``
field (set by the model scanner) is used when it names the preset's group; otherwise the key is
derived from the unit name. A ``target`` adds the presets its runtime fuses
(``allocator.schema.targets``).

This module is the only place that keys units by preset: the solver's reductions and checker, the
rule-based allocators (``allocator.solve.rules``) and the targets' plan checks all call
``preset_key`` / ``preset_groups``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import get_args

from allocator.schema.constraints import TiePreset
from allocator.schema.unit import Unit


@dataclass(frozen=True)
class Preset:
    """A tie preset: units whose names ``pattern`` matches share the key ``pattern.sub(key)``."""

    name: str
    description: str
    pattern: re.Pattern[str]
    key: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "qkv",
            "q/k/v projections of one attention block (fused qkv_proj)",
            re.compile(r"(self_attn|attention|attn)\.(q_proj|k_proj|v_proj)$"),
            r"\1.qkv",
        ),
        Preset(
            "gate_up",
            "gate/up projections of one MLP (fused gate_up_proj)",
            re.compile(r"(mlp|feed_forward)\.(gate_proj|up_proj|w1|w3)$"),
            r"\1.gate_up",
        ),
        Preset(
            "moe_experts",
            "the same projection of every expert of one MoE block",
            re.compile(r"\.experts\.\d+\."),
            ".experts.*.",
        ),
    )
}
# the constraints schema lists the same names (``Constraints.tie_presets``)
assert set(PRESETS) == set(get_args(TiePreset)), "tie presets and the constraints schema differ"


def preset_key(unit: Unit | str, preset: str) -> str | None:
    """The group key of ``unit`` (a Unit or a unit name) under ``preset``, or None.

    Units with equal keys are tied. For ``qkv``/``gate_up`` a Unit's own ``tie`` wins when it
    names the preset's group (fused projections the scanner found under other names).
    """
    spec = PRESETS[preset]
    name = unit if isinstance(unit, str) else unit.name
    tie = None if isinstance(unit, str) else unit.tie
    if preset == "moe_experts":
        return spec.pattern.sub(spec.key, name) if spec.pattern.search(name) else None
    suffix = spec.key.split(".")[-1]
    if tie is not None and tie.endswith("." + suffix):
        return tie
    return spec.pattern.sub(spec.key, name) if spec.pattern.search(name) else None


def active_presets(tie_presets: Iterable[str]) -> list[str]:
    """The presets asked for, each once, in a stable order."""
    return list(dict.fromkeys(tie_presets))


def preset_groups(units: Sequence[Unit | str], tie_presets: Iterable[str]) -> list[list[str]]:
    """Names of the units each preset ties together (groups of two or more, in unit order)."""
    groups: list[list[str]] = []
    for preset in active_presets(tie_presets):
        by_key: dict[str, list[str]] = {}
        for unit in units:
            key = preset_key(unit, preset)
            if key is not None:
                by_key.setdefault(key, []).append(unit if isinstance(unit, str) else unit.name)
        groups += [members for members in by_key.values() if len(members) > 1]
    return groups
