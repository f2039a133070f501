"""A tiny random Llama for fast evaluation tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def windows():
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 96, (5, 16), generator=generator)
