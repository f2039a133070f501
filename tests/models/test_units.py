"""Unit discovery and fused-group keys on a tiny randomly initialized Llama."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from allocator.models.units import expert_group, find_units, fused_group  # noqa: E402


def _tiny_llama():
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config)


def test_find_units_lists_block_linears_with_shapes_and_ties() -> None:
    units = find_units(_tiny_llama())
    assert len(units) == 3 * 7
    by_name = {u.name: u for u in units}
    k_proj = by_name["model.layers.1.self_attn.k_proj"]
    assert k_proj.shape == (32, 64) and k_proj.layer == 1 and k_proj.kind == "k_proj"
    assert k_proj.tie == "model.layers.1.self_attn.qkv"
    assert by_name["model.layers.2.mlp.up_proj"].tie == "model.layers.2.mlp.gate_up"
    assert by_name["model.layers.0.mlp.down_proj"].tie is None
    assert not any("lm_head" in n or "embed" in n for n in by_name)


def test_lm_head_and_embeddings_are_opt_in() -> None:
    names = {
        u.name for u in find_units(_tiny_llama(), include_lm_head=True, include_embeddings=True)
    }
    assert "lm_head" in names and "model.embed_tokens" in names


def test_group_keys() -> None:
    assert fused_group("model.layers.4.self_attn.v_proj") == "model.layers.4.self_attn.qkv"
    assert fused_group("model.layers.4.self_attn.o_proj") is None
    assert (
        expert_group("model.layers.2.mlp.experts.7.down_proj")
        == "model.layers.2.mlp.experts.*.down_proj"
    )
