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

_LOCKS: dict[torch.device, torch.Tensor] = {}


@triton.jit
def _plane_codes(
    p_ptr,
    offs_k,
    k0,
    offs_n,
    n_mask,
    N,
    K_PAD,
    W: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    RESHAPE: tl.constexpr,
):
    """Codes (BLOCK_K, BLOCK_N) int32 of one W-bit plane for rows offs_k (k0 = offs_k[0])."""
    PER: tl.constexpr = 32 // W
    if RESHAPE:
        offs_r = k0 // PER + tl.arange(0, BLOCK_K // PER)
        mask = (offs_r < K_PAD // PER)[:, None] & n_mask[None, :]
        words = tl.load(p_ptr + offs_r[:, None] * N + offs_n[None, :], mask=mask, other=0)
        shifts = tl.arange(0, PER) * W
        part = (words[:, None, :] >> shifts[None, :, None]) & ((1 << W) - 1)
        return tl.reshape(part, (BLOCK_K, BLOCK_N))
    else:
        mask = (offs_k < K_PAD)[:, None] & n_mask[None, :]
        words = tl.load(p_ptr + (offs_k // PER)[:, None] * N + offs_n[None, :], mask=mask, other=0)
        return (words >> ((offs_k % PER) * W)[:, None]) & ((1 << W) - 1)


@triton.jit
def _tile_codes(
    p0,
    p1,
    p2,
    offs_k,
    k0,
    offs_n,
    n_mask,
    N,
    K_PAD,
    W0: tl.constexpr,
    W1: tl.constexpr,
    W2: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    RESHAPE: tl.constexpr,
):
    """Full codes of a tile: planes low bits first, plane i shifted by the widths before it."""
    codes = _plane_codes(p0, offs_k, k0, offs_n, n_mask, N, K_PAD, W0, BLOCK_K, BLOCK_N, RESHAPE)
    if W1 > 0:
        codes |= (
            _plane_codes(p1, offs_k, k0, offs_n, n_mask, N, K_PAD, W1, BLOCK_K, BLOCK_N, RESHAPE)
            << W0
        )
    if W2 > 0:
        codes |= _plane_codes(
            p2, offs_k, k0, offs_n, n_mask, N, K_PAD, W2, BLOCK_K, BLOCK_N, RESHAPE
        ) << (W0 + W1)
    return codes


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


@triton.jit
def _store_output(
    acc,
    out_ptr,
    part_ptr,
    lock_ptr,
    offs_m,
    offs_n,
    M,
    N,
    stride_om,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """Write a (BLOCK_M, BLOCK_N) fp32 tile; under split-K the last program to arrive sums."""
    out_mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    out_offs = offs_m[:, None] * stride_om + offs_n[None, :]
    if SPLIT:
        pid_k = tl.program_id(1)
        n_splits = tl.num_programs(1)
        part_offs = (pid_k * M + offs_m)[:, None] * N + offs_n[None, :]
        tl.store(part_ptr + part_offs, acc, mask=out_mask)
        tl.debug_barrier()
        lock = lock_ptr + tl.program_id(2) * tl.num_programs(0) + tl.program_id(0)
        arrived = tl.atomic_add(lock, 1, sem="acq_rel")
        if arrived == n_splits - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for split in range(0, n_splits):
                split_offs = (split * M + offs_m)[:, None] * N + offs_n[None, :]
                total += tl.load(part_ptr + split_offs, mask=out_mask, other=0.0,
                                 cache_modifier=".cg")  # fmt: skip
            tl.store(out_ptr + out_offs, total.to(out_ptr.dtype.element_ty), mask=out_mask)
            tl.atomic_xchg(lock, 0)
    else:
        tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def _locks(device: torch.device, count: int) -> torch.Tensor:
    """Zeroed int32 tile counters, kept per device (every use resets what it touched).

    Launches on one stream are serialized, so they can share them; two split-K launches running
    concurrently on different streams of one device could not. Allocated on first use: run the
    op once before capturing it in a CUDA graph.
    """
    locks = _LOCKS.get(device)
    if locks is None or locks.numel() < count:
        locks = torch.zeros(max(count, 4096), dtype=torch.int32, device=device)
        _LOCKS[device] = locks
    return locks


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
    from .dequant import dequant_matmul

    x2d = x.reshape(-1, in_features).contiguous()
    args = (planes, scales, zeros, bits, group_size, in_features)
    config = choose_config(x2d, *args, run=launch_fused, run_dequant=dequant_matmul)
    run = dequant_matmul if config.dequant else launch_fused
    out = run(x2d, *args, config)
    return out.reshape(*x.shape[:-1], scales.shape[1])
