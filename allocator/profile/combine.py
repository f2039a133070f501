"""Turning rank-only importance scores (lim, zd, zo) into a SensitivityTable's losses.

The documented combination: ``loss[u, o] = s_u / mean(s) * ||dW_uo||^2 / ||W_u||^2``, the unit's
normalized importance times the option's relative weight-energy error. The score orders units;
the relative error orders options within a unit (and makes 2-bit worse than 3-bit). Without
scores (all zero) the table is the plain relative error.
"""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def relative_errors(ctx: Any) -> dict[str, dict[str, float]]:
    """||dW||^2 / ||W||^2 per unit and option."""
    out = {}
    for unit in ctx.units:
        weight = ctx.module(unit).weight.detach().float()
        energy = float(weight.square().sum()) or 1.0
        out[unit.name] = {
            o.key: float((ctx.compress(unit, o).float() - weight).square().sum()) / energy
            for o in ctx.options
        }
    return out


def combine_scores(
    scores: dict[str, float], errors: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """loss = normalized score x relative error (pure)."""
    positive = [max(s, 0.0) for s in scores.values()]
    mean = sum(positive) / len(positive) if positive else 0.0
    losses = {}
    for name, row in errors.items():
        weight = max(scores.get(name, 0.0), 0.0) / mean if mean > 0 else 1.0
        losses[name] = {k: weight * v for k, v in row.items()}
    return losses


def scores_to_losses(ctx: Any, scores: dict[str, float]) -> dict[str, dict[str, float]]:
    if ctx.needs_stats():
        ctx.capture()
    return combine_scores(scores, relative_errors(ctx))
