"""Pruning masks: magnitude and Wanda, unstructured at a ratio or N:M (e.g. 2:4).

A mask is a bool tensor shaped like the weight (out, in); True keeps the weight.
Wanda's score is ``|W[i, j]| * ||X_j||_2`` where ``||X_j||_2 = sqrt(act_sq[j])`` is the norm of
input column j over the calibration tokens (any positive scale of ``act_sq`` gives the same mask).
Unstructured masks prune exactly ``round(sparsity * in)`` weights in every output row (Wanda's
per-output comparison group); N:M masks keep the N highest scores of every M consecutive inputs.
"""

from __future__ import annotations

import torch

from allocator.errors import InputError
from allocator.schema.option import Option


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().abs()


def wanda_scores(weight: torch.Tensor, act_sq: torch.Tensor) -> torch.Tensor:
    """``|W| * sqrt(act_sq)`` broadcast over rows; act_sq is (in,), a per-column sum/mean of x^2."""
    if act_sq.numel() != weight.shape[1]:
        raise InputError(
            f"act_sq has {act_sq.numel()} entries but the weight has {weight.shape[1]} input "
            "columns; pass the per-input-column mean square of this layer's activations"
        )
    norms = act_sq.detach().float().clamp(min=0).sqrt().reshape(1, -1)
    return weight.detach().float().abs() * norms


def unstructured_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep mask pruning the ``round(sparsity * in)`` lowest scores of every row."""
    if not 0.0 <= sparsity < 1.0:
        raise InputError(f"sparsity={sparsity}: use a ratio in [0, 1)")
    rows, cols = scores.shape
    n_prune = round(sparsity * cols)
    mask = torch.ones(rows, cols, dtype=torch.bool)
    if n_prune == 0:
        return mask
    pruned = torch.topk(scores, n_prune, dim=1, largest=False).indices
    mask.scatter_(1, pruned, False)
    return mask


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask with the N highest scores of every M consecutive input columns.

    A ragged last group (in not a multiple of M) keeps its N highest (all of it if shorter).
    """
    if not 0 < n < m:
        raise InputError(f"N:M = {n}:{m}: need 0 < N < M, e.g. 2:4")
    rows, cols = scores.shape
    n_groups = -(-cols // m)
    pad = n_groups * m - cols
    padded = torch.cat([scores, scores.new_full((rows, pad), -float("inf"))], dim=1)
    grouped = padded.reshape(rows, n_groups, m)
    keep = torch.topk(grouped, n, dim=2).indices
    mask = torch.zeros(rows, n_groups, m, dtype=torch.bool)
    mask.scatter_(2, keep, True)
    return mask.reshape(rows, n_groups * m)[:, :cols]


def mask_from_scores(scores: torch.Tensor, option: Option) -> torch.Tensor:
    """The keep mask an option's sparsity asks for (all True when the option is dense)."""
    if option.sparsity_pattern == "nm" and option.nm is not None:
        return nm_mask(scores, *option.nm)
    if option.sparsity > 0:
        return unstructured_mask(scores, option.sparsity)
    return torch.ones(scores.shape, dtype=torch.bool)


def prune_mask(
    weight: torch.Tensor, option: Option, act_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """Wanda mask when activation statistics are given, magnitude mask otherwise."""
    scores = magnitude_scores(weight) if act_sq is None else wanda_scores(weight, act_sq)
    return mask_from_scores(scores, option)
