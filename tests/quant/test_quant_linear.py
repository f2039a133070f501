"""QuantLinear equals the dequantized reference; buffers match the layout; device moves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from allocator.quant.compress import compress
from allocator.quant.quant_linear import QuantLinear
from allocator.schema.option import Option

KEYS = [
    "b2-g64",
    "b3-g64",
    "b4-g128-sym",
    "b5-g32",
    "b6-gc",
    "b8-g128",
    "b3-g64-2:4",
    "b4-g32-s0.4",
]


@pytest.mark.parametrize("key", KEYS)
def test_forward_equals_dequantized_reference(key):
    torch.manual_seed(0)
    linear = nn.Linear(200, 40)
    x = torch.randn(3, 5, 200)
    option = Option.parse(key)
    module = QuantLinear.from_linear(linear, option)
    expected = F.linear(x, compress(linear.weight, option).weight, linear.bias)
    assert torch.equal(module(x), expected)


@pytest.mark.parametrize("key", KEYS)
def test_rebuilt_from_layout_and_state_dict(key):
    linear = nn.Linear(200, 40, bias=False)
    module = QuantLinear.from_linear(linear, Option.parse(key))
    clone = QuantLinear(module.layout())
    clone.load_state_dict(module.state_dict())
    x = torch.randn(2, 200)
    assert torch.equal(clone(x), module(x))
    assert ("zeros" in module.state_dict()) == (not Option.parse(key).symmetric)


def test_storage_matches_size_model():
    from allocator.schema.size import DEFAULT_SIZE_MODEL
    from allocator.schema.unit import Unit

    unit = Unit(name="x", shape=(64, 256))
    for key in ["b3-g64", "b4-g128-sym", "b4-g128-2:4", "b3-g128-s0.5"]:
        option = Option.parse(key)
        module = QuantLinear.from_linear(nn.Linear(256, 64, bias=False), option)
        stored = sum(t.numel() * t.element_size() * 8 for t in module.state_dict().values())
        assert stored == pytest.approx(DEFAULT_SIZE_MODEL.cost_bits(option, unit), rel=0.01)


def test_dtype_and_cache_follow_input():
    module = QuantLinear.from_linear(nn.Linear(64, 16), Option.parse("b4-g32"))
    x = torch.randn(2, 64)
    y32 = module(x)
    y64 = module(x.double())
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), y32)


@pytest.mark.parametrize("key", ["b3-g64", "b4-g128-sym", "b4-g64-2:4", "b3-g32-2:4"])
def test_kernel_op_reads_our_layout(key):
    """The kernels' custom ops (reference path on CPU) agree with QuantLinear's dequantization."""
    torch.manual_seed(1)
    module = QuantLinear.from_linear(nn.Linear(256, 48, bias=False), Option.parse(key))
    x = torch.randn(3, 256)
    y = module.kernel_forward(x)
    if y is None:
        pytest.skip("allocator.kernels does not register the op")
    torch.testing.assert_close(y, module(x), rtol=1e-4, atol=1e-4)
