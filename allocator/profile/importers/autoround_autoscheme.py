"""AutoRound AutoScheme per-layer scores as a SensitivityTable.

AutoScheme (``auto_round/auto_scheme/delta_loss.py``) scores every candidate scheme on every
layer and keeps them, one JSON file per scheme (``~/.cache/auto_round/scheme_NN_<key>.json`` or
``$AR_AUTO_SCHEME_CACHE``, format version 1): ``{"scheme": {"bits", "group_size", "sym",
"data_type", "act_bits", ...}, "layer_scores": {layer: [total_bits, loss]}, ...}``; in memory
the same ``{layer: [total_bits, loss]}`` comes back from ``get_score_for_scheme``. Mapping:

- unit = each scored layer, shape from ``shapes`` (or ``model``), else its weight count
  estimated from AutoScheme's bits (``total_bits / bits``, overhead not removed);
- option = the scheme's ``bits``, ``group_size`` (``-1``/``0``: per channel), ``sym``;
  ``data_type`` other than ``int`` (``mx_fp``, ``nv_fp``...) becomes the ``method``; ``bits >= 16``
  is ``fp16``; a scheme that also quantizes activations gets ``method`` ``..._a{act_bits}``;
- loss = AutoScheme's score (its estimated loss increase);
- AutoScheme's own size is kept in ``resources["autoround_bits"]``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from allocator.errors import InputError
from allocator.schema.option import Option
from allocator.schema.table import Provenance, SensitivityTable
from allocator.schema.unit import Unit

Scores = Mapping[str, Any]  # one scheme's cache payload, or {"scheme": ..., "layer_scores": ...}


def scheme_option(scheme: Mapping[str, Any]) -> Option:
    """The Option an AutoRound scheme dict (``asdict(QuantizationScheme)``) amounts to."""
    bits = int(scheme.get("bits") or 16)
    if bits >= 16:
        return Option(bits=16, group_size=None)
    group = scheme.get("group_size")
    group = None if group in (None, -1, 0) else int(group)
    data_type = str(scheme.get("data_type") or "int")
    method = "rtn" if data_type == "int" else re.sub(r"[^A-Za-z0-9_]", "_", data_type)
    act_bits = scheme.get("act_bits")
    if act_bits is not None and int(act_bits) < 16:
        method = f"{method}_a{int(act_bits)}"
    return Option(bits=bits, group_size=group, symmetric=bool(scheme.get("sym")), method=method)


def _payloads(sources: Iterable[Scores | str | os.PathLike[str]]) -> list[Scores]:
    found = []
    for source in sources:
        if isinstance(source, Mapping):
            found.append(source)
            continue
        path = Path(source)
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read an AutoScheme score file ({exc})") from None
    return found


def table_from_autoscheme(
    sources: Iterable[Scores | str | os.PathLike[str]],
    *,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    model: Any = None,
) -> SensitivityTable:
    """A table from AutoScheme's per-scheme scores (cache files or their dicts)."""
    payloads = _payloads(sources)
    if not payloads:
        raise InputError("sources: no AutoScheme score file given")
    losses: dict[str, dict[str, float]] = {}
    sizes: dict[str, dict[str, float]] = {}
    options: dict[str, Option] = {}
    numel: dict[str, float] = {}
    for k, payload in enumerate(payloads):
        if "scheme" not in payload or "layer_scores" not in payload:
            raise InputError(f"sources[{k}]: needs 'scheme' and 'layer_scores' (AutoScheme cache)")
        option = scheme_option(payload["scheme"])
        options.setdefault(option.key, option)
        for layer, (total_bits, loss) in payload["layer_scores"].items():
            losses.setdefault(layer, {})[option.key] = max(float(loss), 0.0)
            sizes.setdefault(layer, {})[option.key] = float(total_bits)
            numel.setdefault(layer, float(total_bits) / option.bits)
    units = []
    for layer in losses:
        shape = None
        if shapes is not None and layer in shapes:
            shape = tuple(int(s) for s in shapes[layer])
        elif model is not None:
            shape = tuple(int(s) for s in model.get_submodule(layer).weight.shape)
        if shape is not None:
            units.append(Unit(name=layer, shape=shape))  # type: ignore[arg-type]
        else:
            units.append(Unit(name=layer, numel=max(round(numel[layer]), 1)))
    return SensitivityTable(
        units=units,
        options=list(options.values()),
        losses=losses,
        resources={"autoround_bits": sizes},
        provenance=Provenance(
            estimator="autoround_autoscheme",
            settings={"schemes": [dict(p["scheme"]) for p in payloads]},
        ),
    )
