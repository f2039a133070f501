"""Block-by-block replay reproduces every family's own forward (hidden states and logits)."""

from __future__ import annotations

import pytest
import torch

from allocator.errors import UnsupportedError
from allocator.models.blocks import check_replay, find_backbone, record_block_calls, replay_gap
from tests.helpers import FAMILIES, tiny_ids, tiny_model


@pytest.mark.parametrize("family", list(FAMILIES))
def test_replay_matches_forward(family: str) -> None:
    model = tiny_model(family)
    gap, first_bad = replay_gap(model, tiny_ids())
    assert first_bad is None
    assert gap < 1e-5


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "mistral", "qwen2"])
def test_sliding_layers_get_their_own_arguments(family: str) -> None:
    """Layers of different attention types receive different masks or rotary tables."""
    model = tiny_model(family)
    inputs = record_block_calls(find_backbone(model), tiny_ids(), 2)
    signatures = set()
    for calls in inputs.calls:
        kwargs = calls[0].kwargs
        signatures.add(
            tuple(
                id(v)
                for k, v in sorted(kwargs.items())
                if k in ("attention_mask", "position_embeddings")
            )
        )
    if family in ("gemma2", "gemma3", "qwen2"):
        assert len(signatures) == 2


def test_replay_of_first_block_only_args_would_be_wrong() -> None:
    """Guard for the old behaviour: giving every Gemma 3 block block 0's arguments changes outputs."""
    model = tiny_model("gemma3")
    backbone = find_backbone(model)
    ids = tiny_ids()
    inputs = record_block_calls(backbone, ids, 4)
    hidden_own = hidden_first = inputs.hidden[0]
    with torch.no_grad():
        for index, block in enumerate(backbone.layers):
            hidden_own = inputs.calls[index][0](block, hidden_own)
            hidden_first = inputs.calls[0][0](block, hidden_first)
    assert float((hidden_own - hidden_first).abs().max()) > 1e-3


def test_check_replay_names_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replaying without the recorded masks turns sliding layers into full ones: caught."""
    import allocator.models.blocks as blocks

    strip = blocks._strip_cache
    monkeypatch.setattr(
        blocks,
        "_strip_cache",
        lambda kw: {k: v for k, v in strip(kw).items() if k != "attention_mask"},
    )
    with pytest.raises(UnsupportedError, match="block 0"):
        check_replay(tiny_model("gemma3"), tiny_ids())


def test_unknown_architecture_message() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(UnsupportedError, match="block list"):
        find_backbone(net)
