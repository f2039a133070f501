"""Pure PyTorch reference for the packed layout of ``allocator.quant.packing`` (any device).

Used on the CPU by ``allocator::quant_matmul`` and as the oracle of the Triton kernels' tests.
"""

from __future__ import annotations

import torch

from allocator.quant.packing import WORD_BITS, plane_widths


def unpack_planes(planes: list[torch.Tensor], bits: int, in_features: int) -> torch.Tensor:
    """Codes (K, N) int32 from bit planes, on the planes' device (same result as unpack_codes)."""
    widths = plane_widths(bits)
    if len(planes) != len(widths):
        raise ValueError(f"{bits}-bit weights need {len(widths)} planes, got {len(planes)}")
    codes: torch.Tensor | None = None
    shift = 0
    for plane, width in zip(planes, widths, strict=True):
        per_word = WORD_BITS // width
        words = plane.to(torch.int64) & 0xFFFFFFFF
        offsets = torch.arange(per_word, dtype=torch.int64, device=plane.device) * width
        part = (words.unsqueeze(1) >> offsets.view(1, per_word, 1)) & ((1 << width) - 1)
        part = part.reshape(-1, plane.shape[1]) << shift
        codes = part if codes is None else codes | part
        shift += width
    assert codes is not None
    return codes[:in_features].to(torch.int32)


def dequantize_planes(
    planes: list[torch.Tensor],
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The (K, N) weight ``(code - zero[k // group_size]) * scale[k // group_size]``."""
    codes = unpack_planes(planes, bits, in_features).to(torch.float64)
    groups = torch.arange(in_features, device=codes.device) // group_size
    weight = (codes - zeros.to(torch.float64)[groups]) * scales.to(torch.float64)[groups]
    return weight.to(dtype)


def reference_quant_matmul(
    x: torch.Tensor,
    planes: list[torch.Tensor],
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
) -> torch.Tensor:
    """``x @ W`` for x (..., K) and the packed W (K, N), fp32 accumulation, output in x.dtype."""
    weight = dequantize_planes(planes, scales, zeros, bits, group_size, in_features)
    out = x.reshape(-1, in_features).float() @ weight
    return out.to(x.dtype).reshape(*x.shape[:-1], weight.shape[1])


def dequantize_planes_24(
    planes: list[torch.Tensor],
    indices: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The dense (K, N) weight of a 2:4 packing (``allocator.quant.packing_sparse``)."""
    kept_rows = -(-in_features // 4) * 2
    codes = unpack_planes(planes, bits, kept_rows).to(torch.float64)
    index = unpack_planes([indices], 2, kept_rows).to(torch.int64)
    rows = torch.arange(kept_rows, device=codes.device).unsqueeze(1)
    k = 4 * (rows // 2) + index
    group = (4 * (rows // 2)) // group_size
    cols = torch.arange(codes.shape[1], device=codes.device).expand_as(k)
    kept = (codes - zeros.to(torch.float64)[group, cols]) * scales.to(torch.float64)[group, cols]
    dense = torch.zeros(kept_rows * 2, codes.shape[1], dtype=torch.float64, device=codes.device)
    dense[k, cols] = kept
    return dense[:in_features].to(dtype)


def reference_quant_matmul_24(
    x: torch.Tensor,
    planes: list[torch.Tensor],
    indices: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
) -> torch.Tensor:
    """``x @ W`` for a 2:4 packed W (K, N), fp32 accumulation, output in x.dtype."""
    weight = dequantize_planes_24(planes, indices, scales, zeros, bits, group_size, in_features)
    out = x.reshape(-1, in_features).float() @ weight
    return out.to(x.dtype).reshape(*x.shape[:-1], weight.shape[1])
