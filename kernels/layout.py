"""Kernel layouts, converted once at load from the bit planes of ``allocator.quant.packing``.

- K-major (``to_kmajor``): each plane transposed to (N, K_al * w / 32) int32, K padded with zero
  codes to a multiple of ``KMAJOR_ALIGN``; row n holds the codes of output n along K, so one
  thread's 128-bit load is 128 / w consecutive codes of one column. Inside a word the codes are
  pair-interleaved: code t = 2 i + h of the word (k = 32 / w * word + t) sits at bits
  ``16 h + i w``, so one shift and one mask put codes 2i and 2i + 1 in the two 16-bit halves
  (two fp16 values after or-ing 0x6400 each). Read by ``kernels.kmajor``.
- torch int4 (``to_int4pack``): 4-bit codes as the (N, K / 2) uint8 matrix that
  ``torch._convert_weight_to_int4pack`` tiles for ``torch._weight_int4pack_mm`` (even k in the
  high nibble) and scales/zeros as its (n_groups, N, 2) ``qScaleAndZeros``, whose dequantization
  is ``(q - 8) * scale + zero``: ours ``(q - z) * s`` is ``zero = (8 - z) * s``.
- torch int8 (``to_int8pack``): 8-bit codes with one group per column as the (N, K) int8 matrix
  ``q - 128`` and per-column scales for ``torch._weight_int8pack_mm`` (``w = q8 * scale``);
  a zero other than 128 becomes a rank-one correction ``(sum_k x) * (128 - z) * s``.
"""

from __future__ import annotations

import torch

from allocator.quant.packing import WORD_BITS, padded_k, plane_widths

KMAJOR_ALIGN = 256  # codes; every power-of-two K tile up to this divides the padded K


def kmajor_k(in_features: int) -> int:
    """K padded for the K-major layout."""
    return -(-in_features // KMAJOR_ALIGN) * KMAJOR_ALIGN


def pair_order(width: int) -> torch.Tensor:
    """Bit offset of code t of a K-major word: t = 2 i + h sits at ``16 h + i * width``."""
    t = torch.arange(WORD_BITS // width)
    return (t % 2) * 16 + (t // 2) * width


def _permute_codes(words: torch.Tensor, width: int, src: torch.Tensor, dst: torch.Tensor):
    """Move each code of every word from bit offset src[t] to dst[t] (int32 in and out)."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    mask = (1 << width) - 1
    out = torch.zeros_like(w)
    for a, b in zip(src.tolist(), dst.tolist(), strict=True):
        out |= ((w >> a) & mask) << b
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)


def to_kmajor(planes: list[torch.Tensor], bits: int, in_features: int) -> list[torch.Tensor]:
    """The K-major, pair-interleaved words of each bit plane (on the planes' device)."""
    k_al = kmajor_k(in_features)
    out = []
    for plane, width in zip(planes, plane_widths(bits), strict=True):
        rows = k_al * width // WORD_BITS
        words = torch.zeros((plane.shape[1], rows), dtype=torch.int32, device=plane.device)
        words[:, : plane.shape[0]] = plane.t()
        linear = torch.arange(WORD_BITS // width) * width
        out.append(_permute_codes(words, width, linear, pair_order(width)))
    return out


def from_kmajor(words: list[torch.Tensor], bits: int, in_features: int) -> list[torch.Tensor]:
    """Inverse of ``to_kmajor``: the bit planes of ``allocator.quant.packing``."""
    k_pad = padded_k(in_features)
    out = []
    for w, width in zip(words, plane_widths(bits), strict=True):
        linear = torch.arange(WORD_BITS // width) * width
        plane = _permute_codes(w, width, pair_order(width), linear)
        out.append(plane[:, : k_pad * width // WORD_BITS].t().contiguous())
    return out


def codes_nk(planes: list[torch.Tensor], bits: int, in_features: int) -> torch.Tensor:
    """The (N, K) int32 codes of bit planes (on the planes' device)."""
    from .reference import unpack_planes

    return unpack_planes(planes, bits, in_features).t().contiguous()


def int4pack_applies(bits: int, group_size: int, in_features: int, out_features: int) -> bool:
    """Whether torch's int4 kernels can hold this weight (4 bits, their group sizes, K % 1024
    for 8 inner k-tiles... any K multiple of 32 with 2 inner k-tiles, N a multiple of 8)."""
    return (
        bits == 4
        and group_size in (32, 64, 128, 256)
        and in_features % group_size == 0
        and in_features % 32 == 0
        and out_features % 8 == 0
    )


def int4pack_inner_k_tiles(in_features: int) -> int:
    """The most inner k-tiles (8, 4 or 2) K allows: 8 gives 16-byte loads in tinygemm."""
    for tiles in (8, 4, 2):
        if in_features % (tiles * 16) == 0:
            return tiles
    raise ValueError(f"in_features={in_features} is not a multiple of 32")


def to_int4pack(
    planes: list[torch.Tensor], scales: torch.Tensor, zeros: torch.Tensor, in_features: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit planes as torch's int4 input: the (N, K / 2) uint8 codes (even k in the high nibble,
    what ``torch._convert_weight_to_int4pack`` tiles) and the (n_groups, N, 2) fp32
    ``qScaleAndZeros`` (scale, (8 - z) * scale): ``(q - 8) * scale + zero = (q - z) * s``."""
    codes = codes_nk(planes, 4, in_features)
    packed = ((codes[:, 0::2] << 4) | codes[:, 1::2]).to(torch.uint8)
    s, z = scales.float(), zeros.float()
    return packed, torch.stack([s, (8.0 - z) * s], dim=2).contiguous()


def int8pack_applies(bits: int, group_size: int, in_features: int) -> bool:
    """torch's int8 kernel takes one scale per column: 8 bits, one group for all of K."""
    return bits == 8 and group_size >= in_features


def to_int8pack(
    planes: list[torch.Tensor], scales: torch.Tensor, zeros: torch.Tensor, in_features: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """8-bit planes (one group) as ``torch._weight_int8pack_mm`` input: the (N, K) int8 matrix
    ``q - 128``, the (N,) scales, and the (N,) rank-one correction ``(128 - z) * s`` that
    multiplies ``sum_k x`` (zero when z = 128): ``x W = int8mm(x) + sum(x) * bias``."""
    codes = codes_nk(planes, 8, in_features)
    s, z = scales[0].float(), zeros[0].float()
    return (codes - 128).to(torch.int8), s, ((128.0 - z) * s).contiguous()
