"""Per-option correction of a loss table against measured single-unit KL on a few sample units.

A second-order estimate (``fisher``, ``hessian``, ``kfac``) is quadratic in the weight error, so
it is trustworthy for small perturbations (5-6 bits, small groups) and optimistic exactly where a
solver finds the largest savings: 2 bits, per-channel scales, 50% or 2:4 sparsity. Here the true
end-to-end KL of every option is measured on a handful of sample units (spread over projection
kinds and depth), and every unit's loss for option ``o`` is multiplied by

    factor_o = geomean over sample units u of  KL_measured[u, o] / loss_predicted[u, o],

clipped to ``[1/MAX_FACTOR, MAX_FACTOR]``. To keep the cost down, options that differ only in
a finite group size form one family measured at its group size nearest 128, and share its
factor (the quadratic estimate errs alike across group sizes; per-channel scales form their own
family). The table's ranking of units within an option is kept; what changes is how options
compare, on the KL scale (nats per token). Sample units keep their measured rows.
Measurements are journaled unit by unit next to the estimator's journal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from allocator.profile.journal import Journal
from allocator.schema.option import Option
from allocator.schema.unit import Unit

MAX_FACTOR = 1000.0
FLOOR = 1e-9


def sample_units(units: Sequence[Unit], n: int) -> list[Unit]:
    """``n`` units spread over projection kinds and depth (deterministic)."""
    by_kind: dict[str, list[Unit]] = {}
    for unit in units:
        by_kind.setdefault(unit.kind, []).append(unit)
    kinds = sorted(by_kind, key=lambda k: -sum(u.numel for u in by_kind[k]))
    chosen: list[Unit] = []
    for index in range(min(n, len(units))):
        pool = [u for u in by_kind[kinds[index % len(kinds)]] if u not in chosen]
        if not pool:
            pool = [u for u in units if u not in chosen]
        depth = (index + 0.5) / max(n, 1)
        chosen.append(pool[min(int(depth * len(pool)), len(pool) - 1)])
    return chosen


def _family(option: Option) -> tuple[object, ...]:
    grouped = option.group_size is not None
    return (option.bits, option.sparsity, option.sparsity_pattern, option.nm, option.method,
            option.symmetric, grouped)  # fmt: skip


def representatives(options: Sequence[Option]) -> dict[str, Option]:
    """Option key -> the option measured for its family (itself for per-channel and fp16)."""
    families: dict[tuple[object, ...], list[Option]] = {}
    for option in options:
        families.setdefault(_family(option), []).append(option)
    chosen = {}
    for members in families.values():
        best = min(members, key=lambda o: abs(math.log2((o.group_size or 128) / 128)))
        chosen.update({o.key: best for o in members})
    return chosen


def option_factors(
    predicted: Mapping[str, Mapping[str, float]], measured: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """Per option key, the geometric mean of measured / predicted over the measured units."""
    logs: dict[str, list[float]] = {}
    for unit, row in measured.items():
        for key, value in row.items():
            guess = predicted.get(unit, {}).get(key, 0.0)
            if guess > FLOOR and value > FLOOR:
                logs.setdefault(key, []).append(math.log(value / guess))
    factors = {}
    for key, values in logs.items():
        mean = sum(values) / len(values)
        factors[key] = min(max(math.exp(mean), 1 / MAX_FACTOR), MAX_FACTOR)
    return factors


def calibrate_options(
    ctx: Any, losses: dict[str, dict[str, float]]
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Corrected losses and a report (sample units, per-option factors, measured rows)."""
    from allocator.profile.estimators.kl import KLMeter

    n_units = int(ctx.settings.get("calibration_units", 4))
    windows = int(ctx.settings.get("calibration_windows", 2))
    seq_len = int(ctx.settings.get("calibration_seq_len", 128))
    units = sample_units(ctx.units, n_units)
    meter = KLMeter(ctx, ctx.input_ids[:windows, :seq_len])
    journal = _journal(ctx)
    stand_in = representatives(ctx.options)
    probes = list({o.key: o for o in stand_in.values()}.values())
    measured: dict[str, dict[str, float]] = {}
    for unit in tqdm(units, desc="option calibration", unit="unit", disable=not ctx.progress):
        if journal is not None and unit.name in journal.done:
            measured[unit.name] = journal.done[unit.name]
            continue
        measured[unit.name] = meter.measure_options(unit, probes)
        if journal is not None:
            journal.append(unit.name, measured[unit.name])
    family_factors = option_factors(losses, measured)
    factors = {o.key: family_factors.get(stand_in[o.key].key, 1.0) for o in ctx.options}
    corrected = {
        name: {key: value * factors.get(key, 1.0) for key, value in row.items()}
        for name, row in losses.items()
    }
    for name, row in measured.items():
        corrected[name] = {
            key: max(row.get(key, corrected[name][key]), 0.0) for key in corrected[name]
        }
    report = {
        "units": [u.name for u in units],
        "windows": windows,
        "seq_len": seq_len,
        "measured_options": [o.key for o in probes],
        "factors": factors,
    }
    return corrected, report


def _journal(ctx: Any) -> Journal | None:
    path = ctx.settings.get("journal")
    if not path:
        return None
    digest = ctx.settings.get("journal_hash") or ctx.settings.get("settings_hash")
    header = {"estimator": "option_calibration", "settings_hash": digest}
    return Journal(Path(str(path) + ".calibration"), header, bool(ctx.settings.get("resume")))
