"""SparseGPT (Frantar & Alistarh, 2023): one-shot pruning with OBS error compensation, at an
unstructured ratio or N:M, optionally jointly with group-wise quantization (GPTQ's sweep).

Uses the same input Hessian H as GPTQ. The pruning score of weight (r, c) inside a block is
``w^2 / [H^-1]_cc^2``. Unstructured masks are chosen per block of columns over all rows, with a
cumulative count so the whole layer prunes exactly ``round(sparsity * numel)`` weights; N:M masks
are chosen for every M consecutive columns as the sweep reaches them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from allocator.quant.gptq import (
    _group_segment,
    group_params,
    inverse_cholesky,
    prepare_hessian,
    quantize_column,
    single_threaded,
)
from allocator.quant.rtn import QuantizedWeight, effective_group


@dataclass
class SparseResult:
    """The pruned (and maybe quantized) weight, its keep mask, and the codes when quantized."""

    weight: torch.Tensor  # (out, in) fp32, zeros where pruned
    mask: torch.Tensor  # (out, in) bool, True = kept
    quantized: QuantizedWeight | None


def _block_mask(w1: torch.Tensor, hinv_diag: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Keep mask of a block pruning its n_prune lowest ``w^2 / d^2`` scores."""
    mask = torch.ones_like(w1, dtype=torch.bool)
    if n_prune <= 0:
        return mask
    scores = (w1**2 / hinv_diag.reshape(1, -1) ** 2).flatten()
    pruned = torch.topk(scores, n_prune, largest=False).indices
    mask.view(-1)[pruned] = False
    return mask


@single_threaded
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float = 0.0,
    nm: tuple[int, int] | None = None,
    bits: int | None = None,
    group_size: int | None = 128,
    symmetric: bool = False,
    block_size: int = 128,
    percdamp: float = 0.01,
    clip: bool = True,
) -> SparseResult:
    """Prune (unstructured ``sparsity`` or ``nm=(N, M)`` keeping N of M) and optionally quantize.

    ``clip``: each group's range is searched for the least diag(H)-weighted rounding error
    (``allocator.quant.gptq.group_params``), else min-max.
    """
    w, h = prepare_hessian(weight, hessian)
    importance = torch.diag(h) if clip else None
    out_features, cols = w.shape
    hinv = inverse_cholesky(h, percdamp)
    mask = torch.ones(out_features, cols, dtype=torch.bool)
    group = effective_group(group_size, cols)
    n_groups = -(-cols // group)
    maxq = 2**bits - 1 if bits is not None else 0
    scale = torch.zeros(out_features, n_groups)
    zero = torch.zeros(out_features, n_groups)
    if bits is not None and group >= cols:
        scale, zero = group_params(w, bits, group, symmetric, importance)
    codes = torch.zeros(out_features, cols)
    pruned_so_far = 0
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        hdiag = torch.diag(hinv1)
        if nm is None:
            target = round(sparsity * out_features * i2)
            mask1 = _block_mask(w1, hdiag, target - pruned_so_far)
            pruned_so_far = target
        else:
            mask1 = torch.ones_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            col = i1 + i
            if nm is not None and i % nm[1] == 0:
                m_end = min(i + nm[1], i2 - i1)
                scores = w1[:, i:m_end] ** 2 / hdiag[i:m_end].reshape(1, -1) ** 2
                n_prune = max(0, (m_end - i) - nm[0])
                if n_prune:
                    drop = torch.topk(scores, n_prune, dim=1, largest=False).indices
                    mask1[:, i:m_end].scatter_(1, drop, False)
            keep = mask1[:, i]
            q = torch.where(keep, w1[:, i], torch.zeros_like(w1[:, i]))
            if bits is not None:
                g = col // group
                if group < cols and col % group == 0:
                    segment = _group_segment(w1 * mask1, w, i, i2, col, group)
                    weight_of = (
                        None if importance is None else importance[col : col + segment.shape[1]]
                    )
                    s, z = group_params(segment, bits, segment.shape[1], symmetric, weight_of)
                    scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
                q_codes, q = quantize_column(q, scale[:, g], zero[:, g], maxq)
                codes[:, col] = torch.where(keep, q_codes, zero[:, g])
                q = torch.where(keep, q, torch.zeros_like(q))
            err = (w1[:, i] - q) / hinv1[i, i]
            w1[:, i:] -= err.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = err
        w[:, i1:i2] = w1
        mask[:, i1:i2] = mask1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    quantized = None
    if bits is not None:
        quantized = QuantizedWeight(
            codes=codes.to(torch.uint8), scale=scale, zero=zero, bits=bits, group_size=group
        )
    return SparseResult(weight=w * mask, mask=mask, quantized=quantized)
