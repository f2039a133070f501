"""What every exporter returns, and helpers they share (grouping a plan by option, writing)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allocator.schema.io import atomic_write_text
from allocator.schema.option import Option
from allocator.schema.plan import Plan
from allocator.schema.targets import TargetRules, get_rules
from allocator.schema.unit import Unit


@dataclass
class ExportContext:
    """Inputs besides the plan: the model family (for tensor names), unit shapes when known, the
    target's rules (a serving variant's when one was asked for, e.g. ``gptqmodel+vllm``) and
    target-specific options (``desc_act`` for GPTQ targets)."""

    model_type: str = "llama"
    units: Sequence[Unit] | None = None
    rules: TargetRules | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def target_rules(self, default: str) -> TargetRules:
        """The rules to enforce: the requested target's, else ``default``'s."""
        return self.rules if self.rules is not None else get_rules(default)

    def unit_shapes(self) -> dict[str, tuple[int, int]]:
        return {u.name: u.shape for u in self.units or () if u.shape is not None}


@dataclass
class ExportResult:
    """A target's configuration: ``config`` as data, ``files`` as text to write, ``report`` lines.

    ``files`` maps a suffix to text: ``""`` is written to ``--out`` itself, any other suffix next to
    it (``out.stem + suffix``). ``report`` says how the plan was mapped and what it costs.
    """

    target: str
    config: Any
    files: dict[str, str]
    report: list[str] = field(default_factory=list)

    def paths(self, out: str | os.PathLike[str]) -> dict[str, Path]:
        base = Path(out)
        return {
            suffix: base if not suffix else base.with_name(base.stem + suffix)
            for suffix in self.files
        }

    def write(self, out: str | os.PathLike[str]) -> list[Path]:
        """Write every file atomically; return the paths written."""
        written = []
        for suffix, path in self.paths(out).items():
            atomic_write_text(path, self.files[suffix])
            written.append(path)
        return written


Exporter = Callable[[Plan, ExportContext], ExportResult]


def groups_by_option(plan: Plan) -> list[tuple[Option, list[str]]]:
    """Units sharing one option, in order of first appearance in the plan."""
    groups: dict[str, tuple[Option, list[str]]] = {}
    for a in plan.assignments:
        groups.setdefault(a.option.key, (a.option, []))[1].append(a.unit)
    return list(groups.values())


def most_common_quantized(plan: Plan) -> Option | None:
    """The quantized option covering the most weights (ties: first seen), used as a base config."""
    weight: dict[str, int] = {}
    first: dict[str, Option] = {}
    for a in plan.assignments:
        if a.option.is_fp16:
            continue
        weight[a.option.key] = weight.get(a.option.key, 0) + a.numel
        first.setdefault(a.option.key, a.option)
    if not weight:
        return None
    best = max(weight, key=lambda k: (weight[k], -list(first).index(k)))
    return first[best]


def header_lines(plan: Plan, target: str, *lines: str) -> list[str]:
    """A report: one line summing up the plan, then ``lines``."""
    return [
        f"allocator plan -> {target}: {len(plan.assignments)} units, "
        f"{plan.avg_bits:.4f} bits/weight planned ({plan.size_bytes / 2**20:.3f} MiB), "
        f"solver {plan.solver} ({plan.status})",
        *lines,
    ]
