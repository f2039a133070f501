"""Compression options (bits, group size, symmetry, sparsity, method) and their string keys.

Key grammar, one token per field, joined by '-':
``b{bits}`` then ``g{group}`` (``gc`` = one group per output channel), optionally ``sym``,
``s{ratio}`` (unstructured sparsity) or ``{n}:{m}`` (N:M sparsity), and ``@{method}`` when
the method is not ``rtn``. ``fp16`` keeps the weight unquantized. Examples: ``b4-g128``,
``b3-g64-sym``, ``b4-g128-s0.5``, ``b4-g128-2:4@gptq``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from allocator.errors import InputError
from allocator.patterns import shown
from allocator.schema.base import SchemaModel

SparsityPattern = Literal["none", "unstructured", "nm"]

_KEY_RE = re.compile(
    r"^b(?P<bits>\d{1,3})-g(?P<group>c|\d{1,10})(?P<sym>-sym)?"
    r"(?:-s(?P<ratio>0?\.\d{1,17}|0|1)|-(?P<n>\d{1,5}):(?P<m>\d{1,5}))?"
    r"(?:@(?P<method>[A-Za-z0-9_]{1,64}))?$"
)
_FP16_RE = re.compile(r"^fp16(?:@(?P<method>[A-Za-z0-9_]{1,64}))?$")
MAX_GROUP = 2**31
MAX_NM = 1024
MAX_KEY_CHARS = 200


class Option(SchemaModel):
    """One way to store a unit's weight.

    ``group_size=None`` (or ``-1``, as GPTQ libraries write it) means one group per output
    channel (the group spans the input size). ``bits=16`` means the weight is kept in fp16 (no
    grouping, no sparsity metadata).
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        json_schema_extra={"examples": [{"bits": 4, "group_size": 128}, {"bits": 16}]},
    )

    bits: int = Field(
        ge=1,
        le=16,
        description="Bits per stored weight value: 1-8, or 16 to keep the weight in fp16.",
        examples=[4, 3, 16],
    )
    group_size: int | None = Field(
        default=128,
        ge=1,
        le=MAX_GROUP,
        description="Weights per quantization group along the input dimension; null (or -1) "
        "for one group per output channel.",
        examples=[128, 64, None],
    )
    symmetric: bool = Field(
        default=False,
        description="Symmetric quantization (no zero point stored by the default size model).",
        examples=[False, True],
    )
    sparsity: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Fraction of weights pruned (set from nm for N:M sparsity).",
        examples=[0.0, 0.5],
    )
    sparsity_pattern: SparsityPattern = Field(
        default="none",
        description="'none', 'unstructured' (any ratio, 1-bit mask) or 'nm' (N of every M kept).",
        examples=["none", "nm"],
    )
    nm: tuple[int, int] | None = Field(
        default=None,
        description="(N, M) for N:M sparsity: N weights kept in every M, e.g. [2, 4].",
        examples=[None, [2, 4]],
    )
    method: str = Field(
        default="rtn",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_]+$",
        description="Quantization method the loss was measured with (rtn, gptq, awq...).",
        examples=["rtn", "gptq"],
    )

    @field_validator("group_size", mode="before")
    @classmethod
    def _per_channel_minus_one(cls, value: object) -> object:
        """``-1`` is per channel, as GPTQ libraries write it."""
        return None if value == -1 and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _consistent(self) -> Option:
        if self.bits not in (1, 2, 3, 4, 5, 6, 7, 8, 16):
            raise ValueError(f"bits={self.bits}: use 1-8, or 16 to keep the weight in fp16")
        if self.sparsity_pattern == "nm":
            if self.nm is None or not (0 < self.nm[0] < self.nm[1] <= MAX_NM):
                raise ValueError(
                    f"nm={self.nm}: N:M sparsity needs 0 < N < M <= {MAX_NM}, e.g. (2, 4)"
                )
            expected = 1.0 - self.nm[0] / self.nm[1]
            if abs(self.sparsity - expected) > 1e-9:
                object.__setattr__(self, "sparsity", expected)
        elif self.nm is not None:
            raise ValueError("nm is set but sparsity_pattern is not 'nm'")
        if self.sparsity_pattern == "none" and self.sparsity > 0:
            object.__setattr__(self, "sparsity_pattern", "unstructured")
        if self.sparsity_pattern == "unstructured" and self.sparsity == 0:
            object.__setattr__(self, "sparsity_pattern", "none")
        return self

    @property
    def is_fp16(self) -> bool:
        return self.bits == 16

    @property
    def key(self) -> str:
        """The canonical string form (see module docstring)."""
        suffix = "" if self.method == "rtn" else f"@{self.method}"
        if self.is_fp16 and self.sparsity == 0:
            return "fp16" + suffix
        group = "c" if self.group_size is None else str(self.group_size)
        parts = [f"b{self.bits}", f"g{group}"]
        if self.symmetric:
            parts.append("sym")
        if self.sparsity_pattern == "nm" and self.nm is not None:
            parts.append(f"{self.nm[0]}:{self.nm[1]}")
        elif self.sparsity > 0:
            parts.append(f"s{self.sparsity:g}")
        return "-".join(parts) + suffix

    def __str__(self) -> str:
        return self.key

    @classmethod
    def parse(cls, spec: str | dict[str, Any] | Option, *, where: str = "option") -> Option:
        """Build an Option from a key string, a dict of fields, or an Option."""
        if isinstance(spec, Option):
            return spec
        if isinstance(spec, dict):
            try:
                return cls.model_validate(spec)
            except ValueError as exc:
                raise InputError(f"{where}: invalid option {shown(spec)}: {_reason(exc)}") from None
        if not isinstance(spec, str):
            raise InputError(
                f"{where}: option must be a string like 'b4-g128' or a mapping, got {shown(spec)}"
            )
        text = spec.strip()
        if len(text) > MAX_KEY_CHARS:
            raise InputError(
                f"{where}: option key {shown(spec)} is too long; write it as b<bits>-g<group|c>"
                "[-sym][-s<ratio>|-<n>:<m>][@method], e.g. 'b4-g128'"
            )
        fp16 = _FP16_RE.match(text)
        if fp16:
            return cls(bits=16, group_size=None, method=fp16.group("method") or "rtn")
        match = _KEY_RE.match(text)
        if not match:
            raise InputError(
                f"{where}: cannot read option {shown(spec)}; write it as b<bits>-g<group|c>[-sym]"
                "[-s<ratio>|-<n>:<m>][@method], e.g. 'b4-g128', 'b3-g64-sym', 'b4-g128-2:4', or 'fp16'"
            )
        fields: dict[str, Any] = {
            "bits": int(match.group("bits")),
            "group_size": None if match.group("group") == "c" else int(match.group("group")),
            "symmetric": bool(match.group("sym")),
            "method": match.group("method") or "rtn",
        }
        if match.group("ratio") is not None:
            fields["sparsity"] = float(match.group("ratio"))
        if match.group("n") is not None:
            fields["sparsity_pattern"] = "nm"
            fields["nm"] = (int(match.group("n")), int(match.group("m")))
        try:
            return cls(**fields)
        except ValueError as exc:
            raise InputError(f"{where}: invalid option {shown(spec)}: {_reason(exc)}") from None


def _reason(exc: ValueError) -> str:
    """One line per problem of a pydantic ValidationError (field: message), else ``str(exc)``."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for err in errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
