"""One sparse layout: what checkpoints store for 2:4 is what the 2:4 kernel reads."""

from __future__ import annotations

import torch

from allocator.quant.packing_sparse import pack_sparse, pack_weight_24
from allocator.quant.prune import nm_mask
from allocator.quant.rtn import quantize_rtn


def test_storage_and_kernel_24_layouts_are_the_same_planes() -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 64, generator=gen)
    q = quantize_rtn(weight, 4, 32)
    mask = nm_mask(weight.abs(), 2, 4)
    stored = pack_sparse(q.codes, q.scale, q.zero, mask, 4, 32, (2, 4))
    kernel = pack_weight_24(q.codes, mask, q.scale, q.zero, 4, 32)
    assert stored.pattern == kernel.pattern == "nm" and stored.nm == kernel.nm == (2, 4)
    assert all(torch.equal(a, b) for a, b in zip(stored.planes, kernel.planes, strict=True))
    assert torch.equal(stored.indices, kernel.indices)
    assert torch.equal(stored.dequantize(), kernel.dequantize())
    torch.testing.assert_close(stored.dequantize(), q.dequantize() * mask, rtol=2e-3, atol=1e-3)


def test_ragged_24_pads_the_last_block() -> None:
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(8, 42, generator=gen)
    q = quantize_rtn(weight, 3, 16)
    mask = nm_mask(weight.abs(), 2, 4)
    packed = pack_weight_24(q.codes, mask, q.scale, q.zero, 3, 16)
    assert packed.kept_rows == 22
    torch.testing.assert_close(packed.dequantize(), q.dequantize() * mask, rtol=2e-3, atol=1e-3)
