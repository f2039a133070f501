"""The bit-plane packed layout: one scheme for every width in {1..8}. The single source of truth
shared by checkpoints, QuantLinear's reference path and the Triton kernels.

A b-bit code is split into power-of-two planes, low bits first: 2 = [2], 3 = [2, 1],
4 = [4], 5 = [4, 1], 6 = [4, 2], 7 = [4, 2, 1], 8 = [8]. A plane of width w holds bits
``[shift, shift + w)`` of every code, where shift is the sum of the widths before it.

Each plane is an int32 tensor of shape (K_pad / (32 / w), N), K = in_features padded to a
multiple of 32, N = out_features: codes are packed along the input dimension, so word row r,
column n holds codes k = r * (32 / w) + j at bits ``[j * w, (j + 1) * w)``. Padding codes are 0.
Scales and zeros are fp16 tensors of shape (n_groups, N); group g covers k in
``[g * group_size, (g + 1) * group_size)``; ``weight[n, k] = (code - zero) * scale``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

WORD_BITS = 32
K_ALIGN = 32


def plane_widths(bits: int) -> list[int]:
    """Power-of-two plane widths for a bit width, low bits first."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits={bits}: packing supports 1 to 8 bits")
    widths, remaining = [], bits
    for width in (8, 4, 2, 1):
        if remaining >= width:
            widths.append(width)
            remaining -= width
    return widths


def padded_k(in_features: int) -> int:
    return -(-in_features // K_ALIGN) * K_ALIGN


def pack_codes(codes_kn: torch.Tensor, bits: int) -> list[torch.Tensor]:
    """Pack unsigned codes of shape (K, N) into bit planes (see module docstring)."""
    k, n = codes_kn.shape
    codes = torch.zeros(padded_k(k), n, dtype=torch.int64)
    codes[:k] = codes_kn.to(torch.int64)
    planes, shift = [], 0
    for width in plane_widths(bits):
        per_word = WORD_BITS // width
        part = (codes >> shift) & ((1 << width) - 1)
        part = part.view(-1, per_word, n)
        offsets = (torch.arange(per_word, dtype=torch.int64) * width).view(1, per_word, 1)
        words = (part << offsets).sum(dim=1)
        planes.append(_to_int32(words))
        shift += width
    return planes


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """Reinterpret uint32 values held in int64 as int32 (two's complement)."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_codes(planes: list[torch.Tensor], bits: int, in_features: int) -> torch.Tensor:
    """Inverse of pack_codes: (K, N) int32 codes."""
    widths = plane_widths(bits)
    if len(planes) != len(widths):
        raise ValueError(f"{bits}-bit weights need {len(widths)} planes, got {len(planes)}")
    codes = None
    shift = 0
    for plane, width in zip(planes, widths, strict=True):
        per_word = WORD_BITS // width
        words = plane.to(torch.int64) & 0xFFFFFFFF
        offsets = (torch.arange(per_word, dtype=torch.int64) * width).view(1, per_word, 1)
        part = (words.unsqueeze(1) >> offsets) & ((1 << width) - 1)
        part = part.reshape(-1, plane.shape[1]) << shift
        codes = part if codes is None else codes | part
        shift += width
    assert codes is not None
    return codes[:in_features].to(torch.int32)


@dataclass
class PackedWeight:
    """A packed linear weight: bit planes, fp16 scales and zeros, and its geometry."""

    planes: list[torch.Tensor]
    scales: torch.Tensor  # (n_groups, N) fp16
    zeros: torch.Tensor  # (n_groups, N) fp16
    bits: int
    group_size: int
    in_features: int
    out_features: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The (out, in) weight this packing represents."""
        codes = unpack_codes(self.planes, self.bits, self.in_features).float()  # (K, N)
        groups = torch.arange(self.in_features) // self.group_size
        scale = self.scales.float()[groups]
        zero = self.zeros.float()[groups]
        return ((codes - zero) * scale).t().contiguous().to(dtype)

    def storage_bits(self) -> int:
        tensors = [*self.planes, self.scales, self.zeros]
        return sum(t.numel() * t.element_size() * 8 for t in tensors)


def pack_weight(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int
) -> PackedWeight:
    """Pack RTN/GPTQ output: codes (out, in), scale and zero (out, n_groups)."""
    out_features, in_features = codes.shape
    fields = group_fields(scale, zero, bits, group_size, in_features, out_features)
    return PackedWeight(planes=pack_codes(codes.t(), bits), **fields)


def group_fields(
    scale: torch.Tensor,
    zero: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
    out_features: int,
) -> dict[str, Any]:
    """The fields every packed layout shares: fp16 (n_groups, N) scales and zeros from
    (out, n_groups) ones, and the geometry."""
    return {
        "scales": scale.t().contiguous().to(torch.float16),
        "zeros": zero.t().contiguous().to(torch.float16),
        "bits": bits,
        "group_size": group_size,
        "in_features": in_features,
        "out_features": out_features,
    }
