"""Fixtures for the executor tests: a tiny random Llama and correlated activations."""

from __future__ import annotations

import pytest
import torch


def make_tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture(scope="module")
def token_ids():
    return torch.randint(0, 96, (6, 16), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def activations():
    """Correlated inputs X (n, 200) with uneven column scales, and its H = X^T X / n."""
    generator = torch.Generator().manual_seed(2)
    mix = torch.randn(200, 200, generator=generator) / 14
    scales = torch.rand(200, generator=generator) * 3 + 0.1
    x = (torch.randn(2048, 200, generator=generator) @ mix) * scales
    return x, x.T @ x / x.shape[0]


@pytest.fixture(scope="module")
def weight():
    return torch.randn(48, 200, generator=torch.Generator().manual_seed(3)) * 0.05
