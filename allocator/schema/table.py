"""SensitivityTable: predicted loss of every (unit, option) pair, plus where it came from."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from allocator.schema.option import Option
from allocator.schema.unit import Unit
from allocator.schema.version import FORMAT_VERSION, check_format_version

MAX_LOSS = 1e100  # losses and resource values: sums over a million units stay finite


class Provenance(BaseModel):
    """Who made a table: estimator, model, data and settings, each hashed where it is data."""

    model_config = ConfigDict(extra="allow")

    estimator: str = "unknown"
    model: str | None = None
    model_hash: str | None = None
    data_hash: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    created: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)


class SensitivityTable(BaseModel):
    """``losses[unit][option_key]`` is the predicted loss increase when the unit uses that option.

    A unit lists only the options it supports. ``resources[name][unit][option_key]`` holds extra
    per-option resource values (latency, BOPs...) that constraints can limit.
    """

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    units: list[Unit]
    options: list[Option]
    losses: dict[str, dict[str, float]]
    resources: dict[str, dict[str, dict[str, float]]] = Field(default_factory=dict)
    provenance: Provenance = Field(default_factory=Provenance)

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        return check_format_version(version, "table")

    @model_validator(mode="after")
    def _check(self) -> SensitivityTable:
        names = [u.name for u in self.units]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"units: duplicate unit names {dup[:5]}; each unit must appear once")
        keys = [o.key for o in self.options]
        if len(set(keys)) != len(keys):
            raise ValueError("options: duplicate option keys; list each option once")
        known_units, known_keys = set(names), set(keys)
        for unit, row in self.losses.items():
            if unit not in known_units:
                raise ValueError(
                    f"losses: unit {unit!r} is not in units; add it there or drop its row"
                )
            for key, value in row.items():
                if key not in known_keys:
                    raise ValueError(
                        f"losses[{unit!r}]: option {key!r} is not in options; add it there"
                    )
                if not math.isfinite(value):
                    raise ValueError(
                        f"losses[{unit!r}][{key!r}] = {value}: losses must be finite numbers"
                    )
                if value < 0:
                    raise ValueError(
                        f"losses[{unit!r}][{key!r}] = {value}: losses must be >= 0 (clip measurement noise to 0)"
                    )
                if value > MAX_LOSS:
                    raise ValueError(
                        f"losses[{unit!r}][{key!r}] = {value}: losses must be <= {MAX_LOSS:g}; "
                        "rescale the table"
                    )
        missing = [n for n in names if not self.losses.get(n)]
        if missing:
            raise ValueError(
                f"losses: units {missing[:5]} have no option with a loss; give each unit at least one"
            )
        for resource, per_unit in self.resources.items():
            for unit, row in per_unit.items():
                if unit not in known_units:
                    raise ValueError(f"resources[{resource!r}]: unknown unit {unit!r}")
                for key, value in row.items():
                    if key not in known_keys or not math.isfinite(value) or abs(value) > MAX_LOSS:
                        raise ValueError(
                            f"resources[{resource!r}][{unit!r}][{key!r}] = {value}: unknown option, "
                            f"not finite or beyond +-{MAX_LOSS:g}"
                        )
        return self

    def unit(self, name: str) -> Unit:
        return self._unit_index()[name]

    def option(self, key: str) -> Option:
        return self._option_index()[key]

    def _unit_index(self) -> dict[str, Unit]:
        return {u.name: u for u in self.units}

    def _option_index(self) -> dict[str, Option]:
        return {o.key: o for o in self.options}

    def content_hash(self) -> str:
        """sha256 of the canonical JSON of units, options, losses and resources."""
        payload = self.model_dump(mode="json", exclude={"provenance"})
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()
