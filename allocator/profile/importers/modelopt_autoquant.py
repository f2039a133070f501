"""NVIDIA ModelOpt ``mtq.auto_quantize`` per-layer candidate statistics as a SensitivityTable.

``model, state = mtq.auto_quantize(...)`` returns ``state["candidate_stats"]``: one entry per
searchable group (``model.layers.0.self_attn.q_proj.quant_recipe``) with ``formats`` (its
``QuantRecipe`` candidates, ``NONE`` = unquantized), ``scores`` (ModelOpt's estimated loss
increase of each format, made non-increasing along the list), ``costs`` (weights x effective
bits / 16), ``module_names`` (the modules sharing the choice: q/k/v and gate/up are grouped) and
``uncompressed_cost``. Mapping:

- unit = each module in ``module_names``, shape from ``model`` (or ``shapes``), else its share
  of the group's weights; a group's score is split over its modules by weight count (the sum is
  kept), and groups of several modules are listed in ``provenance.settings["tie_groups"]``:
  tie them (``ties``) to solve exactly ModelOpt's problem;
- option = the recipe's weight quantizer: integer ``num_bits`` (a float format ``(e, m)`` counts
  ``1 + e + m`` bits), ``block_sizes[-1]`` as the group (``axis`` 0: per channel), symmetric
  (ModelOpt's integer formats are), ``method`` the recipe's name (``int4_awq_cfg``) so every
  recipe stays a distinct option; ``NONE`` is ``fp16``;
- ModelOpt's own cost is kept in ``resources["modelopt_cost"]`` (split like the score).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from allocator.errors import InputError
from allocator.schema.option import Option
from allocator.schema.table import Provenance, SensitivityTable
from allocator.schema.unit import Unit

_NAME_RE = re.compile(r"^(?P<name>.*?)\(effective-bits")


def _get(obj: Any, key: str, default: Any = None) -> Any:
    return obj.get(key, default) if isinstance(obj, Mapping) else getattr(obj, key, default)


def recipe_name(recipe: Any) -> str:
    """``INT4_AWQ_CFG`` from a QuantRecipe (its str is ``NAME(effective-bits: X)``) or a string."""
    text = str(recipe)
    found = _NAME_RE.match(text)
    return (found.group("name") if found else text).strip()


def recipe_option(recipe: Any) -> Option:
    """The Option a ModelOpt recipe's weight quantizer amounts to (see the module docstring)."""
    name = recipe_name(recipe)
    if name.upper() == "NONE":
        return Option(bits=16, group_size=None)
    config = _get(recipe, "config")
    entries = _get(config, "quant_cfg", []) if config is not None else []
    weight = None
    for entry in entries if isinstance(entries, list) else []:
        if (
            _get(entry, "quantizer_name") == "*weight_quantizer"
            and _get(entry, "enable") is not False
        ):
            weight = _get(entry, "cfg")
    if weight is None:
        raise InputError(f"ModelOpt recipe {name!r}: no enabled '*weight_quantizer' entry")
    num_bits = _get(weight, "num_bits")
    if isinstance(num_bits, list | tuple):
        bits = 1 + int(num_bits[0]) + int(num_bits[1])
    elif isinstance(num_bits, int):
        bits = num_bits
    else:
        raise InputError(f"ModelOpt recipe {name!r}: weight num_bits {num_bits!r} not understood")
    blocks = _get(weight, "block_sizes") or {}
    group = blocks.get(-1) if isinstance(blocks, Mapping) else None
    method = re.sub(r"[^A-Za-z0-9_]", "_", name.lower())[:64] or "modelopt"
    return Option(bits=min(bits, 8), group_size=group, symmetric=True, method=method)


def _shape(name: str, model: Any, shapes: Mapping[str, Any] | None) -> tuple[int, int] | None:
    if shapes is not None and name in shapes:
        out_features, in_features = shapes[name]
        return int(out_features), int(in_features)
    weight = None if model is None else getattr(model.get_submodule(name), "weight", None)
    if weight is None or weight.dim() != 2:
        return None
    return int(weight.shape[0]), int(weight.shape[1])


def _numels(
    names: list[str], total: float, model: Any, shapes: Mapping[str, Any] | None
) -> list[tuple[tuple[int, int] | None, float]]:
    """Each module's shape (when known) and weight count (else an equal share of ``total``)."""
    found: list[tuple[tuple[int, int] | None, float]] = []
    for name in names:
        shape = _shape(name, model, shapes)
        found.append((shape, float(shape[0] * shape[1]) if shape else total / len(names)))
    return found


def table_from_auto_quantize(
    search_state: Mapping[str, Any],
    model: Any = None,
    *,
    shapes: Mapping[str, tuple[int, int]] | None = None,
) -> SensitivityTable:
    """A table from ``mtq.auto_quantize``'s search state (or its ``candidate_stats``)."""
    stats = search_state.get("candidate_stats", search_state)
    if not isinstance(stats, Mapping) or not stats:
        raise InputError(
            "search_state: no candidate_stats; pass the state mtq.auto_quantize returned"
        )
    units: list[Unit] = []
    losses: dict[str, dict[str, float]] = {}
    costs: dict[str, dict[str, float]] = {}
    options: dict[str, Option] = {}
    groups: list[list[str]] = []
    for hparam, entry in stats.items():
        formats, scores = list(entry["formats"]), list(entry["scores"])
        cost_list = list(entry.get("costs", [0.0] * len(formats)))
        names = list(entry.get("module_names") or [hparam.removesuffix(".quant_recipe")])
        if len(formats) != len(scores):
            raise InputError(
                f"candidate_stats[{hparam!r}]: {len(formats)} formats, {len(scores)} scores"
            )
        weight = float(entry.get("cost_weight", 1.0) or 1.0)
        total = float(entry.get("uncompressed_cost", sum(cost_list) or len(names))) / weight
        sized = _numels(names, total, model, shapes)
        share_total = sum(n for _, n in sized)
        if len(names) > 1:
            groups.append(names)
        for name, (shape, numel) in zip(names, sized, strict=True):
            unit = (
                Unit(name=name, shape=shape) if shape else Unit(name=name, numel=max(int(numel), 1))
            )
            units.append(unit)
            share = numel / share_total
            row, cost_row = losses.setdefault(name, {}), costs.setdefault(name, {})
            for recipe, score, cost in zip(formats, scores, cost_list, strict=True):
                option = recipe_option(recipe)
                options.setdefault(option.key, option)
                row[option.key] = max(float(score), 0.0) * share
                cost_row[option.key] = float(cost) * share
    return SensitivityTable(
        units=units,
        options=list(options.values()),
        losses=losses,
        resources={"modelopt_cost": costs},
        provenance=Provenance(
            estimator="modelopt_auto_quantize",
            settings={"tie_groups": groups, "method": search_state.get("method")},
        ),
    )
