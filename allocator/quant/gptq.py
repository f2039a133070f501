"""GPTQ (Frantar et al., 2022): the optimal-brain-quantization column sweep with lazy block
updates, given the layer's input Hessian H.

H comes from the one accumulator, ``allocator.models.actstats.ActStats`` (``add_batch`` per
calibration batch, ``hessian = X^T X / n``; any positive scale gives the same result: damping is
relative to mean(diag H)). Weights are (out, in); groups run along the input.
Without act-order each group's scale/zero is computed when the sweep reaches the group's first
column, on the already-updated weights (GPTQ's default). With act-order the columns are swept in
order of decreasing ``diag(H)`` and the groups stay the ORIGINAL contiguous column groups, their
parameters computed up front from the unquantized weight ("static groups"), so the result packs in
the ordinary layout with no ``g_idx``. Either way each group's range is searched for the least
diag(H)-weighted rounding error (``group_params``; ``clip=False``: min-max). Scales are rounded to
fp16 as they are computed, so the error feedback sees exactly the values the packed checkpoint
stores.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from allocator.quant.rtn import (
    QuantizedWeight,
    clipped_group_params_fp16,
    effective_group,
    group_params_fp16,
)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: the column sweep is thousands of tiny ops, which are
    many times slower with several threads (and far slower on an oversubscribed CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


F = TypeVar("F", bound=Callable[..., Any])


def single_threaded(fn: F) -> F:
    """Decorator running ``fn`` under ``single_thread()``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with single_thread():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def inverse_cholesky(hessian: torch.Tensor, percdamp: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp*I)^-1``, damp = percdamp * mean(diag H), in fp32.

    Damping grows tenfold until the factorization succeeds (a singular H from few samples).
    """
    h = hessian.double()
    mean_diag = torch.diag(h).mean().clamp(min=1e-12)
    eye = torch.eye(h.shape[0], dtype=torch.float64)
    damp = percdamp
    for _ in range(8):
        chol, info = torch.linalg.cholesky_ex(h + damp * mean_diag * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper.float()
        damp *= 10
    raise RuntimeError("GPTQ: the Hessian is not positive definite even with heavy damping")


def prepare_hessian(
    weight: torch.Tensor, hessian: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of W (fp32) and H with dead inputs (diag H == 0) set to H=1, W=0.

    An all-zero H (the layer saw no input) becomes the identity: GPTQ then rounds to nearest.
    """
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    if h.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"H has shape {tuple(h.shape)}, expected {(w.shape[1], w.shape[1])}")
    dead = torch.diag(h) == 0
    if bool(dead.all()):  # no input reached the layer (an MoE expert no token was routed to):
        return w, torch.eye(h.shape[0])  # no evidence, round to nearest instead of zeroing W
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    return w, h


def quantize_column(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, dequantized) of one column (out,) with per-row scale/zero (out,)."""
    codes = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
    return codes, (codes - zero) * scale


def _group_segment(
    w_block: torch.Tensor, w_full: torch.Tensor, i: int, i2: int, col: int, group: int
) -> torch.Tensor:
    """Current values of columns [col, col + group): updated block part plus the lazy rest."""
    end = min(col + group, w_full.shape[1])
    inside = w_block[:, i : i + min(end - col, w_block.shape[1] - i)]
    if end <= i2:
        return inside
    return torch.cat([inside, w_full[:, i2:end]], dim=1)


def group_params(
    weight: torch.Tensor,
    bits: int,
    group: int,
    symmetric: bool,
    importance: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 group parameters of GPTQ and SparseGPT: min-max when ``importance`` is None, else
    each group's range shrunk to the least ``sum_j importance_j * rounding_error_j^2``
    (``importance`` = diag(H) of the group's columns: rounding alone's output error; the
    README's quantizer table measures what the search gains).
    """
    if importance is None:
        return group_params_fp16(weight, bits, group, symmetric)
    return clipped_group_params_fp16(weight, bits, group, symmetric, importance)


@single_threaded
def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    group_size: int | None,
    *,
    symmetric: bool = False,
    act_order: bool = False,
    block_size: int = 128,
    percdamp: float = 0.01,
    keep_mask: torch.Tensor | None = None,
    clip: bool = True,
) -> QuantizedWeight:
    """GPTQ-quantize a weight (out, in) with input Hessian H (in, in).

    ``clip``: group ranges searched for the least diag(H)-weighted rounding error
    (``group_params``), else min-max.
    ``keep_mask`` (bool, like weight) forces pruned weights to code = zero (dequantizing to 0) and
    lets GPTQ compensate for them. Returns codes/scale/zero in the original column order.
    """
    w, h = prepare_hessian(weight, hessian)
    if keep_mask is not None:
        w = w * keep_mask
    out_features, cols = w.shape
    group = effective_group(group_size, cols)
    n_groups = -(-cols // group)
    maxq = 2**bits - 1
    static = act_order or group >= cols
    scale = torch.zeros(out_features, n_groups)
    zero = torch.zeros(out_features, n_groups)
    importance = torch.diag(h) if clip else None
    if static:
        scale, zero = group_params(w, bits, group, symmetric, importance)
    perm = torch.arange(cols)
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
        if keep_mask is not None:
            keep_mask = keep_mask[:, perm]
    hinv = inverse_cholesky(h, percdamp)
    # the sweep works on transposed copies: column j of W is the contiguous row j of wt
    wt = w.T.contiguous()
    codes_t = torch.zeros(cols, out_features)
    mask_t = None if keep_mask is None else keep_mask.T.contiguous()
    scale_t, zero_t = scale.T.contiguous(), zero.T.contiguous()
    col_group = (perm // group).tolist()
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = wt[i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = col_group[col]
            if not static and col % group == 0:
                segment = _group_segment(w1.T, wt.T, i, i2, col, group)
                weight_of = None if importance is None else importance[col : col + segment.shape[1]]
                s, z = group_params(segment, bits, segment.shape[1], symmetric, weight_of)
                scale_t[g], zero_t[g] = s[:, 0], z[:, 0]
            q_codes, q = quantize_column(w1[i], scale_t[g], zero_t[g], maxq)
            if mask_t is not None:
                pruned = ~mask_t[col]
                q_codes = torch.where(pruned, zero_t[g], q_codes)
                q = torch.where(pruned, torch.zeros_like(q), q)
            codes_t[col] = q_codes
            err = (w1[i] - q) / hinv1[i, i]
            w1[i:] -= hinv1[i, i:].unsqueeze(1) * err.unsqueeze(0)
            err1[i] = err
        wt[i2:] -= hinv[i1:i2, i2:].T @ err1
    codes = codes_t.T
    scale, zero = scale_t.T.contiguous(), zero_t.T.contiguous()
    if act_order:
        unpermuted = torch.empty_like(codes)
        unpermuted[:, perm] = codes
        codes = unpermuted
    return QuantizedWeight(
        codes=codes.to(torch.uint8), scale=scale, zero=zero, bits=bits, group_size=group
    )


def clean_target(
    weight: torch.Tensor, cross: torch.Tensor, hessian: torch.Tensor, percdamp: float = 0.01
) -> torch.Tensor:
    """The weight whose outputs on the compressed model's inputs best match the original layer's
    outputs on the original inputs (GPTAQ's asymmetric calibration, Li et al. 2025).

    With X the original inputs and Y the compressed model's (rows are tokens), ``hessian`` =
    Y^T Y / n and ``cross`` = X^T Y / n: minimizing ||Y Q^T - X W^T||^2 over Q equals minimizing
    ||(Q - W') Y^T||^2 for W' = W X^T Y (Y^T Y)^-1, so GPTQ with H = Y^T Y quantizes W' instead
    of W. Written as W' = W + W (X^T Y - Y^T Y)(Y^T Y + damp I)^-1, W' is W exactly when the
    inputs agree; damp is ``percdamp`` * mean(diag H), as GPTQ's.
    """
    w = weight.double()
    h = hessian.double()
    damp = percdamp * torch.diagonal(h).mean().clamp_min(1e-12)
    ridge = h + damp * torch.eye(h.shape[0], dtype=h.dtype)
    shift = torch.linalg.solve(ridge, (w @ (cross.double() - h)).T).T
    return (w + shift).to(weight.dtype)
