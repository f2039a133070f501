"""Bit-plane packing: bit-exact round trips for every width, ragged K, and dequantization."""

from __future__ import annotations

import pytest
import torch

from allocator.quant.packing import pack_codes, pack_weight, plane_widths, unpack_codes


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("k", [32, 77, 576])
def test_pack_unpack_bit_exact(bits, k):
    generator = torch.Generator().manual_seed(bits * 1000 + k)
    codes = torch.randint(0, 2**bits, (k, 24), generator=generator)
    codes[0, 0], codes[-1, -1] = 2**bits - 1, 0  # extremes, including the sign bit of a word
    planes = pack_codes(codes, bits)
    assert [p.dtype for p in planes] == [torch.int32] * len(plane_widths(bits))
    assert torch.equal(unpack_codes(planes, bits, k), codes.to(torch.int32))


def test_plane_widths_split_low_bits_first():
    assert plane_widths(3) == [2, 1]
    assert sum(plane_widths(6)) == 6 and plane_widths(6) == [4, 2]
    with pytest.raises(ValueError):
        plane_widths(9)


def test_pack_weight_dequantizes_to_codes_times_scales():
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 8, (16, 100), generator=generator).to(torch.uint8)
    scale = (torch.rand(16, 2, generator=generator) + 0.01).half().float()
    zero = torch.randint(0, 8, (16, 2), generator=generator).float()
    packed = pack_weight(codes, scale, zero, 3, 64)
    groups = torch.arange(100) // 64
    expected = (codes.float() - zero[:, groups]) * scale[:, groups]
    assert torch.equal(packed.dequantize(), expected)
