"""GPTQ: beats RTN on the proxy objective, equals RTN on identity H, act-order, ragged groups."""

from __future__ import annotations

import pytest
import torch

from allocator.errors import InputError
from allocator.models.actstats import ActStats
from allocator.quant.compress import compress, compress_weight
from allocator.quant.gptq import gptq_quantize
from allocator.quant.packing import pack_weight
from allocator.quant.rtn import (
    clipped_group_params_fp16,
    dequantize,
    group_params_fp16,
    quantize_rtn,
    quantize_with_params,
)
from allocator.schema.option import Option


def proxy(delta: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(dW H dW^T): the layer output error GPTQ minimises."""
    return float(torch.trace(delta @ hessian @ delta.T))


@pytest.mark.parametrize("key", ["b3-g64", "b4-g128", "b2-gc", "b3-g32-sym"])
def test_gptq_beats_rtn_on_proxy(weight, activations, key):
    _, hessian = activations
    option = Option.parse(key)
    rtn = compress_weight(weight, option)
    gptq = compress(weight, option, hessian, method="gptq").weight
    assert proxy(gptq - weight, hessian) < 0.8 * proxy(rtn - weight, hessian)
    ordered = compress(weight, option, hessian, method="gptq", act_order=True).weight
    assert proxy(ordered - weight, hessian) < 0.8 * proxy(rtn - weight, hessian)


def test_gptq_on_identity_hessian_equals_rtn(weight):
    """Identity H: no error feedback, so GPTQ is RTN with its group parameters (min-max without
    the clip search, the uniformly weighted searched range with it)."""
    rtn = quantize_rtn(weight, 3, 64, fp16_scales=True)
    plain = gptq_quantize(weight, torch.eye(200), 3, 64, clip=False)
    assert torch.equal(plain.codes, rtn.codes)
    assert torch.equal(plain.dequantize(), rtn.dequantize())
    clipped = gptq_quantize(weight, torch.eye(200), 3, 64)
    scale, zero = clipped_group_params_fp16(weight, 3, 64, False, torch.ones(200))
    assert torch.equal(clipped.codes, quantize_with_params(weight, scale, zero, 3, 64))


def weighted_rounding_error(weight, scale, zero, bits, group, importance):
    """sum_j importance_j * (w - q(w))^2 per row (rounding alone, no GPTQ feedback)."""
    codes = quantize_with_params(weight, scale, zero, bits, group)
    return ((dequantize(codes, scale, zero, group) - weight) ** 2 * importance).sum(dim=1)


@pytest.mark.parametrize(("bits", "group", "symmetric"),
                         [(2, 64, False), (3, 200, False), (4, 32, True)])  # fmt: skip
def test_clip_search_never_worse_than_min_max(weight, activations, bits, group, symmetric):
    """Per row and group the searched range's weighted rounding error is at most min-max's
    (factor 1 is a candidate), and with a few outliers it is clearly lower."""
    _, hessian = activations
    importance = torch.diag(hessian)
    heavy = weight.clone()
    heavy[::7, ::13] *= 8  # outliers widen min-max ranges
    for w in (weight, heavy):
        minmax = group_params_fp16(w, bits, group, symmetric)
        searched = clipped_group_params_fp16(w, bits, group, symmetric, importance)
        for g in range(-(-200 // group)):
            cols = slice(g * group, (g + 1) * group)
            args = (w[:, cols], bits, group, importance[cols])
            before = weighted_rounding_error(
                w[:, cols], *(p[:, g : g + 1] for p in minmax), *args[1:]
            )
            after = weighted_rounding_error(
                w[:, cols], *(p[:, g : g + 1] for p in searched), *args[1:]
            )
            assert torch.all(after <= before * (1 + 1e-6))
    before = weighted_rounding_error(heavy, *group_params_fp16(heavy, bits, group, symmetric),
                                     bits, group, importance).sum()  # fmt: skip
    after = weighted_rounding_error(heavy, *clipped_group_params_fp16(heavy, bits, group,
                                    symmetric, importance), bits, group, importance).sum()  # fmt: skip
    assert after < 0.9 * before


@pytest.mark.parametrize("key", ["b2-g64", "b3-gc", "b3-g64-sym"])
def test_clip_search_lowers_gptq_output_error(weight, activations, key):
    """With the searched ranges GPTQ leaves less output error tr(dW H dW^T) than with min-max."""
    _, hessian = activations
    heavy = weight.clone()
    heavy[::7, ::13] *= 8
    option = Option.parse(key)

    def error(clip, act_order):
        q = gptq_quantize(heavy, hessian, option.bits, option.group_size,
                          symmetric=option.symmetric, act_order=act_order, clip=clip)  # fmt: skip
        return proxy(q.dequantize() - heavy, hessian)

    for act_order in (False, True):
        assert error(True, act_order) < error(False, act_order)


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


def test_clean_target_is_the_weight_when_inputs_agree(weight, activations):
    from allocator.quant.gptq import clean_target

    _, hessian = activations
    torch.testing.assert_close(clean_target(weight, hessian, hessian), weight)


def test_clean_target_is_the_least_squares_weight_for_shifted_inputs():
    """W' minimizes ||Y W'^T - X W^T|| (X original inputs, Y compressed ones): equal to lstsq up
    to the damping, and its output error below keeping W."""
    from allocator.quant.gptq import clean_target

    torch.manual_seed(3)
    tokens, width, out = 4000, 48, 24
    x = torch.randn(tokens, width) @ torch.randn(width, width) / width**0.5
    y = x + 0.2 * torch.randn(tokens, width)  # the inputs after upstream compression
    w = torch.randn(out, width)
    hessian, cross = y.T @ y / tokens, x.T @ y / tokens
    target = clean_target(w, cross, hessian, percdamp=1e-6)
    exact = torch.linalg.lstsq(y.double(), (x @ w.T).double()).solution.T.float()
    torch.testing.assert_close(target, exact, rtol=1e-3, atol=1e-3)
    kept = float((y @ w.T - x @ w.T).norm())
    aimed = float((y @ target.T - x @ w.T).norm())
    assert aimed < 0.95 * kept  # independent noise in Y: most of the error is irreducible
