"""Plan: the chosen option of every unit, with predicted loss, size and the solver's certificate."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from allocator.schema.base import SchemaModel
from allocator.schema.option import Option
from allocator.schema.unit import MAX_NUMEL
from allocator.schema.version import FORMAT_VERSION, check_format_version

PlanStatus = Literal["optimal", "feasible", "time_limit", "heuristic"]


class Assignment(SchemaModel):
    """One unit's choice and what it costs."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    unit: str = Field(
        min_length=1,
        max_length=1000,
        description="The unit's full name.",
        examples=["model.layers.0.mlp.down_proj"],
    )
    option: Option = Field(
        description="The chosen option.", examples=[{"bits": 4, "group_size": 128}]
    )
    numel: int = Field(ge=1, le=MAX_NUMEL, description="Weights in the unit.", examples=[884736])
    cost_bits: float = Field(
        ge=0, description="Bits the unit occupies, metadata included.", examples=[3981312.0]
    )
    predicted_loss: float = Field(
        description="The table's loss for this unit and option.", examples=[0.012]
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Values of the constrained resources for this unit.",
        examples=[{"bops": 5.66e7}],
    )


class Plan(SchemaModel):
    """A solved allocation. ``lower_bound`` is a proven lower bound on the optimal loss (when the
    solver gives one); ``gap = (predicted_loss - lower_bound) / max(|predicted_loss|, eps)``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format_version: int = Field(
        default=FORMAT_VERSION,
        description="File format version; files newer than this allocator reads are refused.",
        examples=[FORMAT_VERSION],
    )
    assignments: list[Assignment] = Field(description="One entry per allocated unit.")
    predicted_loss: float = Field(
        description="Sum of the assignments' predicted losses.", examples=[1.93]
    )
    size_bits: float = Field(description="Total bits, metadata included.", examples=[2.8e8])
    size_bytes: float = Field(description="size_bits / 8.", examples=[3.5e7])
    total_numel: int = Field(description="Weights over all assignments.", examples=[8.0e7])
    avg_bits: float = Field(description="size_bits / total_numel.", examples=[3.5])
    budget_bits: float = Field(description="The budget the plan was solved for.", examples=[2.8e8])
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Sums of the constrained resources.",
        examples=[{"bops": 1.0e12}],
    )
    solver: str = Field(description="Backend that produced the plan.", examples=["mckp", "ilp"])
    status: PlanStatus = Field(
        description="optimal (proven), feasible, time_limit or heuristic.", examples=["optimal"]
    )
    lower_bound: float | None = Field(
        default=None,
        description="Proven lower bound on the optimal predicted loss, when the solver gives one.",
        examples=[1.93, None],
    )
    gap: float | None = Field(
        default=None,
        description="(predicted_loss - lower_bound) / |predicted_loss|.",
        examples=[0.0, None],
    )
    solve_seconds: float = Field(default=0.0, description="Wall time of the solve.", examples=[0.2])
    table_hash: str | None = Field(
        default=None, description="content_hash of the table solved.", examples=[None]
    )
    constraints_hash: str | None = Field(
        default=None, description="content_hash of the constraints solved.", examples=[None]
    )
    versions: dict[str, str] = Field(
        default_factory=dict,
        description="Versions of what produced the plan.",
        examples=[{"allocator": "0.1.0"}],
    )
    notes: list[str] = Field(
        default_factory=list,
        description="What the reductions did (ties merged, dominated options dropped, rules "
        "matching no unit...).",
        examples=[["ties: 60 units merged into 30 groups"]],
    )

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

    def summary(self) -> dict[str, Any]:
        """Machine-readable digest (everything but the per-unit assignments): counts per option
        and the share of weights per bit width, for CLIs, reports and services."""
        by_option = Counter(a.option.key for a in self.assignments)
        weights_by_bits: Counter[int] = Counter()
        for a in self.assignments:
            weights_by_bits[a.option.bits] += a.numel
        return {
            "units": len(self.assignments),
            "avg_bits": self.avg_bits,
            "size_bytes": self.size_bytes,
            "budget_bits": self.budget_bits,
            "predicted_loss": self.predicted_loss,
            "lower_bound": self.lower_bound,
            "gap": self.gap,
            "status": self.status,
            "solver": self.solver,
            "solve_seconds": self.solve_seconds,
            "resources": self.resources,
            "options": dict(sorted(by_option.items())),
            "weight_share_by_bits": {
                str(b): n / self.total_numel for b, n in sorted(weights_by_bits.items())
            },
            "notes": self.notes,
        }
