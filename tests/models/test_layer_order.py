"""The stages in which a block's layers are calibrated (``allocator.models.layer_order``)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from allocator.models.adapters import prepare_model
from allocator.models.blocks import find_backbone, linear_children, record_block_calls
from allocator.models.layer_order import sequential_stages
from tests.helpers import CAUSAL_FAMILIES, tiny_ids, tiny_model


def _stages(family: str, block_index: int = 0) -> tuple[list[list[str]], dict, torch.Tensor]:
    model = tiny_model(family)
    prepare_model(model)
    backbone = find_backbone(model)
    block = backbone.layers[block_index]
    linears = linear_children(block, f"{backbone.prefix}.{block_index}")
    inputs = record_block_calls(backbone, tiny_ids(), batch_size=4)
    inputs.layer = block_index
    hidden, call = next(iter(inputs))
    plain = call(block, hidden)
    stages = sequential_stages(linears, partial(call, block, hidden))
    assert torch.equal(call(block, hidden), plain)  # tracing leaves the block as it was
    short = [[n.removeprefix(f"{backbone.prefix}.{block_index}.") for n in s] for s in stages]
    return short, linears, plain


def test_llama_stages_follow_true_sequential_order() -> None:
    stages, _, _ = _stages("llama")
    assert stages == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"],
        ["mlp.down_proj"],
    ]


def test_parallel_residual_block_puts_attention_and_mlp_inputs_together() -> None:
    """GPT-NeoX (parallel residual): attention and MLP read the block input side by side."""
    stages, _, _ = _stages("gpt_neox")
    assert stages == [
        ["attention.query_key_value", "mlp.dense_h_to_4h"],
        ["attention.dense", "mlp.dense_4h_to_h"],
    ]


def test_moe_experts_and_shared_expert_share_stages() -> None:
    """Qwen2-MoE: every expert's gate/up (and the shared expert's) in one stage, downs next."""
    stages, _, _ = _stages("qwen2_moe", block_index=1)
    experts = [f"mlp.experts.{e}" for e in range(4)]
    assert stages == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ["self_attn.o_proj"],
        [f"{e}.gate_up_proj" for e in experts]
        + ["mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj"],
        [f"{e}.down_proj" for e in experts] + ["mlp.shared_expert.down_proj"],
    ]


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_every_layer_in_exactly_one_stage(family: str) -> None:
    stages, linears, _ = _stages(family, block_index=1)
    named = [n for s in stages for n in s]
    assert len(named) == len(set(named)) == len(linears)
    assert len(stages) >= 2 and all(stages)
