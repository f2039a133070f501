"""Constraints a plan must satisfy: budget, overhead model, allowed options, pins, bounds, ties.

Unit patterns are regular expressions (RE2 syntax, see ``allocator.patterns``) matched with
``re.search`` semantics against the unit's full name (anchor them with ``^...$`` for exact names).
A pattern that matches no unit is a warning (``AllocatorWarning``, also noted in the plan), or an
error with ``strict: true``. Every number must be finite and within bounds
(``MAX_VALUE``); a file from a newer allocator (``format_version`` above ours) is refused.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from allocator.errors import InputError
from allocator.patterns import check_pattern
from allocator.schema.base import SchemaModel
from allocator.schema.option import Option
from allocator.schema.size import SizeModel
from allocator.schema.version import FORMAT_VERSION, check_format_version

MAX_VALUE = 1e30  # budgets and resource limits: far beyond any model, far below float overflow

TiePreset = Literal["qkv", "gate_up", "moe_experts"]


def _valid_pattern(pattern: str, prefix: str = "") -> str:
    """A ValueError (so pydantic names the field) when ``pattern`` does not compile."""
    try:
        return check_pattern(pattern, "")
    except InputError as exc:
        raise ValueError(f"{prefix}{exc}") from None


def _option_key(spec: str) -> str:
    """The canonical key of ``spec``; a ValueError (so pydantic names the file and field) else."""
    try:
        return Option.parse(spec, where="option").key
    except InputError as exc:
        raise ValueError(str(exc).removeprefix("option: ")) from None


class Budget(SchemaModel):
    """Exactly one of ``avg_bits`` (bits per weight over all units, overhead included) or ``total_bytes``."""

    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, json_schema_extra={"examples": [{"avg_bits": 3.5}]}
    )

    avg_bits: float | None = Field(
        default=None,
        gt=0,
        le=1e6,
        description="Average bits per weight over the allocated units, metadata included.",
        examples=[3.5, None],
    )
    total_bytes: float | None = Field(
        default=None,
        gt=0,
        le=MAX_VALUE,
        description="Total size in bytes of the allocated units, metadata included.",
        examples=[None, 6.0e7],
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Budget:
        if (self.avg_bits is None) == (self.total_bytes is None):
            raise ValueError("budget: give exactly one of avg_bits (e.g. 3.5) or total_bytes")
        return self

    def total_bits(self, total_numel: int) -> float:
        if self.avg_bits is not None:
            return self.avg_bits * total_numel
        assert self.total_bytes is not None
        return self.total_bytes * 8.0


class OptionFilter(SchemaModel):
    """Options allowed: every given field must match (a missing field allows everything)."""

    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, json_schema_extra={"examples": [{"bits": [3, 4]}]}
    )

    keys: list[str] | None = Field(
        default=None,
        description="Option keys allowed (b4-g128, b3-g64-sym, fp16...).",
        examples=[["b4-g128", "b3-g128"], None],
    )
    bits: list[int] | None = Field(
        default=None, description="Bit widths allowed (16: fp16).", examples=[[2, 3, 4, 16]]
    )
    group_size: list[int | None] | None = Field(
        default=None,
        description="Group sizes allowed; null (or -1) is per channel. fp16 always passes.",
        examples=[[64, 128, None]],
    )
    sparsity: list[float] | None = Field(
        default=None, description="Sparsity ratios allowed.", examples=[[0.0, 0.5]]
    )
    methods: list[str] | None = Field(
        default=None, description="Quantization methods allowed.", examples=[["gptq"]]
    )

    @field_validator("group_size", mode="before")
    @classmethod
    def _per_channel_minus_one(cls, groups: object) -> object:
        if isinstance(groups, list):
            return [None if g == -1 and not isinstance(g, bool) else g for g in groups]
        return groups

    @field_validator("keys")
    @classmethod
    def _canonical_keys(cls, keys: list[str] | None) -> list[str] | None:
        return None if keys is None else [_option_key(k) for k in keys]

    def allows(self, option: Option) -> bool:
        if self.keys is not None and option.key not in self.keys:
            return False
        if self.bits is not None and option.bits not in self.bits:
            return False
        if (
            self.group_size is not None
            and option.group_size not in self.group_size
            and not option.is_fp16
        ):
            return False
        if self.sparsity is not None and not any(
            abs(option.sparsity - s) < 1e-9 for s in self.sparsity
        ):
            return False
        return not (self.methods is not None and option.method not in self.methods)


class UnitRule(SchemaModel):
    """Per-pattern restrictions: allowed options, a pin, and bounds on bits and sparsity."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={"examples": [{"pattern": r"\.down_proj$", "min_bits": 4}]},
    )

    pattern: str = Field(
        min_length=1,
        description="RE2 regular expression searched in each unit's full name.",
        examples=[r"\.down_proj$", "^lm_head$"],
    )
    allow: OptionFilter | None = Field(
        default=None, description="Options the matched units may use.", examples=[None]
    )
    pin: str | None = Field(
        default=None, description="One option key the matched units must use.", examples=["b8-g128"]
    )
    min_bits: int | None = Field(
        default=None, ge=1, le=16, description="Smallest bit width allowed.", examples=[4]
    )
    max_bits: int | None = Field(
        default=None, ge=1, le=16, description="Largest bit width allowed.", examples=[8]
    )
    max_sparsity: float | None = Field(
        default=None, ge=0, le=1, description="Largest sparsity ratio allowed.", examples=[0.0]
    )
    source: str | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        max_length=500,
        description="Who added the rule (set for rules an export target adds, so errors "
        "name the target's rule rather than yours).",
        examples=[None, "target gptqmodel+vllm: group size must divide in_features"],
    )

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, pattern: str) -> str:
        return _valid_pattern(pattern)

    @field_validator("pin")
    @classmethod
    def _canonical_pin(cls, pin: str | None) -> str | None:
        return None if pin is None else _option_key(pin)

    @model_validator(mode="after")
    def _bounds_order(self) -> UnitRule:
        if (
            self.min_bits is not None
            and self.max_bits is not None
            and self.min_bits > self.max_bits
        ):
            raise ValueError(
                f"rule {self.pattern!r}: min_bits={self.min_bits} > max_bits={self.max_bits}"
            )
        return self


class ResourceLimit(SchemaModel):
    """A cap on an extra resource summed over units.

    Values come from the table's ``resources[name]`` when present, else from a built-in formula:
    ``bops`` (bits x 16-bit activations x MACs per token, i.e. ``bits * 16 * numel``).
    """

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={"examples": [{"name": "bops", "max": 1.0e12}]},
    )

    name: str = Field(
        min_length=1,
        max_length=200,
        description="Resource name: a key of the table's resources, or 'bops'.",
        examples=["bops", "latency_us"],
    )
    max: float = Field(
        ge=0, le=MAX_VALUE, description="Largest allowed sum over units.", examples=[1.0e12]
    )


class Constraints(SchemaModel):
    """Everything the user asks of a plan. Read from YAML, TOML or JSON constraint files."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {"budget": {"avg_bits": 3.5}},
                {
                    "budget": {"avg_bits": 4.25},
                    "target": "gptqmodel+vllm",
                    "rules": [{"pattern": "^lm_head$", "pin": "b8-g128-sym"}],
                },
            ]
        },
    )

    format_version: int = Field(
        default=FORMAT_VERSION,
        description="File format version; files newer than this allocator reads are refused.",
        examples=[FORMAT_VERSION],
    )
    budget: Budget = Field(description="The size budget.", examples=[{"avg_bits": 3.5}])
    overhead: SizeModel = Field(
        default_factory=SizeModel,
        description="How sizes are counted; when omitted and a target is set, the target's "
        "own size model is used.",
        examples=[{"scale_bits": 16, "zero_bits": 16}],
    )
    allowed: OptionFilter | None = Field(
        default=None, description="Options every unit may use.", examples=[{"bits": [2, 3, 4]}]
    )
    rules: list[UnitRule] = Field(
        default_factory=list,
        description="Per-pattern restrictions, applied in order.",
        examples=[[{"pattern": r"\.down_proj$", "min_bits": 4}]],
    )
    ties: list[list[str]] = Field(
        default_factory=list,
        description="Groups of unit-name patterns whose units must share one option.",
        examples=[[[r"\.q_proj$", r"\.k_proj$"]]],
    )
    tie_presets: list[TiePreset] = Field(
        default_factory=list,
        description="Built-in ties: qkv, gate_up, moe_experts.",
        examples=[["qkv", "gate_up"]],
    )
    target: str | None = Field(
        default=None,
        description="Export target whose rules and size model the plan must fit "
        "(gptqmodel, autoround, compressed-tensors, vllm, llamacpp, torchao, modelopt, hqq); "
        "'+vllm' adds vLLM's serving rules (e.g. gptqmodel+vllm).",
        examples=[None, "gptqmodel", "gptqmodel+vllm", "llamacpp"],
    )
    resources: list[ResourceLimit] = Field(
        default_factory=list,
        description="Caps on extra resources summed over units.",
        examples=[[{"name": "bops", "max": 1.0e12}]],
    )
    max_distinct_options: int | None = Field(
        default=None,
        ge=1,
        description="At most this many distinct options in the whole plan.",
        examples=[None, 3],
    )
    include: list[str] | None = Field(
        default=None,
        description="Only units matching one of these patterns are allocated.",
        examples=[None, [r"^model\.layers\."]],
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Units matching one of these patterns are left out.",
        examples=[["lm_head"]],
    )
    strict: bool = Field(
        default=False,
        exclude_if=lambda v: v is False,
        description="A rule, tie, include or exclude pattern that matches no unit is an error "
        "(default: a warning, noted in the plan).",
        examples=[False, True],
    )

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        return check_format_version(version, "constraints")

    @model_validator(mode="after")
    def _target_size_model(self) -> Constraints:
        """Without an ``overhead`` of its own, a target's constraints count sizes as the
        target stores them (``allocator.schema.size.size_model_for``)."""
        if self.target is not None:
            from allocator.schema.targets import size_model_for  # targets -> ties -> here

            size = size_model_for(self.target)  # an unknown target is refused here
            if "overhead" not in self.model_fields_set:
                object.__setattr__(self, "overhead", size)
        return self

    @field_validator("ties")
    @classmethod
    def _ties_nonempty(cls, ties: list[list[str]]) -> list[list[str]]:
        for i, group in enumerate(ties):
            if len(group) < 1:
                raise ValueError(f"ties[{i}] is empty; list unit names or patterns to tie")
            for j, pattern in enumerate(group):
                _valid_pattern(pattern, f"ties[{i}][{j}]: ")
        return ties

    @field_validator("include")
    @classmethod
    def _include_patterns(cls, patterns: list[str] | None) -> list[str] | None:
        for k, pattern in enumerate(patterns or []):
            _valid_pattern(pattern, f"include[{k}]: ")
        return patterns

    @field_validator("exclude")
    @classmethod
    def _exclude_patterns(cls, patterns: list[str]) -> list[str]:
        for k, pattern in enumerate(patterns):
            _valid_pattern(pattern, f"exclude[{k}]: ")
        return patterns

    def content_hash(self) -> str:
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def simple(cls, avg_bits: float, **kwargs: Any) -> Constraints:
        """Shorthand for a plain average-bits budget."""
        return cls(budget=Budget(avg_bits=avg_bits), **kwargs)
