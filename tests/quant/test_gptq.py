"""GPTQ: beats RTN on the proxy objective, equals RTN on identity H, act-order, ragged groups."""

from __future__ import annotations

import pytest
import torch

from allocator.errors import InputError
from allocator.models.actstats import ActStats
from allocator.quant.compress import compress, compress_weight
from allocator.quant.gptq import gptq_quantize
from allocator.quant.packing import pack_weight
from allocator.schema.option import Option


def proxy(delta: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(dW H dW^T): the layer output error GPTQ minimises."""
    return float(torch.trace(delta @ hessian @ delta.T))


@pytest.mark.parametrize("key", ["b3-g64", "b4-g128", "b2-gc", "b3-g32-sym"])
def test_gptq_beats_rtn_on_proxy(weight, activations, key):
    _, hessian = activations
    option = Option.parse(key)
    rtn = compress_weight(weight, option)
    gptq = compress_weight(weight, option, hessian=hessian.clone()) if False else None
    gptq = compress(weight, option, hessian, method="gptq").weight
    assert proxy(gptq - weight, hessian) < 0.8 * proxy(rtn - weight, hessian)
    ordered = compress(weight, option, hessian, method="gptq", act_order=True).weight
    assert proxy(ordered - weight, hessian) < 0.8 * proxy(rtn - weight, hessian)


def test_gptq_on_identity_hessian_equals_rtn(weight):
    option = Option.parse("b3-g64")
    rtn = compress(weight, option)
    gptq = compress(weight, option, torch.eye(200), method="gptq")
    assert torch.equal(gptq.quantized.codes, rtn.quantized.codes)
    assert torch.equal(gptq.weight, rtn.weight)


def test_accumulator_matches_direct_hessian(activations):
    x, hessian = activations
    acc = ActStats(200)
    for chunk in x.split(300):
        acc.add_batch(chunk.unsqueeze(0))
    assert acc.n_tokens == x.shape[0]
    torch.testing.assert_close(acc.hessian.float(), hessian, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act_order", [False, True])
def test_codes_pack_to_the_returned_weight(weight, activations, act_order):
    """Ragged last group (200 = 3 x 64 + 8); group scales follow the original columns."""
    _, hessian = activations
    q = gptq_quantize(weight, hessian, 4, 64, act_order=act_order)
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 15
    assert q.scale.shape == (48, 4)
    packed = pack_weight(q.codes, q.scale, q.zero, 4, 64)
    assert torch.equal(packed.dequantize(), q.dequantize())


def test_dead_inputs_are_zeroed(weight, activations):
    _, hessian = activations
    h = hessian.clone()
    h[5, :], h[:, 5] = 0, 0
    q = gptq_quantize(weight, h, 4, 64)
    assert torch.all(q.dequantize()[:, 5] == 0)


def test_gptq_needs_a_hessian(weight):
    with pytest.raises(InputError, match="Hessian"):
        compress(weight, Option.parse("b4-g128@gptq"))
    with pytest.raises(InputError, match="Hessian shape"):
        compress(weight, Option.parse("b4-g128@gptq"), torch.eye(10))
