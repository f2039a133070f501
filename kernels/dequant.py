"""Triton dequantization of the bit-plane layout to a dense (K, N) weight, and dequant + matmul.

For large M the matmul is compute-bound: dequantizing once and calling the vendor GEMM
(cuBLAS through ``torch.matmul``) can beat a fused kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from allocator.quant.packing import padded_k, plane_widths

from .autotune import KernelConfig
from .common import _tile_codes


@triton.jit
def _dequant_kernel(
    p0, p1, p2, s_ptr, z_ptr, w_ptr, N, K, K_PAD, group_size,
    W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, RESHAPE: tl.constexpr,
):  # fmt: skip
    offs_k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    mask = (offs_k < K)[:, None] & n_mask[None, :]
    codes = _tile_codes(
        p0, p1, p2, offs_k, tl.program_id(0) * BLOCK_K, offs_n, n_mask, N, K_PAD, W0, W1, W2,
        BLOCK_K, BLOCK_N, RESHAPE,
    )  # fmt: skip
    sz_offs = (offs_k // group_size)[:, None] * N + offs_n[None, :]
    s = tl.load(s_ptr + sz_offs, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + sz_offs, mask=mask, other=0.0).to(tl.float32)
    w = (codes.to(tl.float32) - z) * s
    tl.store(w_ptr + offs_k[:, None] * N + offs_n[None, :], w.to(w_ptr.dtype.element_ty), mask=mask)


def dequantize_triton(
    planes: list[torch.Tensor],
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
    dtype: torch.dtype,
    block_k: int = 64,
    block_n: int = 64,
    reshape: bool = False,
) -> torch.Tensor:
    """The dense (K, N) weight in ``dtype``."""
    n = scales.shape[1]
    widths = [*plane_widths(bits), 0, 0][:3]
    weight = torch.empty((in_features, n), dtype=dtype, device=scales.device)
    grid = (triton.cdiv(in_features, block_k), triton.cdiv(n, block_n))
    p = [*planes, planes[0], planes[0]]
    _dequant_kernel[grid](
        p[0], p[1], p[2], scales, zeros, weight, n, in_features, padded_k(in_features),
        group_size, W0=widths[0], W1=widths[1], W2=widths[2], BLOCK_K=block_k, BLOCK_N=block_n,
        RESHAPE=reshape,
    )  # fmt: skip
    return weight


def dequant_matmul(
    x2d: torch.Tensor,
    planes: list[torch.Tensor],
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """``x2d @ W`` by dequantizing W once and calling ``torch.matmul``."""
    block = (config.block_k, config.block_n, config.reshape) if config else (64, 64, False)
    weight = dequantize_triton(planes, scales, zeros, bits, group_size, in_features, x2d.dtype,
                               *block)  # fmt: skip
    return torch.matmul(x2d, weight)
