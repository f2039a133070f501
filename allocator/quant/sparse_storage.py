"""Storage of pruned + quantized weights: only the kept codes plus index metadata.

Two layouts, both built on the bit-plane packing of ``allocator.quant.packing`` (codes along K,
i.e. the (K, N) transposed weight):

- ``nm`` (N:M, e.g. 2:4): every M consecutive inputs of a column keep N codes. ``values`` packs
  the kept codes as a (K*N/M, N_out) matrix, ``index`` packs each kept code's position inside
  its M-group (ceil(log2 M) bits, 2 for 2:4) the same way. Needs K % M == 0.
- ``mask`` (unstructured): ``index`` packs the 1-bit keep mask (K, N_out); ``values`` packs the
  kept codes in row-major (k, n) order as one (n_kept, 1) column.

Bits stored match ``allocator.cost``: kept*b + numel (mask) or kept*ceil(log2 M) (N:M), plus
the fp16 scales and zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from allocator.quant.packing import pack_codes, unpack_codes


@dataclass
class SparsePackedWeight:
    """Kept codes and their positions; scales/zeros (n_groups, N_out) fp16 as in PackedWeight."""

    pattern: str  # "nm" or "mask"
    values: list[torch.Tensor]
    index: list[torch.Tensor]
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int
    in_features: int
    out_features: int
    n_kept: int
    nm: tuple[int, int] | None = None

    @property
    def index_bits(self) -> int:
        return 1 if self.nm is None else max(1, math.ceil(math.log2(self.nm[1])))

    def codes_kn(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, keep mask), both (K, N_out); pruned codes are 0."""
        k, n = self.in_features, self.out_features
        if self.pattern == "mask":
            mask = unpack_codes(self.index, 1, k).bool()
            flat = unpack_codes(self.values, self.bits, self.n_kept)[:, 0]
            codes = torch.zeros(k, n, dtype=torch.int32)
            codes[mask] = flat
            return codes, mask
        assert self.nm is not None
        keep_n, m = self.nm
        rows = k * keep_n // m
        kept = unpack_codes(self.values, self.bits, rows)  # (K*n/m, N)
        pos = unpack_codes(self.index, self.index_bits, rows).long()
        group_start = (torch.arange(rows) // keep_n * m).unsqueeze(1)
        codes = torch.zeros(k, n, dtype=torch.int32)
        codes.scatter_(0, group_start + pos, kept)
        mask = torch.zeros(k, n, dtype=torch.bool)
        mask.scatter_(0, group_start + pos, True)
        return codes, mask

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        codes, mask = self.codes_kn()
        groups = torch.arange(self.in_features) // self.group_size
        weight = (codes.float() - self.zeros.float()[groups]) * self.scales.float()[groups]
        return (weight * mask).t().contiguous().to(dtype)


def nm_storable(keep_mask: torch.Tensor, nm: tuple[int, int] | None) -> bool:
    """True when the mask (out, in) has exactly N kept per M-group and K % M == 0."""
    if nm is None or keep_mask.shape[1] % nm[1]:
        return False
    per_group = keep_mask.reshape(keep_mask.shape[0], -1, nm[1]).sum(dim=2)
    return bool((per_group == nm[0]).all())


def pack_sparse(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    keep_mask: torch.Tensor,
    bits: int,
    group_size: int,
    nm: tuple[int, int] | None,
) -> SparsePackedWeight:
    """Pack codes (out, in), scale/zero (out, n_groups) and a keep mask (out, in)."""
    out_features, in_features = codes.shape
    codes_kn = codes.t().to(torch.int64)
    mask_kn = keep_mask.t()
    common = {
        "scales": scale.t().contiguous().to(torch.float16),
        "zeros": zero.t().contiguous().to(torch.float16),
        "bits": bits,
        "group_size": group_size,
        "in_features": in_features,
        "out_features": out_features,
        "n_kept": int(keep_mask.sum()),
    }
    if nm_storable(keep_mask, nm):
        assert nm is not None
        keep_n, m = nm
        rows = in_features * keep_n // m
        # positions of kept entries inside each M-group, ascending: (K/M, n, N) -> (K*n/M, N)
        grouped = mask_kn.reshape(in_features // m, m, out_features)
        order = torch.argsort((~grouped).to(torch.int8), dim=1, stable=True)[:, :keep_n]
        kept = torch.gather(codes_kn.reshape(in_features // m, m, out_features), 1, order)
        index_bits = max(1, math.ceil(math.log2(m)))
        return SparsePackedWeight(
            pattern="nm",
            values=pack_codes(kept.reshape(rows, out_features), bits),
            index=pack_codes(order.reshape(rows, out_features), index_bits),
            nm=nm,
            **common,  # type: ignore[arg-type]
        )
    flat = codes_kn[mask_kn].reshape(-1, 1)
    return SparsePackedWeight(
        pattern="mask",
        values=pack_codes(flat, bits),
        index=pack_codes(mask_kn.to(torch.int64), 1),
        **common,  # type: ignore[arg-type]
    )
