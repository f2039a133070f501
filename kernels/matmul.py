"""One Triton kernel family for ``x @ W`` with W in the bit-plane layout, every width a constexpr.

- GEMV mode (``USE_DOT=False``, M <= 8): broadcast-multiply and reduce over K in fp32, per
  tile, or (``ACC3``) accumulate the per-element products and reduce over K once at the end.
- GEMM mode (``USE_DOT=True``, M >= 16 rows per tile): ``tl.dot`` on tensor cores.

Both split K over ``grid[1]`` programs. Each writes an fp32 partial tile; the last program to
arrive at a tile (an atomic counter per output tile, reset by that program) sums the partials
and writes the output, so split-K costs no extra launch and no zero-filled buffer.

When a K tile lies inside one group (``group_size % BLOCK_K == 0``) the scale is applied once
per group and the zero is folded into a bias term: ``sum_k x (c - z) s = s (sum_k x c - z sum_k
x)``. Otherwise (groups smaller than a tile, ragged groups) every code is dequantized with the
scale and zero of its own group. Codes are unpacked either by one load per code
(``RESHAPE=False``) or by loading each word once and shifting it out (``RESHAPE=True``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from allocator.quant.packing import padded_k, plane_widths

from .autotune import KernelConfig, choose_config
from .common import _locks, _store_output, _tile_codes
from .dequant import dequant_matmul


@triton.jit(do_not_specialize=["M", "K", "K_PAD", "tiles_per_split", "n_k_tiles"])
def _qmm_kernel(
    x_ptr, p0, p1, p2, s_ptr, z_ptr, out_ptr, part_ptr, lock_ptr,
    M, N, K, K_PAD, group_size, stride_xm, stride_om, tiles_per_split, n_k_tiles,
    W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    USE_DOT: tl.constexpr, GROUP_ALIGNED: tl.constexpr, RESHAPE: tl.constexpr,
    ACC3: tl.constexpr, SPLIT: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if ACC3:  # GEMV: per-element products accumulated, reduced over K once at the end
        acc3 = tl.zeros((BLOCK_M, BLOCK_K, BLOCK_N), dtype=tl.float32)
    t_start = pid_k * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, n_k_tiles)
    for t in range(t_start, t_end):
        k0 = t * BLOCK_K
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
            mask=m_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        codes = _tile_codes(
            p0, p1, p2, offs_k, k0, offs_n, n_mask, N, K_PAD, W0, W1, W2, BLOCK_K, BLOCK_N,
            RESHAPE,
        )  # fmt: skip
        if GROUP_ALIGNED:  # one scale and zero per column for the whole tile: (1, BLOCK_N)
            g = k0 // group_size
            s = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            z = tl.load(z_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        else:  # the group of every row: (BLOCK_K, BLOCK_N)
            sz_mask = k_mask[:, None] & n_mask[None, :]
            sz_offs = (offs_k // group_size)[:, None] * N + offs_n[None, :]
            s = tl.load(s_ptr + sz_offs, mask=sz_mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + sz_offs, mask=sz_mask, other=0.0).to(tl.float32)
        if ACC3:
            acc3 += x.to(tl.float32)[:, :, None] * ((codes.to(tl.float32) - z) * s)[None, :, :]
        elif GROUP_ALIGNED:  # scale once per group, zero folded: s * (sum x c - z * sum x)
            if USE_DOT:
                if IEEE:
                    xc = tl.dot(x, codes.to(x.dtype), input_precision="ieee")
                else:
                    xc = tl.dot(x, codes.to(x.dtype))
            else:
                xc = tl.sum(x.to(tl.float32)[:, :, None] * codes.to(tl.float32)[None, :, :], 1)
            xs = tl.sum(x.to(tl.float32), 1)
            acc += (xc - xs[:, None] * z) * s
        else:
            w = (codes.to(tl.float32) - z) * s
            if USE_DOT:
                if IEEE:
                    acc += tl.dot(x, w.to(x.dtype), input_precision="ieee")
                else:
                    acc += tl.dot(x, w.to(x.dtype))
            else:
                acc += tl.sum(x.to(tl.float32)[:, :, None] * w[None, :, :], 1)
    if ACC3:
        acc = tl.sum(acc3, 1)
    _store_output(acc, out_ptr, part_ptr, lock_ptr, offs_m, offs_n, M, N, stride_om,
                  BLOCK_M, BLOCK_N, SPLIT)  # fmt: skip


def launch_fused(
    x2d: torch.Tensor,
    planes: list[torch.Tensor],
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
    config: KernelConfig,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the fused kernel with one config on x2d (M, K) contiguous; returns (M, N)."""
    m, n = x2d.shape[0], scales.shape[1]
    widths = [*plane_widths(bits), 0, 0][:3]
    n_k_tiles = triton.cdiv(in_features, config.block_k)
    tiles_per_split = triton.cdiv(n_k_tiles, max(1, min(config.split_k, n_k_tiles)))
    split = triton.cdiv(n_k_tiles, tiles_per_split)
    grid = (triton.cdiv(n, config.block_n), split, triton.cdiv(m, config.block_m))
    if out is None:
        out = torch.empty((m, n), dtype=x2d.dtype, device=x2d.device)
    part = torch.empty((split, m, n) if split > 1 else (1,), dtype=torch.float32, device=x2d.device)
    locks = _locks(x2d.device, grid[0] * grid[2])
    p = [*planes, planes[0], planes[0]]
    _qmm_kernel[grid](
        x2d, p[0], p[1], p[2], scales, zeros, out, part, locks,
        m, n, in_features, padded_k(in_features), group_size, x2d.stride(0), out.stride(0),
        tiles_per_split, n_k_tiles,
        W0=widths[0], W1=widths[1], W2=widths[2],
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        USE_DOT=config.use_dot, GROUP_ALIGNED=group_size % config.block_k == 0,
        RESHAPE=config.reshape, ACC3=config.acc3 and not config.use_dot, SPLIT=split > 1,
        IEEE=x2d.dtype == torch.float32,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return out


def triton_quant_matmul(
    x: torch.Tensor,
    planes: list[torch.Tensor],
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
) -> torch.Tensor:
    """``x @ W`` on the GPU: the autotuned fused kernel, or dequantize + ``torch.matmul``."""
    x2d = x.reshape(-1, in_features).contiguous()
    args = (planes, scales, zeros, bits, group_size, in_features)
    config = choose_config(x2d, *args, run=launch_fused, run_dequant=dequant_matmul)
    run = dequant_matmul if config.dequant else launch_fused
    out = run(x2d, *args, config)
    return out.reshape(*x.shape[:-1], scales.shape[1])
