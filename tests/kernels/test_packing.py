"""Bit-plane pack/unpack round trips for every width, on ragged shapes."""

from __future__ import annotations

import pytest
import torch
from allocator.kernels.reference import unpack_planes

from allocator.quant.packing import pack_codes, padded_k, plane_widths, unpack_codes


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("shape", [(1, 1), (37, 5), (64, 33), (200, 70)])
def test_round_trip_bit_exact(bits: int, shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(bits * 1000 + shape[0])
    codes = torch.randint(0, 2**bits, shape, generator=gen, dtype=torch.int32)
    planes = pack_codes(codes, bits)
    assert [p.shape[0] for p in planes] == [
        padded_k(shape[0]) * w // 32 for w in plane_widths(bits)
    ]
    assert all(p.dtype == torch.int32 and p.shape[1] == shape[1] for p in planes)
    assert torch.equal(unpack_planes(planes, bits, shape[0]), codes)
    assert torch.equal(unpack_codes(planes, bits, shape[0]), codes)


def test_extreme_codes_survive_sign_bit() -> None:
    codes = torch.full((64, 3), 255, dtype=torch.int32)
    assert torch.equal(unpack_planes(pack_codes(codes, 8), 8, 64), codes)
    ones = torch.ones(32, 2, dtype=torch.int32)
    assert (pack_codes(ones, 1)[0] == -1).all()  # all 32 bits set = int32 -1


def test_wrong_plane_count() -> None:
    planes = pack_codes(torch.zeros(32, 2, dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="planes"):
        unpack_planes(planes[:1], 3, 32)
