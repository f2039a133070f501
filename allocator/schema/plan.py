"""Plan: the chosen option of every unit, with predicted loss, size and the solver's certificate."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from allocator.schema.option import Option
from allocator.schema.unit import MAX_NUMEL
from allocator.schema.version import FORMAT_VERSION, check_format_version

PlanStatus = Literal["optimal", "feasible", "time_limit", "heuristic"]


class Assignment(BaseModel):
    """One unit's choice and what it costs."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    unit: str = Field(min_length=1, max_length=1000)
    option: Option
    numel: int = Field(ge=1, le=MAX_NUMEL)
    cost_bits: float = Field(ge=0)
    predicted_loss: float
    resources: dict[str, float] = Field(default_factory=dict)


class Plan(BaseModel):
    """A solved allocation. ``lower_bound`` is a proven lower bound on the optimal loss (when the
    solver gives one); ``gap = (predicted_loss - lower_bound) / max(|predicted_loss|, eps)``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format_version: int = FORMAT_VERSION
    assignments: list[Assignment]
    predicted_loss: float
    size_bits: float
    size_bytes: float
    total_numel: int
    avg_bits: float
    budget_bits: float
    resources: dict[str, float] = Field(default_factory=dict)
    solver: str
    status: PlanStatus
    lower_bound: float | None = None
    gap: float | None = None
    solve_seconds: float = 0.0
    table_hash: str | None = None
    constraints_hash: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        return check_format_version(version, "plan")

    @classmethod
    def from_assignments(
        cls,
        assignments: list[Assignment],
        *,
        budget_bits: float,
        solver: str,
        status: PlanStatus,
        lower_bound: float | None = None,
        **fields: Any,
    ) -> Plan:
        """A Plan whose totals (loss, size, numel, average bits, resources, gap) are summed from
        ``assignments``; ``fields`` fills the rest (hashes, versions, notes, solve time)."""
        numel = sum(a.numel for a in assignments)
        size_bits = sum(a.cost_bits for a in assignments)
        loss = sum(a.predicted_loss for a in assignments)
        names = assignments[0].resources if assignments else {}
        if lower_bound is not None:
            lower_bound = min(lower_bound, loss)
        return cls(
            assignments=assignments,
            predicted_loss=loss,
            size_bits=size_bits,
            size_bytes=size_bits / 8,
            total_numel=numel,
            avg_bits=size_bits / numel if numel else 0.0,
            budget_bits=budget_bits,
            resources={r: sum(a.resources[r] for a in assignments) for r in names},
            solver=solver,
            status=status,
            lower_bound=lower_bound,
            gap=None if lower_bound is None else (loss - lower_bound) / max(abs(loss), 1e-12),
            **fields,
        )

    def options_by_unit(self) -> dict[str, Option]:
        return {a.unit: a.option for a in self.assignments}

    def content_hash(self) -> str:
        payload = self.model_dump(mode="json", exclude={"solve_seconds", "versions"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
