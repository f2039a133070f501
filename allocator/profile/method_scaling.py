"""Rescale a table scored by round-to-nearest to the method that will apply it (GPTQ/SparseGPT).

Estimators score an option by the weight error that round-to-nearest (and magnitude pruning)
leave; ``apply`` runs GPTQ or SparseGPT, which leave far less, and not uniformly. Under a
layer's input Hessian H the error GPTQ leaves is a different fraction of RTN's for each kind of
projection (on SmolLM2 about 0.1-0.2 for q/k/o, 0.2-0.35 for v and the MLP, more for sparse
options), so a table scored by RTN may overpay for the layers GPTQ repairs best.

Here, for a few sample units of each projection kind (spread over depth), the ratio

    r[u, o] = tr(dW_gptq H dW_gptq^T) / tr(dW_rtn H dW_rtn^T)

is measured at each option family's representative (``option_calibration.representatives``:
group sizes nearest 128 stand for their family), and every unit's loss for ``o`` is multiplied
by the geometric mean of ``r`` over its kind's samples. The table's ranking of units within a
kind and option is kept; what changes is how kinds and options compare. H comes from one pass
over the first ``SCALING_WINDOWS`` profiling windows, kept for the sample units only.

Off by default (``run --rescale-to-method``, ``profile --rescale-to gptq``): at 3.5 bits it
improved SmolLM2's plans and made Gemma 3's worse than uniform (README, Known gaps); the error
GPTQ removes under H does not reach the loss in the same proportion on every model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm.auto import tqdm

from allocator.profile.option_calibration import representatives
from allocator.schema.option import Option
from allocator.schema.unit import Unit

SAMPLES_PER_KIND = 2
SCALING_WINDOWS = 8
FLOOR = 1e-30


def kind_samples(units: list[Unit], per_kind: int = SAMPLES_PER_KIND) -> list[Unit]:
    """``per_kind`` units of every projection kind, at evenly spaced depths (deterministic)."""
    by_kind: dict[str, list[Unit]] = {}
    for unit in units:
        by_kind.setdefault(unit.kind, []).append(unit)
    chosen = []
    for members in by_kind.values():
        count = min(per_kind, len(members))
        chosen += [members[int((i + 0.5) / count * len(members))] for i in range(count)]
    return chosen


def rescalable(option: Option) -> bool:
    """Options a table scores by RTN and a Hessian method compresses differently."""
    return not option.is_fp16 and option.method == "rtn"


def _hessian_error(dw: torch.Tensor, hessian: torch.Tensor) -> float:
    return float(((dw @ hessian) * dw).sum())


@torch.no_grad()
def _ratios(
    ctx: Any, unit: Unit, probes: list[Option], method: str, stats: Any
) -> dict[str, float]:
    from allocator.quant.compress import compress_weight, uses_act_sq

    weight = ctx.module(unit).weight.detach().float()
    hessian = stats.hessian_fp32
    act_sq = stats.act_sq.float()
    table_sees_act_sq = ctx.needs_stats()  # what ctx.compress gave the estimator
    row = {}
    for option in probes:
        scored = compress_weight(
            weight, option, act_sq=act_sq if table_sees_act_sq and uses_act_sq(option) else None
        )
        applied = compress_weight(
            weight, option.model_copy(update={"method": method}), hessian=hessian, act_sq=act_sq
        )
        reference = _hessian_error(scored.float() - weight, hessian)
        if reference > FLOOR:
            row[option.key] = (
                max(_hessian_error(applied.float() - weight, hessian), FLOOR) / reference
            )
    return row


def rescale_to_method(
    ctx: Any, losses: dict[str, dict[str, float]], method: str
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Losses rescaled to ``method``'s error, and a report (sample units, factor per kind)."""
    from allocator.profile.capture import capture_stats

    options = [o for o in ctx.options if rescalable(o)]
    if not options:
        return losses, {"method": method, "factors": {}}
    stand_in = representatives(options)
    probes = list({o.key: o for o in stand_in.values()}.values())
    samples = kind_samples(ctx.units)
    capture = capture_stats(ctx.model, ctx.input_ids[:SCALING_WINDOWS],
                            unit_names={u.name for u in samples}, batch_size=ctx.batch_size,
                            progress=False)  # fmt: skip
    logs: dict[str, dict[str, list[float]]] = {}
    for unit in tqdm(samples, desc=f"rescale to {method}", unit="unit", disable=not ctx.progress):
        stats = capture.stats.get(unit.name)
        if stats is None or stats.n_tokens == 0:  # an expert no calibration token reached
            continue
        for key, ratio in _ratios(ctx, unit, probes, method, stats).items():
            logs.setdefault(unit.kind, {}).setdefault(key, []).append(math.log(ratio))
    factors = {
        kind: {key: math.exp(sum(v) / len(v)) for key, v in per_option.items()}
        for kind, per_option in logs.items()
    }
    kinds = {u.name: u.kind for u in ctx.units}
    rescaled = {}
    for name, row in losses.items():
        kind_factors = factors.get(kinds.get(name, ""), {})
        rescaled[name] = {
            key: value * kind_factors.get(stand_in[key].key, 1.0) if key in stand_in else value
            for key, value in row.items()
        }
    report = {
        "method": method,
        "units": [u.name for u in samples],
        "windows": int(ctx.input_ids[:SCALING_WINDOWS].shape[0]),
        "factors": {k: {o: round(f, 4) for o, f in v.items()} for k, v in factors.items()},
    }
    return rescaled, report
