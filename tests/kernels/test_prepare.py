"""Weights prepared at load: torch's int4/int8 layouts (checked on the CPU), the op, QuantLinear."""

from __future__ import annotations

import allocator.kernels.ops  # noqa: F401  (registers the ops)
import pytest
import torch
from allocator.kernels.layout import (
    codes_nk,
    int4pack_applies,
    int4pack_inner_k_tiles,
    int8pack_applies,
    to_int4pack,
    to_int8pack,
)
from allocator.kernels.prepare import prepare, prepared_matmul
from torch import nn

from allocator.errors import InputError
from allocator.quant.quant_linear import QuantLinear
from allocator.schema.option import Option

from ._helpers import random_packed, reference_out, rel_err


@pytest.mark.parametrize("group", [32, 64, 128, 256])
def test_int4pack_layout_gives_the_same_products(group: int) -> None:
    """Our 4-bit codes and (scale, zero) in torch's int4 convention: (q - 8) * s + (8 - z) * s.

    torch's CPU int4 kernel takes (N, K) int32 codes; the CUDA one takes the (N, K / 2) uint8
    form (even k in the high nibble), checked here to hold exactly those codes.
    """
    k, n = 512, 48
    planes, scales, zeros = random_packed(k, n, 4, group, group)
    packed, sz = to_int4pack(planes, scales, zeros, k)
    codes = codes_nk(planes, 4, k)
    assert packed.dtype == torch.uint8 and packed.shape == (n, k // 2)
    unpacked = torch.stack([packed >> 4, packed & 0xF], dim=2).reshape(n, k).to(torch.int32)
    assert torch.equal(unpacked, codes)
    x = torch.randn(3, k)
    cpu = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, int4pack_inner_k_tiles(k))
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(x, cpu, group, sz)
    assert rel_err(out, reference_out(x, planes, scales, zeros, 4, group, k)) < 1e-6
    assert int4pack_applies(4, group, k, n) and not int4pack_applies(3, group, k, n)
    assert not int4pack_applies(4, 100, k, n) and not int4pack_applies(4, group, k, 44)


@pytest.mark.parametrize("symmetric", [True, False])
def test_int8pack_layout_gives_the_same_products(symmetric: bool) -> None:
    k, n = 256, 40
    planes, scales, zeros = random_packed(k, n, 8, k, 3)
    if symmetric:
        zeros = torch.full_like(zeros, 128.0)
    w8, s8, bias = to_int8pack(planes, scales, zeros, k)
    assert w8.dtype == torch.int8 and w8.shape == (n, k) and (bias == 0).all() == symmetric
    x = torch.randn(5, k)
    out = torch.ops.aten._weight_int8pack_mm(x, w8, s8) + x.sum(1, keepdim=True) * bias
    assert rel_err(out, reference_out(x, planes, scales, zeros, 8, k, k)) < 1e-6
    assert int8pack_applies(8, k, k) and not int8pack_applies(8, 128, k)


def test_prepared_op_contract_and_validation() -> None:
    planes, scales, zeros = random_packed(150, 40, 5, 32, 1)
    weight = prepare(planes, scales, zeros, 5, 32, 150)
    assert weight.int4 is None and weight.int8 is None  # torch layouts: CUDA only
    assert weight.nbytes() == sum(w.numel() * 4 for w in weight.words)
    x = torch.randn(2, 3, 150)
    out = prepared_matmul(x, weight)
    assert out.shape == (2, 3, 40)
    expected = reference_out(x.reshape(6, 150), planes, scales, zeros, 5, 32, 150)
    assert rel_err(out.reshape(6, 40), expected) < 1e-6
    torch.library.opcheck(torch.ops.allocator.quant_matmul_prepared.default, (x, *weight.op_args()))
    args = list(weight.op_args())
    args[1] = [w[:, :-1] for w in args[1]]
    with pytest.raises(InputError, match="K-major"):
        torch.ops.allocator.quant_matmul_prepared(x, *args)


def test_quant_linear_prepares_once_and_again_after_a_write() -> None:
    module = QuantLinear.from_linear(nn.Linear(256, 48, bias=False), Option.parse("b4-g64"))
    first = module.prepared_weight()
    assert first is not None and module.prepared_weight() is first
    with torch.no_grad():
        module.plane0.add_(0)  # an in-place write bumps the version: prepared again
    again = module.prepared_weight()
    assert again is not first
    assert all(torch.equal(a, b) for a, b in zip(again.words, first.words, strict=True))
    module.to(torch.float32)  # _apply drops the cache
    assert module._prepared is None
    sym = QuantLinear.from_linear(nn.Linear(64, 16, bias=False), Option.parse("b4-g32-sym"))
    assert (sym.prepared_weight().zeros == 8).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 5, 16, 100])
@pytest.mark.parametrize("key", ["b2-g128", "b3-g64", "b4-g128", "b5-g128", "b6-g64", "b8-g128"])
def test_gpu_quant_linear_prepared_matches_reference(key, m, dtype) -> None:
    """QuantLinear on CUDA (prepared weight, autotuned backend incl. torch int4 for bf16)."""
    torch.manual_seed(m)
    module = QuantLinear.from_linear(nn.Linear(1024, 520, bias=True), Option.parse(key)).cuda()
    x = torch.randn(m, 1024, device="cuda", dtype=dtype)
    out = module(x)
    weight = module.dequantized_weight(torch.float64)
    expected = x.double() @ weight.t() + module.bias.double()
    assert rel_err(out, expected) < (2e-3 if dtype == torch.float16 else 1e-2)
    assert module.prepared_weight() is module.prepared_weight()
