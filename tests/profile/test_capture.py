from __future__ import annotations

import torch

from allocator.profile.capture import capture_stats


def _direct_inputs(model, ids, name):
    seen = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    return torch.cat([x.reshape(-1, x.shape[-1]) for x in seen]).double()


def test_hessian_matches_full_forward_inputs(tiny_model, tiny_ids):
    capture = capture_stats(tiny_model, tiny_ids, batch_size=4, progress=False)
    for name in ("model.layers.1.self_attn.q_proj", "model.layers.0.mlp.down_proj"):
        x = _direct_inputs(tiny_model, tiny_ids, name)
        expected = x.T @ x / x.shape[0]
        assert torch.allclose(capture.stats[name].hessian, expected, rtol=1e-4, atol=1e-6)
        assert torch.allclose(capture.stats[name].act_sq, torch.diagonal(expected), rtol=1e-4)
    assert capture.stats[name].n_tokens == tiny_ids.numel()


def test_shared_inputs_share_statistics(tiny_model, tiny_ids):
    stats = capture_stats(tiny_model, tiny_ids, progress=False).stats
    q, k, v = (stats[f"model.layers.0.self_attn.{p}_proj"] for p in "qkv")
    assert q is k is v
    assert stats["model.layers.0.mlp.gate_proj"] is stats["model.layers.0.mlp.up_proj"]
    assert stats["model.layers.0.mlp.gate_proj"] is not q
    assert stats["model.layers.0.self_attn.o_proj"] is not q


def test_lim_scores_are_cosine_gaps(tiny_model, tiny_ids):
    capture = capture_stats(tiny_model, tiny_ids, progress=False)
    assert set(capture.lim) == {0, 1}
    assert all(0.0 <= v <= 2.0 for v in capture.lim.values())


def _context(model, ids):
    from allocator.models.units import find_units
    from allocator.profile.context import ProfileContext
    from allocator.schema.option import Option

    options = [Option.parse(k) for k in ("b2-g32", "b4-g32", "b3-g32@gptq")]
    return ProfileContext(model=model, input_ids=ids, units=find_units(model), options=options,
                          progress=False)  # fmt: skip


def test_block_by_block_scoring_equals_the_whole_capture_and_keeps_one_block(tiny_model, tiny_ids):
    """hessian/hessian_diag score each block while its statistics are held, then drop them."""
    from allocator.profile.estimators.hessian import hessian_diag_losses, hessian_losses

    whole = _context(tiny_model, tiny_ids)
    whole.capture()  # scored from the kept statistics
    streamed = _context(tiny_model, tiny_ids)
    held: list[int] = []
    original = streamed.by_block

    def spy(score):
        def counting(units):
            held.append(len(streamed._block_stats or {}))
            score(units)

        original(counting)

    streamed.by_block = spy
    for estimator in (hessian_losses, hessian_diag_losses):
        assert estimator(streamed) == estimator(whole)
    assert streamed._capture is None  # nothing of the whole model was kept
    assert held == [7, 7, 7, 7]  # two estimators x two blocks, 7 linears each


def test_context_masks_follow_the_unit_and_its_weight(tiny_model, tiny_ids):
    """A unit's sparse options share a mask; another unit, or the same unit's weight changed
    (block_error swaps weights in and out), gets masks of its own."""
    from allocator.models.units import find_units
    from allocator.profile.context import ProfileContext
    from allocator.quant.compress import compress_weight
    from allocator.schema.option import Option

    options = [Option.parse(k) for k in ("b2-g32-s0.5", "b4-g32-s0.5", "b3-g32-2:4")]
    ctx = ProfileContext(model=tiny_model, input_ids=tiny_ids, units=find_units(tiny_model),
                         options=options, progress=False)  # fmt: skip
    first, second = ctx.units[:2]
    for unit in (first, second, first):
        for option in options:
            expected = compress_weight(ctx.module(unit).weight, option)
            assert torch.equal(ctx.compress(unit, option, with_stats=False), expected)
    module = ctx.module(first)
    generator = torch.Generator().manual_seed(3)
    module.weight.data = module.weight.data * torch.rand(module.weight.shape, generator=generator)
    for option in options:
        expected = compress_weight(module.weight, option)
        assert torch.equal(ctx.compress(first, option, with_stats=False), expected)
