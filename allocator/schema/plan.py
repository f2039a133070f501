"""Plan: the chosen option of every unit, with predicted loss, size and the solver's certificate."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from allocator.schema.option import Option

PlanStatus = Literal["optimal", "feasible", "time_limit", "heuristic"]


class Assignment(BaseModel):
    """One unit's choice and what it costs."""

    model_config = ConfigDict(extra="forbid")

    unit: str
    option: Option
    numel: int
    cost_bits: float
    predicted_loss: float
    resources: dict[str, float] = Field(default_factory=dict)


class Plan(BaseModel):
    """A solved allocation. ``lower_bound`` is a proven lower bound on the optimal loss (when the
    solver gives one); ``gap = (predicted_loss - lower_bound) / max(|predicted_loss|, eps)``."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
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

    def options_by_unit(self) -> dict[str, Option]:
        return {a.unit: a.option for a in self.assignments}

    def content_hash(self) -> str:
        payload = self.model_dump(mode="json", exclude={"solve_seconds", "versions"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
