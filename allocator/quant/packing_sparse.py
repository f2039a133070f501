"""2:4 semi-structured packing on top of the bit-plane layout of ``packing.py``.

Along the input dimension every block of 4 weights keeps exactly 2 (the positions of a 2:4
mask, topped up with the lowest free positions where the mask keeps fewer). With
K4 = in_features rounded up to a multiple of 4 and KH = K4 / 2 kept rows:

- ``planes``: the kept codes, a (KH, N) code matrix packed with ``pack_codes`` (bit planes,
  rows padded to a multiple of 32). Kept row ``r`` lies in block ``r // 2``; of a block's two
  kept weights the one at the lower position comes first.
- ``indices``: one 2-bit plane, ``pack_codes`` of the (KH, N) positions in [0, 3] inside the
  block, so kept row r, column n is the weight at ``k = 4 * (r // 2) + index``.
- ``scales``, ``zeros``: (n_groups, N) fp16 over the dense K, as in ``packing.py``; the group
  size must be a multiple of 4 so a block never straddles two groups.

``weight[n, k] = (code - zero) * scale`` where k is kept, and exactly 0 where it is pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from allocator.quant.packing import pack_codes, unpack_codes


def complete_24_mask(mask: torch.Tensor) -> torch.Tensor:
    """A (out, K4) bool mask with exactly 2 of every 4 kept: ``mask``'s first 2 per block,
    topped up with the lowest positions it leaves out. ``mask`` is (out, in)."""
    out_features, in_features = mask.shape
    k4 = -(-in_features // 4) * 4
    padded = torch.zeros(out_features, k4, dtype=torch.bool, device=mask.device)
    padded[:, :in_features] = mask
    blocks = padded.view(out_features, k4 // 4, 4).to(torch.int64)
    # rank positions: kept ones first (by position), then the others (by position)
    order = torch.arange(4, device=mask.device).expand_as(blocks) + 4 * (1 - blocks)
    keep = torch.zeros_like(blocks, dtype=torch.bool)
    keep.scatter_(2, order.argsort(dim=2)[..., :2], True)
    return keep.view(out_features, k4)


@dataclass
class SparsePackedWeight:
    """A 2:4 sparse packed linear weight: kept-code planes, a 2-bit index plane, scales, zeros."""

    planes: list[torch.Tensor]
    indices: torch.Tensor
    scales: torch.Tensor  # (n_groups, N) fp16
    zeros: torch.Tensor  # (n_groups, N) fp16
    bits: int
    group_size: int
    in_features: int
    out_features: int

    @property
    def kept_rows(self) -> int:
        return -(-self.in_features // 4) * 2

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense (out, in) weight, zeros at pruned positions."""
        codes = unpack_codes(self.planes, self.bits, self.kept_rows).to(torch.float64)
        index = unpack_codes([self.indices], 2, self.kept_rows).to(torch.int64)
        rows = torch.arange(self.kept_rows).unsqueeze(1)
        k = 4 * (rows // 2) + index  # (KH, N)
        group = (4 * (rows // 2)) // self.group_size
        cols = torch.arange(self.out_features).expand_as(k)
        kept = (codes - self.zeros.double()[group, cols]) * self.scales.double()[group, cols]
        dense = torch.zeros(-(-self.in_features // 4) * 4, self.out_features, dtype=torch.float64)
        dense[k, cols] = kept
        return dense[: self.in_features].t().contiguous().to(dtype)

    def storage_bits(self) -> int:
        tensors = [*self.planes, self.indices, self.scales, self.zeros]
        return sum(t.numel() * t.element_size() * 8 for t in tensors)


def pack_weight_24(
    codes: torch.Tensor,
    mask: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bits: int,
    group_size: int,
) -> SparsePackedWeight:
    """Pack codes (out, in) under a 2:4 mask (out, in); scale and zero are (out, n_groups)."""
    if group_size % 4:
        raise ValueError(f"group_size={group_size}: 2:4 packing needs a multiple of 4")
    out_features, in_features = codes.shape
    keep = complete_24_mask(mask.bool())
    k4 = keep.shape[1]
    padded = torch.zeros(out_features, k4, dtype=torch.int64)
    padded[:, :in_features] = codes.to(torch.int64)
    positions = torch.arange(k4).expand(out_features, k4)
    kept_k = positions[keep].view(out_features, k4 // 2)  # ascending within each row
    kept_codes = padded.gather(1, kept_k)
    return SparsePackedWeight(
        planes=pack_codes(kept_codes.t(), bits),
        indices=pack_codes((kept_k % 4).t(), 2)[0],
        scales=scale.t().contiguous().to(torch.float16),
        zeros=zero.t().contiguous().to(torch.float16),
        bits=bits,
        group_size=group_size,
        in_features=in_features,
        out_features=out_features,
    )
