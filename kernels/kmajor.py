"""Kernels over the K-major layout of ``kernels.layout``: every column's codes contiguous along K.

Plane p of width w is (N, K_al * w / 32) int32; row n holds output n's codes along K, code t of
word j being k = j * 32 / w + t, pair-interleaved (t = 2 i + h at bits ``16 h + i w``). A thread
loads 128 bits of consecutive codes of one column (``LDG.E.128``), unpacks them by shifts, and
applies the group scale once per tile (``group_size % BLOCK_K == 0``, or one group for all of K).
Narrower planes (the 1 of 5 = 4 + 1) are read on the grid of plane 0, each word reused for the
codes it holds, so every plane's codes of a tile line up in the same threads.

- ``_kgemv_kernel`` (small M; an autotuner candidate at M = 1): fp32 CUDA-core GEMV. Codes become floats by the exponent trick
  ``(c | 0x4B000000) as fp32 - 2^23`` (no int-to-float instruction); per-word partial sums stay
  in the thread, the zero is folded in as ``- z * sum x``, and the reduction across threads
  happens once per program. The M rows share each unpacked tile (registers grow with M: it
  spills at M = 4, and the tensor-core kernel needs fewer instructions per byte at every M).
- ``_kdot_kernel`` (any M <= 64, rows padded to 16): the tile dequantized to fp16 two codes per
  instruction (``0x6400 | c`` is 1024 + c in fp16; one ``or`` and one ``sub.f16x2``), then
  ``tl.dot`` on tensor cores; M = 1..16 cost the same (one dequantized tile for all rows).

Both split K over ``grid[1]`` as ``matmul.py`` does (one launch; the last program of an output
tile sums the fp32 partials). Without a GPU (Triton's interpreter) the inline PTX is replaced by
the equivalent plain expressions (``ASM=False``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from allocator.quant.packing import plane_widths

from .common import _locks, _store_output, interpreting

MAGIC = tl.constexpr(0x4B000000)  # fp32 exponent of 2^23: (c | MAGIC) as fp32 = 2^23 + c


@triton.jit
def _grid_words(
    q_ptr,
    offs_n,
    n_mask,
    tile,
    KW,
    ONE,
    W: tl.constexpr,
    W0: tl.constexpr,
    BLOCK_K: tl.constexpr,
    LEAD: tl.constexpr,
):
    """The words of a W-bit plane for K tile ``tile`` on plane 0's grid: (BLOCK_N, WORDS0, 1),
    or (1, BLOCK_N, WORDS0, 1) with ``LEAD`` (loaded in that shape, so that the size-1 axes
    broadcast inside each thread and everything computed from the words keeps their layout).

    A narrower plane holds W0 / W times the codes of a plane-0 word, so each of its words is
    repeated that many times (in registers: it is loaded once, 128 bits a thread when the tile
    gives a thread 4 words of it).
    """
    WORDS0: tl.constexpr = BLOCK_K * W0 // 32
    R: tl.constexpr = W0 // W
    WORDS: tl.constexpr = WORDS0 // R
    # a thread takes 4 / R consecutive words of this plane (128 bits of plane 0, 128 / R bits
    # of a narrower one), so that every plane puts a column's words in the same threads: the
    # index is written so that the compiler sees runs of 4 / R (ONE is a runtime 1)
    i = tl.arange(0, WORDS)
    if R == 1:
        offs_w = tile * WORDS + i
    elif R == 2:
        offs_w = tile * WORDS + (i // 2) * 2 + i % 2
    else:
        offs_w = tile * WORDS + i * ONE
    offs = offs_n[:, None] * KW + offs_w[None, :]
    if LEAD:
        ptrs = q_ptr + offs[None, :, :, None]
        words = tl.load(ptrs, mask=n_mask[None, :, None, None], other=0,
                        eviction_policy="evict_first")  # fmt: skip
        if R > 1:
            words = tl.broadcast_to(words, (1, offs_n.shape[0], WORDS, R))
            words = tl.reshape(words, (1, offs_n.shape[0], WORDS0, 1))
    else:
        ptrs = q_ptr + offs[:, :, None]
        words = tl.load(ptrs, mask=n_mask[:, None, None], other=0, eviction_policy="evict_first")
        if R > 1:
            words = tl.broadcast_to(words, (offs_n.shape[0], WORDS, R))
            words = tl.reshape(words, (offs_n.shape[0], WORDS0, 1))
    return words


@triton.jit
def _grid_codes(WORDS0: tl.constexpr, W: tl.constexpr, W0: tl.constexpr, N_POS: tl.constexpr):
    """(WORDS0, N_POS) index of grid position (w, t) in its W-bit word: ``(w % R) * N_POS + t``
    (R = W0 / W plane-0 words share a word of this plane)."""
    R: tl.constexpr = W0 // W
    return (tl.arange(0, WORDS0) % R)[:, None] * N_POS + tl.arange(0, N_POS)[None, :]


@triton.jit
def _code_shifts(WORDS0: tl.constexpr, W: tl.constexpr, W0: tl.constexpr):
    """Bit offset of each code on plane 0's grid, (1, 1, WORDS0, 32 / W0): code c of a
    pair-interleaved word sits at ``16 (c % 2) + (c // 2) W``."""
    c = _grid_codes(WORDS0, W, W0, 32 // W0)
    return ((c % 2) * 16 + (c // 2) * W)[None, None, :, :]


@triton.jit
def _pair_shifts(WORDS0: tl.constexpr, W: tl.constexpr, W0: tl.constexpr):
    """Bit offset of each code pair on plane 0's grid, (1, WORDS0, 16 / W0): pair p at ``p W``."""
    return (_grid_codes(WORDS0, W, W0, 16 // W0) * W)[None, :, :]


@triton.jit
def _extract(words, shifts, W: tl.constexpr, OR, ASM: tl.constexpr):
    """``((words >> shifts) & (2^W - 1)) | OR``: one shift and one ``lop3`` with ``ASM`` (the
    plain expression compiles to a bit-field extract, two instructions, then the or)."""
    if ASM:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t; shr.u32 t, $1, $2; lop3.b32 $0, t, $3, $4, 0xea; }",
            "=r,r,r,r,r",
            [words, shifts, (1 << W) - 1, OR],
            dtype=tl.int32,
            is_pure=True,
            pack=1,
        )
    return ((words >> shifts) & ((1 << W) - 1)) | OR


@triton.jit
def _tile_code_bits(
    q0, q1, q2, offs_n, n_mask, tile, KW0, KW1, KW2, ONE,
    W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr, BLOCK_K: tl.constexpr,
    ASM: tl.constexpr,
):  # fmt: skip
    """Codes of a tile on plane 0's grid (1, BLOCK_N, WORDS0, 32 / W0) with the fp32 exponent
    of 2^23 or-ed in (the bits of 2^23 + code)."""
    WORDS0: tl.constexpr = BLOCK_K * W0 // 32
    words = _grid_words(q0, offs_n, n_mask, tile, KW0, ONE, W0, W0, BLOCK_K, True)
    bits = _extract(words, _code_shifts(WORDS0, W0, W0), W0, MAGIC, ASM)
    if W1 > 0:
        words = _grid_words(q1, offs_n, n_mask, tile, KW1, ONE, W1, W0, BLOCK_K, True)
        bits |= _extract(words, _code_shifts(WORDS0, W1, W0), W1, 0, ASM) << W0
    if W2 > 0:
        words = _grid_words(q2, offs_n, n_mask, tile, KW2, ONE, W2, W0, BLOCK_K, True)
        bits |= _extract(words, _code_shifts(WORDS0, W2, W0), W2, 0, ASM) << (W0 + W1)
    return bits


@triton.jit(do_not_specialize=["M", "tiles_per_split", "n_k_tiles", "ONE"])
def _kgemv_kernel(
    x_ptr, q0, q1, q2, s_ptr, z_ptr, out_ptr, part_ptr, lock_ptr,
    M, N, K, KW0, KW1, KW2, group_size, stride_xm, stride_om, tiles_per_split, n_k_tiles, ONE,
    W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr,
    ASM: tl.constexpr,
):  # fmt: skip
    PER0: tl.constexpr = 32 // W0
    WORDS0: tl.constexpr = BLOCK_K // PER0
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    # k of grid position (w, t): the tile's first k + w * PER0 + t
    offs_kt = tl.arange(0, WORDS0)[:, None] * PER0 + tl.arange(0, PER0)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N, WORDS0), dtype=tl.float32)
    t_start = pid_k * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, n_k_tiles)
    for t in range(t_start, t_end):
        k0 = t * BLOCK_K
        offs_k = k0 + offs_kt
        x_mask = m_mask[:, None, None] & (offs_k < K)[None, :, :]
        x_ptrs = x_ptr + offs_m[:, None, None] * stride_xm + offs_k[None, :, :]
        x = tl.load(x_ptrs, mask=x_mask, other=0.0).to(tl.float32)  # (BM, WORDS0, PER0)
        bits = _tile_code_bits(q0, q1, q2, offs_n, n_mask, t, KW0, KW1, KW2, ONE, W0, W1, W2,
                               BLOCK_K, ASM)  # fmt: skip
        vals = bits.to(tl.float32, bitcast=True) - 8388608.0  # (1, BN, WORDS0, PER0): codes
        part = tl.sum(x[:, None, :, :] * vals, 3)  # per word, inside a thread
        g = k0 // group_size
        s = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        xs = tl.sum(x, 2)[:, None, :]  # (BM, 1, WORDS0)
        acc += (part - xs * z[None, :, None]) * s[None, :, None]
    _store_output(tl.sum(acc, 2), out_ptr, part_ptr, lock_ptr, offs_m, offs_n, M, N, stride_om,
                  BLOCK_M, BLOCK_N, SPLIT)  # fmt: skip


@triton.jit
def _tile_pairs(
    q0, q1, q2, offs_n, n_mask, tile, KW0, KW1, KW2, ONE,
    W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr, BLOCK_K: tl.constexpr,
    ASM: tl.constexpr,
):  # fmt: skip
    """Code pairs of a tile (BLOCK_N, BLOCK_K / 2) int32: codes 2p and 2p + 1 in the low and
    high 16 bits with the fp16 exponent of 1024 or-ed in (0x6400 | c is 1024 + c in fp16)."""
    WORDS0: tl.constexpr = BLOCK_K * W0 // 32
    words = _grid_words(q0, offs_n, n_mask, tile, KW0, ONE, W0, W0, BLOCK_K, False)
    pairs = (words >> _pair_shifts(WORDS0, W0, W0)) & (((1 << W0) - 1) * 0x10001)
    if W1 > 0:
        words = _grid_words(q1, offs_n, n_mask, tile, KW1, ONE, W1, W0, BLOCK_K, False)
        part = (words >> _pair_shifts(WORDS0, W1, W0)) & (((1 << W1) - 1) * 0x10001)
        pairs |= part << W0
    if W2 > 0:
        words = _grid_words(q2, offs_n, n_mask, tile, KW2, ONE, W2, W0, BLOCK_K, False)
        part = (words >> _pair_shifts(WORDS0, W2, W0)) & (((1 << W2) - 1) * 0x10001)
        pairs |= part << (W0 + W1)
    return tl.reshape(pairs, (offs_n.shape[0], BLOCK_K // 2))


@triton.jit
def _pairs_to_half(pairs, ASM: tl.constexpr):
    """fp16 (BLOCK_N, BLOCK_K) codes from pairs: or 0x6400 into both halves, subtract 1024 from
    both in one ``sub.f16x2``, split the halves (codes 2p, 2p + 1)."""
    if ASM:
        lo, hi = tl.inline_asm_elementwise(
            "{ .reg .b32 t, c; mov.b32 c, 0x64006400; or.b32 t, $2, c; sub.f16x2 t, t, c; "
            "mov.b32 {$0, $1}, t; }",
            "=h,=h,r",
            [pairs],
            dtype=(tl.float16, tl.float16),
            is_pure=True,
            pack=1,
        )
    else:
        lo = (pairs & 0xFFFF).to(tl.float16)
        hi = (pairs >> 16).to(tl.float16)
    return tl.reshape(tl.join(lo, hi), (pairs.shape[0], pairs.shape[1] * 2))


@triton.jit(do_not_specialize=["M", "tiles_per_split", "n_k_tiles", "ONE"])
def _kdot_kernel(
    x_ptr, q0, q1, q2, s_ptr, z_ptr, out_ptr, part_ptr, lock_ptr,
    M, N, K, KW0, KW1, KW2, group_size, stride_xm, stride_om, tiles_per_split, n_k_tiles, ONE,
    W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr,
    IEEE: tl.constexpr, ASM: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    t_start = pid_k * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, n_k_tiles)
    for t in range(t_start, t_end):
        k0 = t * BLOCK_K
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=m_mask[:, None] & (offs_k < K)[None, :], other=0.0)  # fmt: skip
        pairs = _tile_pairs(q0, q1, q2, offs_n, n_mask, t, KW0, KW1, KW2, ONE, W0, W1, W2, BLOCK_K,
                            ASM)  # fmt: skip
        w = tl.trans(_pairs_to_half(pairs, ASM).to(x.dtype))  # (BLOCK_K, BLOCK_N), exact codes
        if IEEE:  # noqa: SIM108  (a constexpr branch in a Triton kernel)
            xc = tl.dot(x, w, input_precision="ieee")
        else:
            xc = tl.dot(x, w)
        g = k0 // group_size
        s = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        xs = tl.sum(x.to(tl.float32), 1)
        acc += (xc - xs[:, None] * z[None, :]) * s[None, :]
    _store_output(acc, out_ptr, part_ptr, lock_ptr, offs_m, offs_n, M, N, stride_om,
                  BLOCK_M, BLOCK_N, SPLIT)  # fmt: skip


def launch_kmajor(
    x2d: torch.Tensor,
    words: list[torch.Tensor],
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
    *,
    dot: bool,
    block_m: int = 16,
    block_n: int = 64,
    block_k: int = 128,
    split_k: int = 1,
    num_warps: int = 4,
    num_stages: int = 1,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One K-major kernel on x2d (M, K) contiguous; returns (M, N) in x2d.dtype.

    ``dot`` picks the tensor-core kernel (block_m >= 16) over the GEMV (block_m rows). Tiles
    must lie inside one group: ``group_size % block_k == 0`` or ``group_size >= in_features``.
    """
    if not tiles_inside_groups(group_size, block_k, in_features):
        raise ValueError(f"block_k={block_k} crosses groups of {group_size}")
    m, n = x2d.shape[0], scales.shape[1]
    widths = [*plane_widths(bits), 0, 0][:3]
    n_k_tiles = triton.cdiv(in_features, block_k)
    tiles_per_split = triton.cdiv(n_k_tiles, max(1, min(split_k, n_k_tiles)))
    split = triton.cdiv(n_k_tiles, tiles_per_split)
    grid = (triton.cdiv(n, block_n), split, triton.cdiv(m, block_m))
    if out is None:
        out = torch.empty((m, n), dtype=x2d.dtype, device=x2d.device)
    part = torch.empty((split, m, n) if split > 1 else (1,), dtype=torch.float32, device=x2d.device)
    locks = _locks(x2d.device, grid[0] * grid[2])
    q = [*words, words[0], words[0]]
    kw = [w.shape[1] for w in q[:3]]
    args = (
        x2d, q[0], q[1], q[2], scales, zeros, out, part, locks,
        m, n, in_features, kw[0], kw[1], kw[2], group_size, x2d.stride(0), out.stride(0),
        tiles_per_split, n_k_tiles, 1,
    )  # fmt: skip
    meta = dict(W0=widths[0], W1=widths[1], W2=widths[2], BLOCK_M=block_m, BLOCK_N=block_n,
                BLOCK_K=block_k, SPLIT=split > 1, ASM=not interpreting(), num_warps=num_warps,
                num_stages=num_stages)  # fmt: skip
    if dot:
        _kdot_kernel[grid](*args, IEEE=x2d.dtype == torch.float32, **meta)
    else:
        _kgemv_kernel[grid](*args, **meta)
    return out


def tiles_inside_groups(group_size: int, block_k: int, in_features: int) -> bool:
    """Every K tile lies inside one group (the scale is applied once per tile)."""
    return group_size % block_k == 0 or group_size >= in_features
