"""Closed-loop refinement: measure a plan end to end, correct the table, re-solve.

A table's losses are measured or estimated one unit at a time; a whole plan's loss is not their
sum (errors interact across layers). Each round here:

1. solves the current table and measures the plan's loss (e.g. mean KL on calibration windows);
2. splits the units into ``n_groups`` contiguous layer groups and measures the plan restricted to
   each group (only that group's units compressed, the rest unmodified);
3. scales every loss of a group's units by ``measured_g / predicted_g`` (damped by ``damping``
   in log space, divided by the groups' geometric mean, clipped to ``[1/max_scale, max_scale]``),
   so the table's relative scale across layer groups matches what the model does; a common
   factor would not change the plan, so only these ratios matter;
4. re-solves. It stops when the plan repeats or after ``rounds`` rounds, and returns the plan
   with the lowest measured loss (the first plan counts, so refinement never reports a plan
   that measured worse than the unrefined one on the measurement data).

``measure(choice)`` gets ``{unit: Option}`` for the units to compress and returns a loss; it is
the caller's (torch) code, so this module stays free of torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from allocator.schema.constraints import Constraints
from allocator.schema.option import Option
from allocator.schema.plan import Plan
from allocator.schema.table import SensitivityTable
from allocator.schema.unit import Unit

MeasureFn = Callable[[Mapping[str, Option]], float]
SolveFn = Callable[[SensitivityTable, Constraints], Plan]


@dataclass
class RefineRound:
    """One round: the plan solved, its predicted and measured loss, and per-group numbers."""

    plan: Plan
    predicted: float
    measured: float
    group_predicted: list[float] = field(default_factory=list)
    group_measured: list[float] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "predicted": self.predicted,
            "measured": self.measured,
            "avg_bits": self.plan.avg_bits,
            "group_predicted": self.group_predicted,
            "group_measured": self.group_measured,
            "scales": self.scales,
        }


@dataclass
class RefineResult:
    """All rounds, the index of the best (lowest measured) one, and the corrected table."""

    rounds: list[RefineRound]
    best: int
    table: SensitivityTable

    @property
    def plan(self) -> Plan:
        return self.rounds[self.best].plan

    @property
    def improved(self) -> bool:
        return self.rounds[self.best].measured < self.rounds[0].measured

    def summary(self) -> dict[str, object]:
        return {
            "rounds": [r.summary() for r in self.rounds],
            "best_round": self.best,
            "first_measured": self.rounds[0].measured,
            "best_measured": self.rounds[self.best].measured,
            "improved": self.improved,
        }


def layer_groups(units: Sequence[Unit], n_groups: int) -> list[list[str]]:
    """Contiguous groups of layers of about equal size; units without a layer join the last."""
    layers = sorted({u.layer for u in units if u.layer is not None})
    n = max(1, min(n_groups, len(layers) or 1))
    bucket = {layer: min(i * n // max(len(layers), 1), n - 1) for i, layer in enumerate(layers)}
    groups: list[list[str]] = [[] for _ in range(n)]
    for u in units:
        groups[bucket.get(u.layer, n - 1) if u.layer is not None else n - 1].append(u.name)
    return [g for g in groups if g]


def scale_table(
    table: SensitivityTable, groups: Sequence[Sequence[str]], scales: Sequence[float]
) -> SensitivityTable:
    """A copy of the table with every loss of group g's units multiplied by ``scales[g]``."""
    factor = {name: s for group, s in zip(groups, scales, strict=True) for name in group}
    losses = {
        unit: {key: value * factor.get(unit, 1.0) for key, value in row.items()}
        for unit, row in table.losses.items()
    }
    return table.model_copy(update={"losses": losses})


def _group_scales(
    measured: Sequence[float], predicted: Sequence[float], damping: float, max_scale: float
) -> list[float]:
    """Per-group ``(measured / predicted) ** damping``, divided by their geometric mean (a common
    factor does not change the plan, and a table may be on any absolute scale), then clipped."""
    floor = 1e-12
    logs = [
        damping * math.log(max(m, floor) / max(p, floor))
        for m, p in zip(measured, predicted, strict=True)
    ]
    centre = sum(logs) / len(logs)
    return [min(max(math.exp(x - centre), 1.0 / max_scale), max_scale) for x in logs]


def refine(
    table: SensitivityTable,
    constraints: Constraints,
    measure: MeasureFn,
    solve: SolveFn,
    *,
    rounds: int = 3,
    n_groups: int = 4,
    damping: float = 1.0,
    max_scale: float = 100.0,
    on_round: Callable[[RefineRound], None] | None = None,
) -> RefineResult:
    """Measure, correct per layer group, re-solve; see the module docstring."""
    groups = layer_groups(table.units, n_groups)
    current = table
    history: list[RefineRound] = []
    seen: set[str] = set()
    for index in range(rounds):
        plan = solve(current, constraints)
        choice = plan.options_by_unit()
        fingerprint = ",".join(f"{u}={o.key}" for u, o in sorted(choice.items()))
        if fingerprint in seen:
            break
        seen.add(fingerprint)
        base = {a.unit: table.losses[a.unit].get(a.option.key, 0.0) for a in plan.assignments}
        step = RefineRound(plan=plan, predicted=sum(base.values()), measured=measure(choice))
        last = index == rounds - 1
        if not last:
            for group in groups:
                now = sum(current.losses[u].get(choice[u].key, 0.0) for u in group)
                step.group_predicted.append(now)
                step.group_measured.append(measure({u: choice[u] for u in group}))
            step.scales = _group_scales(
                step.group_measured, step.group_predicted, damping, max_scale
            )
            current = scale_table(current, groups, step.scales)
        history.append(step)
        if on_round is not None:
            on_round(step)
    best = min(range(len(history)), key=lambda i: history[i].measured)
    return RefineResult(rounds=history, best=best, table=current)


def near_uniform_table(
    table: SensitivityTable, center: Option, *, below: int = 1, above: int = 2
) -> SensitivityTable | None:
    """The table restricted to options a second-order estimate judges reliably near ``center``.

    Kept: dense grouped options (no sparsity, no per-channel groups) with
    ``center.bits - below <= bits <= center.bits + above``, plus fp16. Those perturb each weight
    by at most about twice the uniform setting's error, where the table's single-unit,
    additive estimates hold best; large perturbations (2-bit steps below, 50% sparsity,
    per-channel scales) are where they fail on models nobody tuned for. ``None`` when fewer than
    two options remain (nothing to allocate).
    """
    keep = [
        o
        for o in table.options
        if o.is_fp16
        or (
            o.sparsity == 0
            and o.group_size is not None
            and center.bits - below <= o.bits <= center.bits + above
        )
    ]
    if len(keep) < 2:
        return None
    keys = {o.key for o in keep}
    losses = {u: {k: v for k, v in row.items() if k in keys} for u, row in table.losses.items()}
    if any(not row for row in losses.values()):
        return None
    resources = {
        name: {u: {k: v for k, v in row.items() if k in keys} for u, row in per_unit.items()}
        for name, per_unit in table.resources.items()
    }
    return table.model_copy(update={"options": keep, "losses": losses, "resources": resources})
