"""Gemma 3 270M, a real model of another family: sliding + full attention layers, BOS, 262k vocab."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def gemma():
    from allocator.models.loader import load_model

    try:
        return load_model("gemma3-270m")
    except Exception as exc:  # the packages are installed by scripts/setup.sh
        pytest.skip(f"gemma3-270m not available: {exc}")


def test_blockwise_replay_equals_forward_beyond_the_sliding_window(gemma) -> None:
    """640 tokens > the 512-token sliding window: local and global layers see different masks."""
    from allocator.models.blocks import find_backbone, record_block_calls, replay_gap
    from allocator.models.corpus import default_evaluation_text
    from allocator.models.windows import token_windows

    ids = token_windows(gemma.tokenizer, default_evaluation_text()[:20000], seq_len=640,
                        n_windows=1, contiguous=True)  # fmt: skip
    assert int(ids[0, 0]) == gemma.tokenizer.bos_token_id
    gap, first_bad = replay_gap(gemma.model, ids)
    assert first_bad is None and gap < 1e-4
    backbone = find_backbone(gemma.model)
    inputs = record_block_calls(backbone, ids, 1)
    hidden = inputs.hidden[0]
    with torch.no_grad():
        for block in backbone.layers:  # the old replay: block 0's arguments for every block
            hidden = inputs.calls[0][0](block, hidden)
        wrong = backbone.logits(hidden).log_softmax(-1)
        right = gemma.model(input_ids=ids, use_cache=False).logits.log_softmax(-1)
    kl = float((right.exp() * (right - wrong)).sum(-1).mean())
    assert kl > 0.01  # what the old replay got wrong, measured as KL vs the model's forward


def test_bos_windows_score_what_the_model_expects(gemma) -> None:
    from allocator.evaluate import evaluate
    from allocator.models.corpus import default_evaluation_text
    from allocator.models.windows import token_windows

    text = default_evaluation_text()[:30000]
    with_bos = token_windows(gemma.tokenizer, text, seq_len=256, n_windows=2, contiguous=True)
    without = token_windows(gemma.tokenizer, text, seq_len=256, n_windows=2, contiguous=True,
                            bos=False)  # fmt: skip
    ppl_bos = evaluate(gemma.model, with_bos, progress=False).perplexity
    ppl_raw = evaluate(gemma.model, without, progress=False).perplexity
    assert ppl_bos < 0.8 * ppl_raw
