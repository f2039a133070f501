"""A tiny randomly initialized Llama (2 blocks, hidden 64) and token windows for fast tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config).eval()
    return model


@pytest.fixture(scope="session")
def tiny_ids() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 128, (6, 24), generator=generator)


GRID = "bits=2,3,4,8 group=32"
