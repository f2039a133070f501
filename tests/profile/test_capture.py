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
