"""Perplexity and KL against direct computations on a tiny model."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from allocator.evaluate import LogProbCache, evaluate, mean_kl, perplexity


def _direct(model, reference, windows):
    with torch.no_grad():
        logits = model(input_ids=windows).logits.double()
        ref = reference(input_ids=windows).logits.double()
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    p_ref = F.log_softmax(ref, -1)
    kl = (p_ref.exp() * (p_ref - F.log_softmax(logits, -1))).sum(-1).mean()
    return math.exp(float(nll)), float(kl)


def _perturbed(model):
    other = copy.deepcopy(model)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return other


def test_perplexity_matches_direct(tiny_llama, windows):
    expected, _ = _direct(tiny_llama, tiny_llama, windows)
    got = perplexity(tiny_llama, windows, batch_size=2, progress=False)
    assert got == pytest.approx(expected, rel=1e-5)


def test_kl_of_model_with_itself_is_zero(tiny_llama, windows):
    assert abs(mean_kl(tiny_llama, tiny_llama, windows, progress=False)) < 1e-6


def test_kl_streamed_and_cached_match_direct(tiny_llama, windows):
    other = _perturbed(tiny_llama)
    ppl, kl = _direct(other, tiny_llama, windows)
    assert kl > 1e-3
    streamed = evaluate(other, windows, tiny_llama, batch_size=2, progress=False)
    assert streamed.perplexity == pytest.approx(ppl, rel=1e-5)
    assert streamed.kl == pytest.approx(kl, rel=1e-4)
    cache = LogProbCache.build(tiny_llama, windows, batch_size=3, progress=False)
    try:
        cached = mean_kl(other, cache, windows, batch_size=2, progress=False)
    finally:
        cache.close()
    assert cached == pytest.approx(kl, rel=2e-2)


def test_cache_rejects_other_windows(tiny_llama, windows):
    cache = LogProbCache.build(tiny_llama, windows, progress=False)
    try:
        with pytest.raises(ValueError, match="other windows"):
            mean_kl(tiny_llama, cache, windows.flip(0), progress=False)
    finally:
        cache.close()


def test_evaluate_many_matches_one_by_one(tiny_llama, windows):
    """Several candidates in one pass give the same numbers as separate passes."""
    import copy

    from allocator.evaluate import evaluate_many

    other = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    together = evaluate_many(
        {"a": other, "b": tiny_llama}, windows, tiny_llama, reference_name="ref",
        batch_size=2, progress=False,
    )  # fmt: skip
    alone = evaluate(other, windows, tiny_llama, batch_size=3, progress=False)
    assert together["a"].perplexity == pytest.approx(alone.perplexity, rel=1e-5)
    assert together["a"].kl == pytest.approx(alone.kl, rel=1e-4)
    assert together["b"].kl == pytest.approx(0.0, abs=1e-6)
    assert together["ref"].perplexity == pytest.approx(together["b"].perplexity, rel=1e-6)


def test_auto_batch_size_bounds_logit_memory(tiny_llama):
    from allocator.evaluate import auto_batch_size

    assert auto_batch_size(tiny_llama, 16) == 8
    assert auto_batch_size(tiny_llama, 16, budget_bytes=4 * 16 * 96 * 3) == 3
    assert auto_batch_size(tiny_llama, 10**6, budget_bytes=1) == 1
