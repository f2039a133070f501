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


@pytest.mark.parametrize("family", ["llama", "qwen2_moe"])
def test_stage_cache_traces_each_kind_of_block_once(family: str) -> None:
    """Blocks of one class with the same layers reuse the first trace (with their own names);
    the stages equal each block's own trace."""
    from allocator.models.layer_order import StageCache

    model = tiny_model(family)
    prepare_model(model)
    backbone = find_backbone(model)
    inputs = record_block_calls(backbone, tiny_ids(), batch_size=4)
    cache, traces = StageCache(), []
    for index, block in enumerate(backbone.layers):
        prefix = f"{backbone.prefix}.{index}."
        linears = linear_children(block, prefix.rstrip("."))
        inputs.layer = index
        hidden, call = next(iter(inputs))

        def forward(call=call, block=block, hidden=hidden, index=index):
            traces.append(index)
            return call(block, hidden)

        expected = sequential_stages(linears, partial(call, block, hidden))
        assert cache.stages(block, prefix, linears, forward) == expected
    kinds = {(type(b), tuple(sorted(n for n, _ in b.named_modules()))) for b in backbone.layers}
    assert len(traces) == len(kinds) < len(backbone.layers)


def test_stage_cache_keeps_no_trace_that_missed_a_layer() -> None:
    """A trace in which a layer was not called (an MoE expert no token reached) is not reused."""
    from allocator.models.layer_order import StageCache

    model = tiny_model("llama")
    backbone = find_backbone(model)
    inputs = record_block_calls(backbone, tiny_ids(), batch_size=4)
    hidden, call = next(iter(inputs))
    block = backbone.layers[0]
    linears = linear_children(block, f"{backbone.prefix}.0")
    unused = torch.nn.Linear(4, 4)
    linears_plus = {**linears, f"{backbone.prefix}.0.unused": unused}
    cache, calls = StageCache(), []

    def forward():
        calls.append(1)
        return call(block, hidden)

    for _ in range(2):
        stages = cache.stages(block, f"{backbone.prefix}.0.", linears_plus, forward)
        assert f"{backbone.prefix}.0.unused" in stages[-1]
    assert len(calls) == 2
