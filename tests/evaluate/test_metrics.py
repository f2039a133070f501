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
