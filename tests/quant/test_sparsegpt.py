"""SparseGPT: exact ratios, valid 2:4, beats magnitude pruning on the proxy, joint quantization."""

from __future__ import annotations

import pytest
import torch

from allocator.quant.compress import compress
from allocator.quant.packing_sparse import nm_storable
from allocator.quant.sparsegpt import sparsegpt_prune

from .test_gptq import proxy


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.77])
def test_unstructured_ratio_exact(weight, activations, ratio):
    _, hessian = activations
    result = sparsegpt_prune(weight, hessian, sparsity=ratio)
    assert int((~result.mask).sum()) == round(ratio * weight.numel())
    assert torch.all(result.weight[~result.mask] == 0)


def test_two_four_pattern(weight, activations):
    _, hessian = activations
    result = sparsegpt_prune(weight, hessian, nm=(2, 4))
    assert nm_storable(result.mask, (2, 4))


def test_beats_magnitude_on_proxy(weight, activations):
    _, hessian = activations
    for key in ("b8-g128-s0.5", "b8-g128-2:4"):
        sparse = compress(weight, torch_option(key), hessian, method="sparsegpt").weight
        magnitude = compress(weight, torch_option(key), method="magnitude").weight
        assert proxy(sparse - weight, hessian) < 0.8 * proxy(magnitude - weight, hessian)


def test_joint_quantization_codes_match_weight(weight, activations):
    _, hessian = activations
    result = sparsegpt_prune(weight, hessian, nm=(2, 4), bits=3, group_size=64)
    assert result.quantized is not None
    assert torch.equal(result.quantized.dequantize() * result.mask, result.weight)


def test_clip_search_lowers_joint_output_error(weight, activations):
    """Pruned and quantized jointly, the searched group ranges leave less output error."""
    _, hessian = activations
    heavy = weight.clone()
    heavy[::7, ::13] *= 8

    def error(clip, **pattern):
        result = sparsegpt_prune(heavy, hessian, bits=3, group_size=64, clip=clip, **pattern)
        return proxy(result.weight - heavy, hessian)

    assert error(True, sparsity=0.5) < error(False, sparsity=0.5)
    assert error(True, nm=(2, 4)) < error(False, nm=(2, 4))


def torch_option(key):
    from allocator.schema.option import Option

    return Option.parse(key)
