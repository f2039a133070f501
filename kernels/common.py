"""Triton helpers shared by the kernels: bit-plane unpacking and the split-K output write.

The bit-plane layout is ``allocator.quant.packing``'s: plane i of width w is (K_pad / (32 / w), N)
int32, codes packed along K (word row r, column n holds codes k = r * (32 / w) + j).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_LOCKS: dict[torch.device, torch.Tensor] = {}


def interpreting() -> bool:
    """Kernels run on the CPU through Triton's interpreter (no inline PTX there)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


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
        ptrs = p_ptr + offs_r[:, None] * N + offs_n[None, :]
        words = tl.load(ptrs, mask=mask, other=0, eviction_policy="evict_first")
        shifts = tl.arange(0, PER) * W
        part = (words[:, None, :] >> shifts[None, :, None]) & ((1 << W) - 1)
        return tl.reshape(part, (BLOCK_K, BLOCK_N))
    else:
        mask = (offs_k < K_PAD)[:, None] & n_mask[None, :]
        ptrs = p_ptr + (offs_k // PER)[:, None] * N + offs_n[None, :]
        words = tl.load(ptrs, mask=mask, other=0, eviction_policy="evict_first")
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
