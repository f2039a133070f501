"""Rank-only importance scores (higher = more important); ``combine`` turns them into tables.

- ``lim`` (Layer-Wise Quantization): 1 - mean cosine between a block's input and output hidden
  states; every unit of the block gets its block's score.
- ``zd``: share of a unit's weights whose |z-score| exceeds ``settings["z_threshold"]`` (default
  1.0), z = (w - mean) / std over the unit.
- ``zo`` (ECoFLaP's zeroth-order idea, no backward pass): per probe, each unit's weight is scaled
  by (1 + eps r_l) and (1 - eps r_l) with Rademacher signs r_l, and the two losses give
  d = (L+ - L-) / (2 eps) ~ sum_l r_l g_l.W_l; the mean of d r_l over probes (SPSA) estimates
  g_l.W_l, the first-order Taylor importance of the unit, and its magnitude is the score.
  ``settings["probes"]`` (default 16) and ``settings["eps"]`` (default 0.02).
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from allocator.profile.estimators import Estimator, register


def lim_scores(ctx: Any) -> dict[str, float]:
    lim = ctx.capture().lim
    return {u.name: float(lim.get(u.layer, 0.0)) if u.layer is not None else 0.0 for u in ctx.units}


@torch.no_grad()
def zd_scores(ctx: Any) -> dict[str, float]:
    threshold = float(ctx.settings.get("z_threshold", 1.0))
    scores = {}
    for unit in ctx.units:
        w = ctx.module(unit).weight.detach().float()
        z = (w - w.mean()) / w.std().clamp(min=1e-12)
        scores[unit.name] = float((z.abs() > threshold).float().mean())
    return scores


@torch.no_grad()
def _mean_loss(ctx: Any) -> float:
    device = next(ctx.model.parameters()).device
    total = 0.0
    for ids in ctx.input_ids.split(ctx.batch_size):
        ids = ids.to(device)
        total += float(ctx.model(input_ids=ids, labels=ids, use_cache=False).loss) * ids.shape[0]
    return total / ctx.input_ids.shape[0]


@torch.no_grad()
def zo_scores(ctx: Any) -> dict[str, float]:
    probes = int(ctx.settings.get("probes", 16))
    eps = float(ctx.settings.get("eps", 0.02))
    generator = torch.Generator().manual_seed(ctx.seed)
    weights = {u.name: ctx.module(u).weight for u in ctx.units}
    originals = {n: w.data.clone() for n, w in weights.items()}
    estimate = dict.fromkeys(weights, 0.0)
    try:
        for _ in tqdm(range(probes), desc="zo", disable=not ctx.progress):
            signs = {
                n: float(torch.randint(0, 2, (1,), generator=generator)) * 2 - 1 for n in weights
            }
            losses = []
            for direction in (1.0, -1.0):
                for n, w in weights.items():
                    w.data.copy_(originals[n] * (1 + direction * eps * signs[n]))
                losses.append(_mean_loss(ctx))
            slope = (losses[0] - losses[1]) / (2 * eps)
            for n in weights:
                estimate[n] += slope * signs[n] / probes
    finally:
        for n, w in weights.items():
            w.data.copy_(originals[n])
    return {n: abs(v) for n, v in estimate.items()}


register(
    Estimator(
        "lim",
        lim_scores,
        kind="score",
        windows=8,
        seq_len=256,
        doc="LIM: 1 - cos(block input, block output)",
    )
)
register(
    Estimator(
        "zd",
        zd_scores,
        kind="score",
        windows=1,
        seq_len=16,
        doc="share of weights with |z-score| > t (outliers)",
    )
)
register(
    Estimator("zo", zo_scores, kind="score", windows=4, seq_len=128, tasks=("causal_lm",),
              doc="SPSA |g.W|: zeroth-order first-order importance (two loss passes per probe)")
)  # fmt: skip
