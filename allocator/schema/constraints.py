"""Constraints a plan must satisfy: budget, overhead model, allowed options, pins, bounds, ties.

Unit patterns are regular expressions (RE2 syntax, see ``allocator.patterns``) matched with
``re.search`` semantics against the unit's full name (anchor them with ``^...$`` for exact names).
A pattern that matches no unit is an error. Every number must be finite and within bounds
(``MAX_VALUE``); a file from a newer allocator (``format_version`` above ours) is refused.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from allocator.cost import SizeModel
from allocator.errors import InputError
from allocator.patterns import check_pattern
from allocator.schema.option import Option
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


class Budget(BaseModel):
    """Exactly one of ``avg_bits`` (bits per weight over all units, overhead included) or ``total_bytes``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    avg_bits: float | None = Field(default=None, gt=0, le=1e6)
    total_bytes: float | None = Field(default=None, gt=0, le=MAX_VALUE)

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


class OptionFilter(BaseModel):
    """Options allowed: every given field must match (a missing field allows everything)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    keys: list[str] | None = None
    bits: list[int] | None = None
    group_size: list[int | None] | None = None
    sparsity: list[float] | None = None
    methods: list[str] | None = None

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


class UnitRule(BaseModel):
    """Per-pattern restrictions: allowed options, a pin, and bounds on bits and sparsity."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    pattern: str = Field(min_length=1)
    allow: OptionFilter | None = None
    pin: str | None = None
    min_bits: int | None = Field(default=None, ge=1, le=16)
    max_bits: int | None = Field(default=None, ge=1, le=16)
    max_sparsity: float | None = Field(default=None, ge=0, le=1)

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


class ResourceLimit(BaseModel):
    """A cap on an extra resource summed over units.

    Values come from the table's ``resources[name]`` when present, else from a built-in formula:
    ``bops`` (bits x 16-bit activations x MACs per token, i.e. ``bits * 16 * numel``).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=200)
    max: float = Field(ge=0, le=MAX_VALUE)


class Constraints(BaseModel):
    """Everything the user asks of a plan. Read from YAML, TOML or JSON constraint files."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format_version: int = FORMAT_VERSION
    budget: Budget
    overhead: SizeModel = Field(default_factory=SizeModel)
    allowed: OptionFilter | None = None
    rules: list[UnitRule] = Field(default_factory=list)
    ties: list[list[str]] = Field(default_factory=list)
    tie_presets: list[TiePreset] = Field(default_factory=list)
    target: str | None = None
    resources: list[ResourceLimit] = Field(default_factory=list)
    max_distinct_options: int | None = Field(default=None, ge=1)
    include: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        return check_format_version(version, "constraints")

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
