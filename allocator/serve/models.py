"""Request and response bodies of the HTTP API. Tables, constraints, plans and run settings are
the library's own models (``allocator.schema``, ``allocator.pipeline.RunSettings``), so the
OpenAPI document and the files the CLI reads describe one format."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from allocator.pipeline import RunSettings
from allocator.profile.estimators import DEFAULT_ESTIMATOR
from allocator.schema.constraints import Constraints
from allocator.schema.plan import Plan
from allocator.schema.table import SensitivityTable

Seconds = Annotated[float, Field(gt=0, le=24 * 3600)]
Gap = Annotated[float, Field(ge=0, le=1)]
Windows = Annotated[int, Field(ge=1, le=100_000)]
SeqLen = Annotated[int, Field(ge=2, le=1_000_000)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SolveRequest(Strict):
    table: SensitivityTable
    constraints: Constraints
    solver: str = Field("auto", max_length=64)
    time_limit: Seconds | None = None
    mip_gap: Gap = 0.0


class CheckRequest(Strict):
    plan: Plan
    table: SensitivityTable
    constraints: Constraints


class CheckResponse(BaseModel):
    ok: bool
    violations: list[str]


class ParetoRequest(Strict):
    table: SensitivityTable
    constraints: Constraints
    budgets: list[Annotated[float, Field(gt=0, le=64)]] = Field(min_length=1, max_length=256)
    solver: str = Field("auto", max_length=64)
    time_limit: Seconds | None = None
    mip_gap: Gap = 0.0


class Health(BaseModel):
    status: str
    version: str


class Ready(BaseModel):
    ready: bool
    workers: int
    queued: int
    running: int


class SolverInfo(BaseModel):
    """One solver backend as the registry describes it (``allocator solvers``)."""

    name: str
    aliases: list[str]
    description: str
    exact: bool
    supports: list[str]
    installed: bool


class Solvers(BaseModel):
    """The installed solver backends (names, and each one's registry entry)."""

    solvers: list[str]
    details: list[SolverInfo] = Field(default_factory=list)


class ErrorBody(BaseModel):
    """Every error answer: a message naming the field, value or limit, and what to do."""

    error: str
    min_size_bits: float | None = None
    binding: list[str] | None = None
    limit: int | None = None


# --- job settings, one model per kind ---------------------------------------------------------


# estimator settings a client may set (paths such as journals are the server's to choose)
ESTIMATOR_SETTINGS = frozenset({
    "probes", "reference", "kl_windows", "kl_seq_len", "proxy", "z_threshold", "eps",
    "calibration_units", "calibration_windows", "calibration_seq_len", "checkpoint_every_s",
})  # fmt: skip


class ProfileSettings(Strict):
    model: str = Field("smollm2", max_length=4096)
    text: list[Annotated[str, Field(max_length=4096)]] | None = Field(None, max_length=64)
    estimator: str = Field(DEFAULT_ESTIMATOR, max_length=64)
    options: str = Field("bits=2,3,4,5,6,8 group=128", max_length=4096)
    windows: Windows | None = None
    seq_len: SeqLen | None = None
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 4
    settings: dict[str, str | int | float | bool | None] = Field(default_factory=dict)

    @field_validator("settings")
    @classmethod
    def _known_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - ESTIMATOR_SETTINGS)
        if unknown:
            raise ValueError(
                f"estimator settings {unknown} are not accepted by the service; "
                f"use {sorted(ESTIMATOR_SETTINGS)}"
            )
        return value


class ApplySettings(Strict):
    plan: Plan
    model: str = Field("smollm2", max_length=4096)
    method: str | None = Field(None, max_length=64)
    calib_text: list[Annotated[str, Field(max_length=4096)]] | None = Field(None, max_length=64)
    calib_windows: Windows = 32
    seq_len: SeqLen = 512
    seed: int = 0
    act_order: bool = True
    calibration: Literal["plain", "sequential", "asymmetric"] = "asymmetric"
    bos: bool | None = None


class EvalSettings(Strict):
    model: str = Field("smollm2", max_length=4096)
    text: list[Annotated[str, Field(max_length=4096)]] | None = Field(None, max_length=64)
    windows: Windows = 32
    seq_len: SeqLen = 512
    reference: str | None = Field(None, max_length=4096)
    batch_size: Annotated[int, Field(ge=1, le=1024)] | None = None
    bos: bool | None = None


class ExportSettings(Strict):
    plan: Plan
    to: str = Field(max_length=64)
    model_type: str = Field("llama", max_length=64)


class SolveJob(Strict):
    kind: Literal["solve"]
    settings: SolveRequest


class ParetoJob(Strict):
    kind: Literal["pareto"]
    settings: ParetoRequest


class ProfileJob(Strict):
    kind: Literal["profile"]
    settings: ProfileSettings = Field(default_factory=lambda: ProfileSettings())


class ApplyJob(Strict):
    kind: Literal["apply"]
    settings: ApplySettings


class EvalJob(Strict):
    kind: Literal["eval"]
    settings: EvalSettings = Field(default_factory=lambda: EvalSettings())


class RunJob(Strict):
    kind: Literal["run"]
    settings: RunSettings = Field(default_factory=RunSettings)


class ExportJob(Strict):
    kind: Literal["export"]
    settings: ExportSettings


JobRequest = Annotated[
    SolveJob | ParetoJob | ProfileJob | ApplyJob | EvalJob | RunJob | ExportJob,
    Field(discriminator="kind"),
]
JOB_KINDS = ("solve", "pareto", "profile", "apply", "eval", "run", "export")
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATES = ("succeeded", "failed", "cancelled")


class Artifact(BaseModel):
    path: str
    kind: Literal["file", "folder"]
    bytes: int


class JobView(BaseModel):
    id: str
    kind: str
    state: JobState
    stage: str | None
    progress: float
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    attempts: int
    log_tail: list[str] = Field(default_factory=list)
    settings: dict[str, Any] | None = None


class JobList(BaseModel):
    jobs: list[JobView]


class ArtifactList(BaseModel):
    artifacts: list[Artifact]
