"""compress/compress_weight: fp16, RTN, pruning then quantization, bad options."""

from __future__ import annotations

import pytest
import torch

from allocator.errors import InputError, UnsupportedError
from allocator.quant.compress import compress, compress_weight
from allocator.quant.rtn import fake_quantize
from allocator.schema.option import Option


def test_fp16_rounds(weight):
    out = compress_weight(weight, Option.parse("fp16"))
    assert torch.equal(out, weight.half().float())


def test_rtn_close_to_reference_rtn(weight):
    option = Option.parse("b4-g64")
    ours = compress_weight(weight, option)
    reference = fake_quantize(weight, option)
    # same codes up to the fp16 rounding of scales: within one quantization step
    step = (weight.max() - weight.min()) / 15
    assert (ours - reference).abs().max() <= step


@pytest.mark.parametrize("key", ["b2-g64", "b3-gc", "b4-g32-sym", "b3-g128-s0.5"])
def test_rtn_searched_ranges_beat_min_max(weight, key):
    """RTN (apply and profiling) searches each group's range: per row its squared error is at
    most min-max's, overall clearly lower; ``compress`` keeps the codes of those values."""
    heavy = weight.clone()
    heavy[::7, ::13] *= 8
    option = Option.parse(key)
    searched = compress(heavy, option)
    mask = searched.mask
    plain = fake_quantize(heavy, option, mask, search=False)
    assert torch.equal(compress_weight(heavy, option), searched.weight)
    kept = heavy if mask is None else heavy * mask
    after = (searched.weight - kept).square().sum(dim=1)
    before = (plain - kept).square().sum(dim=1)
    assert torch.all(after <= before * (1 + 1e-6))
    assert after.sum() < 0.95 * before.sum()


@pytest.mark.parametrize(
    "key", ["b4-g64-2:4", "b3-g128-s0.3", "b4-g64-2:4@gptq", "b3-gc-s0.5@gptq"]
)
def test_pruned_then_quantized(weight, activations, key):
    _, hessian = activations
    option = Option.parse(key)
    result = compress(weight, option, hessian)
    assert result.mask is not None
    assert torch.all(result.weight[~result.mask] == 0)
    assert result.mask.float().mean().item() == pytest.approx(1 - option.sparsity, abs=2e-3)
    levels = 2**option.bits
    assert int(result.quantized.codes.max()) < levels


def test_method_override_and_errors(weight):
    with pytest.raises(InputError, match="bits=12"):
        compress(
            weight, Option.model_construct(**{**Option.parse("b4-g128").model_dump(), "bits": 12})
        )
    with pytest.raises(UnsupportedError, match="awq"):
        compress(weight, Option.parse("b4-g128@awq"))
    with pytest.raises(InputError, match="act_sq"):
        compress(weight, Option.parse("b4-g128-s0.5@wanda"))


@pytest.mark.parametrize("key", ["b4-g64", "b3-gc-sym", "b4-g64-2:4", "b3-g32-s0.5", "fp16"])
def test_fast_rtn_path_equals_the_executor(weight, activations, key):
    """compress_weight (vectorized RTN) gives exactly the values compress packs."""
    x, _ = activations
    act_sq = x.square().mean(0)
    option = Option.parse(key)
    fast = compress_weight(weight, option, act_sq=act_sq)
    assert torch.equal(fast, compress(weight, option, act_sq=act_sq).weight)


def test_methods_registry_says_what_each_needs():
    from allocator.quant.compress import QUANT_METHODS, needs_hessian, uses_act_sq

    assert set(QUANT_METHODS.names()) == {"gptq", "magnitude", "rtn", "sparsegpt", "wanda"}
    assert needs_hessian(Option.parse("b4-g128@gptq")) and not needs_hessian(
        Option.parse("b4-g128")
    )
    assert uses_act_sq(Option.parse("b4-g128-2:4")) and not uses_act_sq(Option.parse("b4-g128"))
    assert not uses_act_sq(Option.parse("b4-g128-2:4@magnitude"))
    assert all(QUANT_METHODS.description(n) for n in QUANT_METHODS.names())


def test_mask_memo_shares_one_mask_per_sparsity(monkeypatch, weight):
    """With a memo, the options of one sparsity reuse one mask, and give the same weights."""
    import allocator.quant.compress as compress_module
    from allocator.profile.options import parse_options

    options = parse_options("bits=2,3,4 group=64,c sparsity=0,2:4,0.5")
    act_sq = torch.rand(weight.shape[1]) + 0.1
    expected = {o.key: compress_weight(weight, o, act_sq=act_sq) for o in options}
    calls = []
    real = compress_module._mask_for
    monkeypatch.setattr(compress_module, "_mask_for", lambda *a: calls.append(1) or real(*a))
    memo: dict = {}
    for option in options:
        got = compress_weight(weight, option, act_sq=act_sq, masks=memo)
        assert torch.equal(got, expected[option.key]), option.key
    assert len(calls) == len(memo) == 2  # 2:4 and 50%
