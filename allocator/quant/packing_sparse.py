"""The sparse packed layouts: only the kept codes plus index metadata, on top of the bit-plane
packing of ``allocator.quant.packing`` (codes along K, i.e. the (K, N) transposed weight). One
class, ``SparsePackedWeight``, serves checkpoints, QuantLinear and the 2:4 Triton kernel.

- ``nm`` (N:M, e.g. 2:4): every M consecutive inputs of a column keep N codes. With
  KM = K rounded up to a multiple of M, ``values`` packs the kept codes as a (KM*N/M, N_out)
  matrix (kept row r lies in block r // N; inside a block, lower positions first) and ``index``
  packs each kept code's position inside its M-block (ceil(log2 M) bits, one 2-bit plane for
  2:4) the same way, so kept row r, column n is the weight at ``k = M * (r // N) + index``.
- ``mask`` (unstructured): ``index`` packs the 1-bit keep mask (K, N_out); ``values`` packs the
  kept codes in row-major (k, n) order as one (n_kept, 1) column.

``scales``/``zeros`` are (n_groups, N_out) fp16 over the dense K, as in ``PackedWeight``;
``weight[n, k] = (code - zero) * scale`` where k is kept, exactly 0 where it is pruned. Bits
stored match the size model (``allocator.schema.size``): kept*b + numel (mask) or
kept*ceil(log2 M) (N:M), plus the scales and zeros.

``pack_sparse`` is what checkpoints store (N:M when the mask has exactly N per M-block and
K % M == 0, else the mask layout); ``pack_weight_24`` is the 2:4 layout the kernel reads for any
mask and K (a block keeping fewer than 2 is topped up with its lowest free positions, K padded
to a multiple of 4). For K % 4 == 0 and an exact 2:4 mask both give the same planes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from allocator.quant.packing import group_fields, pack_codes, unpack_codes


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

    @property
    def kept_rows(self) -> int:
        """Rows of the N:M value matrix: ``ceil(K / M) * N``."""
        assert self.nm is not None
        keep_n, m = self.nm
        return -(-self.in_features // m) * keep_n

    @property
    def planes(self) -> list[torch.Tensor]:
        """The kept-code planes (the kernel's name for ``values``)."""
        return self.values

    @property
    def indices(self) -> torch.Tensor:
        """The single 2-bit position plane of a 2:4 layout (what the kernel reads)."""
        return self.index[0]

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
        rows = self.kept_rows
        kept = unpack_codes(self.values, self.bits, rows)  # (KM*n/m, N)
        pos = unpack_codes(self.index, self.index_bits, rows).long()
        block_start = (torch.arange(rows) // keep_n * m).unsqueeze(1)
        k_padded = rows // keep_n * m
        codes = torch.zeros(k_padded, n, dtype=torch.int32)
        codes.scatter_(0, block_start + pos, kept)
        mask = torch.zeros(k_padded, n, dtype=torch.bool)
        mask.scatter_(0, block_start + pos, True)
        return codes[:k], mask[:k]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense (out, in) weight, zeros at pruned positions."""
        codes, mask = self.codes_kn()
        groups = torch.arange(self.in_features) // self.group_size
        weight = (codes.float() - self.zeros.float()[groups]) * self.scales.float()[groups]
        return (weight * mask).t().contiguous().to(dtype)

    def storage_bits(self) -> int:
        tensors = [*self.values, *self.index, self.scales, self.zeros]
        return sum(t.numel() * t.element_size() * 8 for t in tensors)


def nm_storable(keep_mask: torch.Tensor, nm: tuple[int, int] | None) -> bool:
    """True when the mask (out, in) has exactly N kept per M-group and K % M == 0."""
    if nm is None or keep_mask.shape[1] % nm[1]:
        return False
    per_group = keep_mask.reshape(keep_mask.shape[0], -1, nm[1]).sum(dim=2)
    return bool((per_group == nm[0]).all())


def _pack_nm(
    codes: torch.Tensor,
    keep: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bits: int,
    group_size: int,
    nm: tuple[int, int],
    in_features: int,
) -> SparsePackedWeight:
    """The N:M layout of codes and a keep mask, both (out, KM) with exactly N kept per M-block
    (KM a multiple of M, columns past ``in_features`` padding)."""
    keep_n, m = nm
    out_features, k_padded = codes.shape
    rows = k_padded // m * keep_n
    mask_kn = keep.t()
    # positions of kept entries inside each M-block, ascending: (KM/M, N, out) -> (rows, out)
    blocks = mask_kn.reshape(k_padded // m, m, out_features)
    order = torch.argsort((~blocks).to(torch.int8), dim=1, stable=True)[:, :keep_n]
    kept = torch.gather(codes.t().to(torch.int64).reshape(k_padded // m, m, out_features), 1, order)
    return SparsePackedWeight(
        pattern="nm",
        values=pack_codes(kept.reshape(rows, out_features), bits),
        index=pack_codes(order.reshape(rows, out_features), max(1, math.ceil(math.log2(m)))),
        n_kept=int(keep[:, :in_features].sum()),
        nm=nm,
        **group_fields(scale, zero, bits, group_size, in_features, out_features),
    )


def pack_sparse(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    keep_mask: torch.Tensor,
    bits: int,
    group_size: int,
    nm: tuple[int, int] | None,
) -> SparsePackedWeight:
    """Pack codes (out, in), scale/zero (out, n_groups) and a keep mask (out, in) for storage."""
    if nm is not None and nm_storable(keep_mask, nm):
        return _pack_nm(codes, keep_mask, scale, zero, bits, group_size, nm, codes.shape[1])
    out_features, in_features = codes.shape
    codes_kn = codes.t().to(torch.int64)
    mask_kn = keep_mask.t()
    flat = codes_kn[mask_kn].reshape(-1, 1)
    return SparsePackedWeight(
        pattern="mask",
        values=pack_codes(flat, bits),
        index=pack_codes(mask_kn.to(torch.int64), 1),
        n_kept=int(keep_mask.sum()),
        **group_fields(scale, zero, bits, group_size, in_features, out_features),
    )


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


def pack_weight_24(
    codes: torch.Tensor,
    mask: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bits: int,
    group_size: int,
) -> SparsePackedWeight:
    """The kernel's 2:4 layout of codes (out, in) under any mask (out, in); scale and zero are
    (out, n_groups). The group size must be a multiple of 4 (no block straddles two groups)."""
    if group_size % 4:
        raise ValueError(f"group_size={group_size}: 2:4 packing needs a multiple of 4")
    out_features, in_features = codes.shape
    keep = complete_24_mask(mask.bool())
    padded = torch.zeros(out_features, keep.shape[1], dtype=torch.int64)
    padded[:, :in_features] = codes.to(torch.int64)
    return _pack_nm(padded, keep, scale, zero, bits, group_size, (2, 4), in_features)
