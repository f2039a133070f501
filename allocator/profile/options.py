"""Parsing an option grid spec such as ``bits=2,3,4 group=64,128 sparsity=0,0.5,2:4``.

Fields (space or ';' separated, each ``name=v1,v2``): ``bits`` (1-8, 16 = fp16), ``group`` (an
integer or ``c`` for per-channel), ``sparsity`` (a ratio in [0, 1) or ``N:M``), ``sym`` (``0,1``)
and ``method`` (``rtn``, ``gptq``...). The grid is their cartesian product; ``bits=16`` gives one
``fp16`` option. A spec may instead be a comma-separated list of option keys (``b4-g128,fp16``).
Group sizes need not divide a layer's input size (the last group is ragged), but may not exceed it.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from allocator.errors import InputError
from allocator.schema.option import Option
from allocator.schema.unit import Unit

_FIELDS = {"bits", "group", "sparsity", "sym", "method"}
_NM = re.compile(r"^(\d+):(\d+)$")


def _split_fields(spec: str) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for token in re.split(r"[\s;]+", spec.strip()):
        if not token:
            continue
        name, sep, values = token.partition("=")
        name = name.strip().lower()
        if not sep or name not in _FIELDS or not values:
            raise InputError(
                f"--options {spec!r}: cannot read {token!r}; write fields like "
                "'bits=2,3,4 group=128 sparsity=0,0.5,2:4' (fields: bits, group, sparsity, sym, method)"
            )
        fields[name] = [v.strip() for v in values.split(",") if v.strip()]
    return fields


def _int_values(spec: str, name: str, values: list[str]) -> list[int | None]:
    out: list[int | None] = []
    for value in values:
        if name == "group" and value == "c":
            out.append(None)
            continue
        if not value.isdigit() or int(value) <= 0:
            raise InputError(f"--options {spec!r}: {name}={value!r} must be a positive integer")
        out.append(int(value))
    return out


def _sparsity_values(spec: str, values: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for value in values:
        nm = _NM.match(value)
        if nm:
            out.append({"sparsity_pattern": "nm", "nm": (int(nm.group(1)), int(nm.group(2)))})
            continue
        try:
            ratio = float(value)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio < 1.0:
            raise InputError(
                f"--options {spec!r}: sparsity={value!r}; use a ratio in [0, 1) or N:M like 2:4"
            )
        out.append({"sparsity": ratio})
    return out


def parse_options(spec: str | list[str] | list[Option]) -> list[Option]:
    """The option grid a spec describes, deduplicated, in spec order."""
    if isinstance(spec, list):
        options = [Option.parse(s, where="--options") for s in spec]
        return _dedupe(options, str(spec))
    if "=" not in spec:
        keys = [k for k in re.split(r"[\s,]+", spec.strip()) if k]
        if not keys:
            raise InputError("--options is empty; give e.g. 'bits=2,3,4 group=128'")
        return _dedupe([Option.parse(k, where="--options") for k in keys], spec)
    fields = _split_fields(spec)
    if "bits" not in fields:
        raise InputError(f"--options {spec!r}: give bits, e.g. 'bits=2,3,4 group=128'")
    bits = _int_values(spec, "bits", fields["bits"])
    groups = _int_values(spec, "group", fields.get("group", ["128"]))
    sparsities = _sparsity_values(spec, fields.get("sparsity", ["0"]))
    syms = fields.get("sym", ["0"])
    if any(s not in ("0", "1") for s in syms):
        raise InputError(f"--options {spec!r}: sym takes 0 or 1")
    methods = fields.get("method", ["rtn"])
    options = []
    for b, g, sp, sym, method in itertools.product(bits, groups, sparsities, syms, methods):
        fields_: dict[str, Any] = {"bits": b, "group_size": g, "symmetric": sym == "1"}
        fields_.update(sp)
        fields_["method"] = method
        if b == 16:
            fields_ = {"bits": 16, "group_size": None, "method": method}
        options.append(Option.parse(fields_, where=f"--options {spec!r}"))
    return _dedupe(options, spec)


def _dedupe(options: list[Option], spec: str) -> list[Option]:
    seen: dict[str, Option] = {}
    for option in options:
        seen.setdefault(option.key, option)
    if not seen:
        raise InputError(f"--options {spec!r} gives no option")
    return list(seen.values())


def check_options(options: list[Option], units: list[Unit]) -> None:
    """Reject group sizes larger than a unit's input size (ragged last groups are fine)."""
    for option in options:
        if option.group_size is None or option.is_fp16:
            continue
        for unit in units:
            if unit.in_features is not None and option.group_size > unit.in_features:
                raise InputError(
                    f"--options: group size {option.group_size} of {option.key} exceeds the input "
                    f"size {unit.in_features} of {unit.name}; use a group size <= {unit.in_features} "
                    "or 'c' (per-channel)"
                )
