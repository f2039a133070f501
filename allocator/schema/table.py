"""SensitivityTable: predicted loss of every (unit, option) pair, plus where it came from.

A loss is the predicted increase of the model's objective (e.g. KL to the original model or
cross-entropy, in nats, or any estimator's proxy on one scale) when that unit alone takes that
option. The solver minimises the sum over units, so losses must be additive and share one scale
within a table; their absolute unit only matters for reading ``predicted_loss``. Tiny negative
values from floating-point noise (down to ``-NOISE_TOLERANCE`` x the table's largest loss, or x 1
when that is smaller) are clamped to 0; more negative values are refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from allocator.errors import InputError
from allocator.patterns import shown
from allocator.schema.base import SchemaModel
from allocator.schema.option import Option
from allocator.schema.unit import Unit
from allocator.schema.version import FORMAT_VERSION, check_format_version

MAX_LOSS = 1e100  # losses and resource values: sums over a million units stay finite
NOISE_TOLERANCE = 1e-9  # relative: negative losses this close to 0 are float noise, clamped

OptionLike = (
    Option | str | Mapping[str, Any] | tuple[int, int | None] | tuple[int, int | None, bool]
)
"""An option as ``Option``, key string (``"b4-g128"``), dict of fields, or ``(bits, group_size)``
/ ``(bits, group_size, symmetric)`` tuple (group ``None`` or ``-1``: per channel)."""

_LAYER_RE = re.compile(r"\.(\d+)\.")


class Provenance(SchemaModel):
    """Who made a table: estimator, model, data and settings, each hashed where it is data."""

    model_config = ConfigDict(extra="allow")

    estimator: str = Field(
        default="unknown",
        description="What produced the losses (an estimator name or an importer).",
        examples=["fisher", "modelopt_auto_quantize"],
    )
    model: str | None = Field(
        default=None, description="The model profiled.", examples=["smollm2", None]
    )
    model_hash: str | None = Field(
        default=None, description="sha256 of the model's weights.", examples=[None]
    )
    data_hash: str | None = Field(
        default=None, description="sha256 of the calibration data.", examples=[None]
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings of the producing run.",
        examples=[{"windows": 8, "seq_len": 256}],
    )
    created: str | None = Field(
        default=None, description="ISO 8601 creation time.", examples=["2026-11-29T12:00:00Z"]
    )
    versions: dict[str, str] = Field(
        default_factory=dict,
        description="Versions of the software that produced it.",
        examples=[{"allocator": "0.1.0"}],
    )


class SensitivityTable(SchemaModel):
    """``losses[unit][option_key]`` is the predicted loss increase when the unit uses that option.

    A unit lists only the options it supports. ``resources[name][unit][option_key]`` holds extra
    per-option resource values (latency, BOPs...) that constraints can limit. From Python,
    ``SensitivityTable.from_losses(losses, shapes)`` builds one from plain mappings.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "units": [{"name": "model.layers.0.mlp.down_proj", "shape": [576, 1536]}],
                    "options": [{"bits": 4, "group_size": 128}, {"bits": 3, "group_size": 128}],
                    "losses": {"model.layers.0.mlp.down_proj": {"b4-g128": 0.01, "b3-g128": 0.04}},
                }
            ]
        },
    )

    format_version: int = Field(
        default=FORMAT_VERSION,
        description="File format version; files newer than this allocator reads are refused.",
        examples=[FORMAT_VERSION],
    )
    units: list[Unit] = Field(description="Every unit (weight matrix) to allocate, once each.")
    options: list[Option] = Field(description="Every option any unit offers, once each.")
    losses: dict[str, dict[str, float]] = Field(
        description="losses[unit name][option key]: predicted loss increase (>= 0, additive "
        "over units, one scale per table) when the unit alone uses the option.",
        examples=[{"model.layers.0.mlp.down_proj": {"b4-g128": 0.01, "b3-g128": 0.04}}],
    )
    resources: dict[str, dict[str, dict[str, float]]] = Field(
        default_factory=dict,
        description="resources[name][unit][option key]: extra per-option values (latency, "
        "BOPs...) that constraints' resources can limit.",
        examples=[{"latency_us": {"model.layers.0.mlp.down_proj": {"b4-g128": 3.1}}}],
    )
    provenance: Provenance = Field(
        default_factory=Provenance,
        description="Who made the table (estimator, model, data, settings).",
    )

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
        finite = [abs(v) for row in self.losses.values() for v in row.values() if math.isfinite(v)]
        noise = NOISE_TOLERANCE * max(1.0, max(finite, default=0.0))
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
                if -noise <= value < 0:
                    row[key] = 0.0  # floating-point noise around a zero loss
                elif value < 0:
                    raise ValueError(
                        f"losses[{unit!r}][{key!r}] = {value}: losses must be >= 0 (only noise above -{noise:.3g} is clamped to 0)"
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

    @classmethod
    def from_losses(
        cls,
        losses: Mapping[str, Mapping[Any, float]] | Mapping[tuple[str, Any], float],
        shapes: Mapping[str, tuple[int, int] | int | Unit],
        *,
        options: Iterable[OptionLike] | None = None,
        resources: Mapping[str, Mapping[str, Mapping[Any, float]]] | None = None,
        provenance: Provenance | Mapping[str, Any] | None = None,
        symmetric: bool | None = None,
        method: str = "rtn",
        target: str | None = None,
    ) -> SensitivityTable:
        """A table from plain mappings.

        ``losses`` is ``{unit: {option: loss}}`` or ``{(unit, option): loss}``, each option an
        ``OptionLike`` (``Option``, ``"b4-g128"``, a dict, or ``(bits, group_size[, symmetric])``
        with ``symmetric`` and ``method`` filling what a tuple leaves out). ``shapes`` gives each
        unit's ``(out_features, in_features)``, its number of weights, or a ``Unit``. ``options``
        (default: every option in ``losses``, in first-seen order) may list more. Units get
        ``kind`` (last name part) and ``layer`` (first numeric part) from their names.
        ``symmetric`` defaults to the ``target``'s convention (GPTQ targets: symmetric), else
        False.
        """
        if symmetric is None:
            symmetric = False
            if target is not None:
                from allocator.schema.targets import get_rules  # targets -> plan -> here

                symmetric = bool(get_rules(target).option_defaults.get("symmetric", False))
        rows = _rows(losses)
        parsed: dict[str, Option] = {}
        table_losses: dict[str, dict[str, float]] = {}
        for unit, row in rows.items():
            out_row = table_losses.setdefault(unit, {})
            for spec, value in row.items():
                option = as_option(spec, symmetric=symmetric, method=method)
                parsed.setdefault(option.key, option)
                out_row[option.key] = value
        for spec in options or ():
            option = as_option(spec, symmetric=symmetric, method=method)
            parsed.setdefault(option.key, option)
        missing = [u for u in table_losses if u not in shapes]
        if missing:
            raise InputError(
                f"shapes: no shape for units {missing[:5]}; give (out_features, in_features) or "
                "a number of weights for every unit in losses"
            )
        units = [_as_unit(name, shapes[name]) for name in table_losses]
        extra = {
            name: {
                unit: {
                    as_option(s, symmetric=symmetric, method=method).key: v for s, v in r.items()
                }
                for unit, r in per_unit.items()
            }
            for name, per_unit in (resources or {}).items()
        }
        return cls(
            units=units,
            options=list(parsed.values()),
            losses=table_losses,
            resources=extra,
            provenance=Provenance.model_validate(provenance)
            if provenance is not None
            else Provenance(estimator="from_losses"),
        )


def as_option(spec: object, *, symmetric: bool = False, method: str = "rtn") -> Option:
    """An ``OptionLike`` as an Option (tuples take ``symmetric``/``method`` when they omit them)."""
    if isinstance(spec, tuple):
        if not 2 <= len(spec) <= 3 or isinstance(spec[0], bool) or not isinstance(spec[0], int):
            raise InputError(
                f"option {shown(spec)}: a tuple must be (bits, group_size) or (bits, group_size, "
                "symmetric), e.g. (4, 128) or (4, -1, True)"
            )
        fields: dict[str, Any] = {"bits": spec[0], "group_size": spec[1], "method": method}
        fields["symmetric"] = spec[2] if len(spec) == 3 else symmetric
        if spec[0] == 16:
            fields["group_size"] = None
        return Option.model_validate(fields)
    if isinstance(spec, Mapping):
        return Option.parse(dict(spec))
    return Option.parse(spec)  # type: ignore[arg-type]  # Option.parse names a bad type


def _rows(losses: Mapping[Any, Any]) -> dict[str, dict[Any, float]]:
    if not isinstance(losses, Mapping):
        raise InputError(
            f"losses = {shown(losses)}: give {{unit: {{option: loss}}}} or {{(unit, option): loss}}"
        )
    rows: dict[str, dict[Any, float]] = {}
    for key, value in losses.items():
        if isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str):
            rows.setdefault(key[0], {})[key[1]] = value
        elif isinstance(key, str) and isinstance(value, Mapping):
            rows.setdefault(key, {}).update(value)
        else:
            raise InputError(
                f"losses: entry {shown(key)}: keys are unit names mapping to {{option: loss}}, "
                "or (unit, option) pairs mapping to a loss"
            )
    return rows


def _as_unit(name: str, shape: tuple[int, int] | int | Unit) -> Unit:
    if isinstance(shape, Unit):
        return shape if shape.name == name else shape.model_copy(update={"name": name})
    layer = _LAYER_RE.search(f".{name}.")
    fields: dict[str, Any] = {
        "name": name,
        "kind": name.rsplit(".", 1)[-1],
        "layer": int(layer.group(1)) if layer else None,
    }
    if isinstance(shape, int) and not isinstance(shape, bool):
        fields["numel"] = shape
    else:
        fields["shape"] = shape
    return Unit.model_validate(fields)
