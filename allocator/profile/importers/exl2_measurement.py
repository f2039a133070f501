"""ExLlamaV2 ``measurement.json`` as a SensitivityTable.

ExLlamaV2 (``exllamav2/conversion/measure.py``) measures each attention and MLP sublayer jointly:
``measurement["model.layers.3.self_attn"]`` is a list of candidates, each with ``accuracy`` (one
minus the mean relative Frobenius error of the sublayer's output on calibration rows),
``total_bits`` (all its projections, metadata included) and one ``QParams`` dict per projection
(``bits`` and ``bits_prop``: row fractions at each width, ``group_size`` per width, ``scale_bits``).

Mapping, as faithful as our Option can be:

- unit = the measured sublayer (``model.layers.3.self_attn``, ``model.layers.3.mlp``), numel = the
  sum of its projections' numel (taken from the model's units); splitting a joint measurement
  into per-projection losses would invent numbers;
- loss = ``1 - accuracy`` (clipped at 0);
- option = ``b{bits}-g{group}-sym@exl2{a|m}{index}``: ``bits`` is the numel-weighted mean width of
  the candidate rounded to an integer, ``group`` the numel-weighted most common group size,
  symmetric because EXL2 stores scales without zero points; the ``exl2a7`` / ``exl2m7`` tag keeps
  every candidate distinct (``a`` attention, ``m`` MLP, index in ExLlamaV2's list);
- cost = EXL2's own ``total_bits``, kept exactly in ``resources["exl2_bits"]`` (limit it with a
  ``resources: [{name: exl2_bits, max: ...}]`` constraint to budget with EXL2's real sizes; the
  size model's cost of the option is an approximation).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from allocator.errors import InputError
from allocator.schema.option import Option
from allocator.schema.table import Provenance, SensitivityTable
from allocator.schema.unit import Unit

_KIND_TAG = {"self_attn": "a", "mlp": "m", "block_sparse_moe": "e"}
_KEY_RE = re.compile(
    r"^(?P<prefix>.*?)(?:\.(?P<index>\d+))?\.(?P<kind>self_attn|mlp|block_sparse_moe)$"
)
_NOT_PROJECTION = {"accuracy", "total_bits"}


def read_exl2_measurement(path: str | os.PathLike[str], units: Sequence[Unit]) -> SensitivityTable:
    """Read ``measurement.json``; ``units`` are the model's projection units (for numel)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such measurement file; check the path")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON ({exc})") from None
    measurement = data.get("measurement") if isinstance(data, dict) else None
    if not isinstance(measurement, dict):
        raise InputError(
            f"{p}: no top-level 'measurement' object; is this an EXL2 measurement.json?"
        )
    numel = {u.name: u.numel for u in units}
    table_units: list[Unit] = []
    losses: dict[str, dict[str, float]] = {}
    exl2_bits: dict[str, dict[str, float]] = {}
    options: dict[str, Option] = {}
    for key, entry in measurement.items():
        for sub_key, candidates in _sublayers(key, entry):
            unit, rows = _import_sublayer(p, sub_key, candidates, numel)
            table_units.append(unit)
            losses[unit.name] = {}
            exl2_bits[unit.name] = {}
            for option, loss, total_bits in rows:
                options.setdefault(option.key, option)
                losses[unit.name][option.key] = loss
                exl2_bits[unit.name][option.key] = total_bits
    if not table_units:
        raise InputError(f"{p}: measurement holds no attention or MLP sublayer")
    return SensitivityTable(
        units=table_units,
        options=list(options.values()),
        losses=losses,
        resources={"exl2_bits": exl2_bits},
        provenance=Provenance(
            estimator="exl2_measurement",
            settings={
                "source": str(p),
                "loss": "1 - accuracy (mean relative Frobenius error of the sublayer output)",
                "cost": "resources.exl2_bits = EXL2 total_bits",
            },
        ),
    )


def _sublayers(key: str, entry: Any) -> list[tuple[str, list[dict[str, Any]]]]:
    """(sublayer key, candidates) pairs; a parallel decoder holds both ``attn`` and ``mlp``."""
    if entry is None:  # embeddings, norms, head: not measured
        return []
    if isinstance(entry, dict) and {"attn", "mlp"} <= set(entry):
        base = key.rsplit(".", 1)[0]
        return [(f"{base}.self_attn", entry["attn"]), (f"{base}.mlp", entry["mlp"])]
    if isinstance(entry, list):
        return [(key, entry)]
    raise InputError(
        f"measurement[{key!r}]: expected a list of candidates, got {type(entry).__name__}"
    )


def _import_sublayer(
    path: Path, key: str, candidates: list[dict[str, Any]], numel: dict[str, int]
) -> tuple[Unit, list[tuple[Option, float, float]]]:
    match = _KEY_RE.match(key)
    if not match:
        raise InputError(
            f"{path}: measurement key {key!r} is not '<block>.self_attn' or '<block>.mlp'"
        )
    kind = match.group("kind")
    rows = []
    member_numel: dict[str, int] = {}
    for index, cand in enumerate(candidates):
        projections = {k: v for k, v in cand.items() if k not in _NOT_PROJECTION}
        for proj in projections:
            name = f"{key}.{proj}" if kind != "block_sparse_moe" else f"{key}.experts.0.{proj}"
            if name not in numel and f"{key}.{proj}" not in numel:
                raise InputError(
                    f"{path}: measurement[{key!r}] names projection {proj!r} but the model has no "
                    f"unit {key}.{proj}; pass the units of the model that was measured"
                )
            member_numel[proj] = numel.get(f"{key}.{proj}", numel.get(name, 0))
        option = _option_for(projections, member_numel, f"exl2{_KIND_TAG[kind]}{index}")
        try:
            loss = max(0.0, 1.0 - float(cand["accuracy"]))
            total_bits = float(cand["total_bits"])
        except (KeyError, TypeError, ValueError):
            raise InputError(
                f"{path}: measurement[{key!r}][{index}] needs numeric 'accuracy' and 'total_bits'"
            ) from None
        rows.append((option, loss, total_bits))
    index_text = match.group("index")
    unit = Unit(
        name=key,
        numel=sum(member_numel.values()),
        kind=kind,
        layer=None if index_text is None else int(index_text),
    )
    return unit, rows


def _option_for(projections: dict[str, Any], numel: dict[str, int], tag: str) -> Option:
    """Integer-width Option summarising one EXL2 candidate (see the module docstring)."""
    weighted_bits = 0.0
    total = 0
    group_weight: Counter[int] = Counter()
    for proj, qp in projections.items():
        groups = {int(b): int(g) for b, g in qp["group_size"].items()}
        for bits, prop in zip(qp["bits"], qp["bits_prop"], strict=True):
            share = numel[proj] * float(prop)
            weighted_bits += share * int(bits)
            group_weight[groups[int(bits)]] += int(share)
        total += numel[proj]
    bits = min(8, max(2, round(weighted_bits / max(total, 1))))
    group = group_weight.most_common(1)[0][0]
    return Option(bits=bits, group_size=group, symmetric=True, method=tag)
