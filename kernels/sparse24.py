"""2:4 sparse low-bit GEMV: reads only the kept codes and their 2-bit indices.

Layout: ``allocator.quant.packing_sparse``. A K tile of BLOCK_R kept rows covers 2 * BLOCK_R
dense inputs; each kept code gathers its activation ``x[4 * (r // 2) + index]``. With tiles
inside one group the scale is applied once per group and the zero folded into a bias term
(per column, since which inputs are kept differs by column). Split-K as in ``matmul.py``.
For M > 8 the weight is densified once and multiplied with ``torch.matmul``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from allocator.quant.packing import padded_k, plane_widths

from .autotune import GEMV_MAX_M, next_pow2
from .common import _locks, _plane_codes, _store_output, _tile_codes
from .reference import dequantize_planes_24


@triton.jit(do_not_specialize=["M", "K", "KH_PAD", "tiles_per_split", "n_tiles"])
def _sparse24_kernel(
    x_ptr, p0, p1, p2, idx_ptr, s_ptr, z_ptr, out_ptr, part_ptr, lock_ptr,
    M, N, K, KH_PAD, group_size, stride_xm, stride_om, tiles_per_split, n_tiles,
    W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_ALIGNED: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    t_start = pid_k * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, n_tiles)
    for t in range(t_start, t_end):
        r0 = t * BLOCK_R
        offs_r = r0 + tl.arange(0, BLOCK_R)
        codes = _tile_codes(
            p0, p1, p2, offs_r, r0, offs_n, n_mask, N, KH_PAD, W0, W1, W2, BLOCK_R, BLOCK_N, False
        ).to(tl.float32)
        index = _plane_codes(idx_ptr, offs_r, r0, offs_n, n_mask, N, KH_PAD, 2, BLOCK_R, BLOCK_N,
                             False)  # fmt: skip
        k = (offs_r // 2 * 4)[:, None] + index  # (BLOCK_R, BLOCK_N) dense input of each code
        x_mask = m_mask[:, None, None] & (k < K)[None, :, :]
        x = tl.load(x_ptr + offs_m[:, None, None] * stride_xm + k[None, :, :], mask=x_mask,
                    other=0.0).to(tl.float32)  # fmt: skip
        if GROUP_ALIGNED:
            g = (r0 // 2 * 4) // group_size
            s = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
            xc = tl.sum(x * codes[None, :, :], 1)
            xs = tl.sum(x, 1)
            acc += (xc - xs * z[None, :]) * s[None, :]
        else:
            groups = (offs_r // 2 * 4) // group_size
            sz_offs = groups[:, None] * N + offs_n[None, :]
            sz_mask = (offs_r < KH_PAD)[:, None] & n_mask[None, :]
            s = tl.load(s_ptr + sz_offs, mask=sz_mask & (k < K), other=0.0).to(tl.float32)
            z = tl.load(z_ptr + sz_offs, mask=sz_mask & (k < K), other=0.0).to(tl.float32)
            acc += tl.sum(x * ((codes - z) * s)[None, :, :], 1)
    _store_output(acc, out_ptr, part_ptr, lock_ptr, offs_m, offs_n, M, N, stride_om,
                  BLOCK_M, BLOCK_N, SPLIT)  # fmt: skip


def launch_sparse24(
    x2d: torch.Tensor,
    planes: list[torch.Tensor],
    indices: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
    block_n: int = 64,
    block_r: int = 64,
    split_k: int = 1,
    num_warps: int = 4,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The sparse GEMV on x2d (M <= 8, K) contiguous; returns (M, N) in x2d.dtype."""
    m, n = x2d.shape[0], scales.shape[1]
    kept_rows = -(-in_features // 4) * 2
    block_m = next_pow2(m)
    while block_m * block_n * block_r > 16384 and block_r > 32:
        block_r //= 2
    widths = [*plane_widths(bits), 0, 0][:3]
    n_tiles = triton.cdiv(kept_rows, block_r)
    tiles_per_split = triton.cdiv(n_tiles, max(1, min(split_k, n_tiles)))
    split = triton.cdiv(n_tiles, tiles_per_split)
    grid = (triton.cdiv(n, block_n), split, triton.cdiv(m, block_m))
    if out is None:
        out = torch.empty((m, n), dtype=x2d.dtype, device=x2d.device)
    part = torch.empty((split, m, n) if split > 1 else (1,), dtype=torch.float32, device=x2d.device)
    locks = _locks(x2d.device, grid[0] * grid[2])
    p = [*planes, planes[0], planes[0]]
    _sparse24_kernel[grid](
        x2d, p[0], p[1], p[2], indices, scales, zeros, out, part, locks,
        m, n, in_features, padded_k(kept_rows), group_size, x2d.stride(0), out.stride(0),
        tiles_per_split, n_tiles,
        W0=widths[0], W1=widths[1], W2=widths[2], BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_R=block_r, GROUP_ALIGNED=group_size % (2 * block_r) == 0, SPLIT=split > 1,
        num_warps=num_warps,
    )  # fmt: skip
    return out


def triton_quant_matmul_24(
    x: torch.Tensor,
    planes: list[torch.Tensor],
    indices: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
) -> torch.Tensor:
    """``x @ W`` for a 2:4 packed W on the GPU: the sparse GEMV for M <= 8, else dense."""
    x2d = x.reshape(-1, in_features).contiguous()
    n = scales.shape[1]
    if x2d.shape[0] <= GEMV_MAX_M:
        sms = torch.cuda.get_device_properties(x2d.device).multi_processor_count
        block_r = 64 if group_size % 128 == 0 else 32
        n_tiles = -(-in_features // (2 * block_r))
        split = max(1, min(n_tiles, -(-4 * sms // -(-n // 64))))
        out = launch_sparse24(x2d, planes, indices, scales, zeros, bits, group_size,
                              in_features, block_r=block_r, split_k=split)  # fmt: skip
    else:
        weight = dequantize_planes_24(
            planes, indices, scales, zeros, bits, group_size, in_features, x2d.dtype
        )
        out = torch.matmul(x2d, weight)
    return out.reshape(*x.shape[:-1], n)
