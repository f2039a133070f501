"""2:4 sparse packing and its GEMV kernel (interpreter on the CPU) against fp64."""

from __future__ import annotations

import allocator.kernels.ops
import pytest
import torch
from allocator.kernels.reference import dequantize_planes_24
from allocator.kernels.sparse24 import launch_sparse24

import allocator.schema  # noqa: F401  (import order: schema before cost)
from allocator.cost import SizeModel
from allocator.errors import InputError
from allocator.quant.packing import pack_weight
from allocator.quant.packing_sparse import complete_24_mask, pack_weight_24
from allocator.quant.rtn import quantize_rtn
from allocator.schema import Unit
from allocator.schema.option import Option

from ._helpers import rel_err


def _packed(k: int, n: int, bits: int, group: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    q = quantize_rtn(torch.randn(n, k, generator=gen), bits, group)
    mask = torch.rand(n, k, generator=gen) > 0.5
    return q, mask, pack_weight_24(q.codes, mask, q.scale, q.zero, bits, group)


def test_completed_mask_keeps_two_of_four_and_prefers_the_mask() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 1, 0, 1]], dtype=torch.bool)
    keep = complete_24_mask(mask)
    assert keep.shape == (1, 12)
    assert keep.view(1, 3, 4).sum(2).tolist() == [[2, 2, 2]]
    assert keep[0].tolist() == [1, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_sparse_dequantize_is_dense_times_mask(bits: int) -> None:
    q, mask, packed = _packed(203, 33, bits, 64, bits)
    dense = pack_weight(q.codes, q.scale, q.zero, bits, 64).dequantize()
    keep = complete_24_mask(mask)[:, :203]
    torch.testing.assert_close(packed.dequantize(), dense * keep, rtol=0, atol=0)
    device_aware = dequantize_planes_24(
        packed.planes, packed.indices, packed.scales, packed.zeros, bits, 64, 203
    )
    torch.testing.assert_close(device_aware.t(), packed.dequantize(), rtol=0, atol=0)


def test_storage_matches_the_size_model() -> None:
    _, _, packed = _packed(256, 64, 4, 128, 0)
    unit = Unit(name="w", shape=(64, 256), numel=64 * 256, kind="linear")
    assert packed.storage_bits() == SizeModel().cost_bits(Option.parse("b4-g128-2:4"), unit)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_sparse_gemv_matches_fp64(bits: int, m: int, dtype: torch.dtype, device: str) -> None:
    k, n, group = 203, 70, 64
    _, _, p = _packed(k, n, bits, group, 10 * bits + m)
    args = [t.to(device) for t in (*p.planes, p.indices, p.scales, p.zeros)]
    planes, (indices, scales, zeros) = args[: len(p.planes)], args[len(p.planes) :]
    weight = dequantize_planes_24(planes, indices, scales, zeros, bits, group, k, torch.float64)
    # aligned tiles with split-K; then group edges inside a tile (64 kept rows = 128 inputs)
    for block_r, split in [(32, 3), (64, 1)]:
        x = torch.randn(m, k, device=device).to(dtype)
        out = torch.full((m, n), float("nan"), dtype=dtype, device=device)
        launch_sparse24(x, planes, indices, scales, zeros, bits, group, k, block_r=block_r,
                        split_k=split, out=out)  # fmt: skip
        assert not out.isnan().any()
        tol = 1e-5 if dtype == torch.float32 else 1e-3
        assert rel_err(out, x.double() @ weight) < tol, (block_r, split)


def test_sparse_op_on_cpu_and_its_validation() -> None:
    _, _, p = _packed(96, 20, 3, 32, 1)
    x = torch.randn(2, 5, 96)
    args = (p.planes, p.indices, p.scales, p.zeros, 3, 32, 96)
    out = torch.ops.allocator.quant_matmul_24(x, *args)
    assert out.shape == (2, 5, 20)
    expected = x.reshape(10, 96) @ p.dequantize().t()
    assert rel_err(out.reshape(10, 20), expected.double()) < 1e-6
    torch.library.opcheck(torch.ops.allocator.quant_matmul_24.default, (x, *args))
    with pytest.raises(InputError, match="indices"):
        torch.ops.allocator.quant_matmul_24(x, p.planes, p.indices[:1], *args[2:])
    with pytest.raises(InputError, match="multiple of 4"):
        torch.ops.allocator.quant_matmul_24(x, *args[:5], 30, 96)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 8, 40])
def test_gpu_sparse_op(m: int) -> None:
    _, _, p = _packed(1024, 512, 4, 128, m)
    cuda = [t.cuda() for t in (*p.planes, p.indices, p.scales, p.zeros)]
    x = torch.randn(m, 1024, device="cuda", dtype=torch.float16)
    out = torch.ops.allocator.quant_matmul_24(x, cuda[:1], *cuda[1:], 4, 128, 1024)
    expected = x.double() @ p.dequantize().t().double().cuda()
    assert rel_err(out, expected) < 2e-3
