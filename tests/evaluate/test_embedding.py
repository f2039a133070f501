"""Embedding metrics (cosine of pooled embeddings, hidden MSE) and the encoders' Fisher objective."""

from __future__ import annotations

import pytest
import torch

from allocator.errors import UnsupportedError
from allocator.evaluate.embedding import evaluate_embeddings, mean_pool, text_batches
from allocator.profile.api import profile
from allocator.quant.apply import apply_plan, uniform_plan
from allocator.quant.rtn import fake_quantize
from allocator.schema.option import Option
from tests.helpers import tiny_ids, tiny_model


def _embedding(model, ids):
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state
    return torch.nn.functional.normalize(mean_pool(hidden).double(), dim=-1)


def test_identical_model_scores_one_and_quantized_less() -> None:
    ids = tiny_ids(6, 20)
    reference = tiny_model("bert")
    quantized = tiny_model("bert")
    apply_plan(quantized, uniform_plan(quantized, "b2-g32"), progress=False)
    results = evaluate_embeddings(
        {"same": tiny_model("bert"), "b2": quantized}, ids, reference, batch_size=4, progress=False
    )
    assert results["same"].cosine == pytest.approx(1.0, abs=1e-6)
    assert results["same"].hidden_mse == pytest.approx(0.0, abs=1e-12)
    assert 0 < results["b2"].cosine < 1 and results["b2"].cosine_min <= results["b2"].cosine
    assert results["b2"].relative_mse > 0 and results["b2"].n_tokens == ids.numel()


def test_padding_is_masked_out() -> None:
    """A padded row scores like the same row alone: pooling and MSE skip padded tokens."""
    reference, quantized = tiny_model("bert"), tiny_model("bert")
    apply_plan(quantized, uniform_plan(quantized, "b3-g32"), progress=False)
    ids = tiny_ids(1, 12)
    alone = evaluate_embeddings({"q": quantized}, ids, reference, progress=False)["q"]
    padded = torch.cat([ids, torch.zeros(1, 8, dtype=ids.dtype)], dim=1)
    mask = torch.cat([torch.ones(1, 12), torch.zeros(1, 8)], dim=1).long()
    masked = evaluate_embeddings(
        {"q": quantized}, padded, reference, attention_mask=mask, progress=False
    )["q"]
    assert masked.cosine == pytest.approx(alone.cosine, abs=1e-5)
    assert masked.hidden_mse == pytest.approx(alone.hidden_mse, rel=1e-4)
    assert masked.n_tokens == 12


class _WordTokenizer:
    """Whitespace tokenizer with [CLS]=1/[SEP]=2/[PAD]=0, enough for text_batches."""

    def __call__(self, text, add_special_tokens=True, padding=False, truncation=False,
                 max_length=None, return_tensors=None):  # fmt: skip
        from types import SimpleNamespace

        texts = [text] if isinstance(text, str) else text
        rows = [[3 + len(w) for w in t.split()] for t in texts]
        if add_special_tokens:
            rows = [[1, *r, 2] for r in rows]
        if truncation and max_length:
            rows = [r[:max_length] for r in rows]
        if not padding:
            return SimpleNamespace(input_ids=rows[0] if isinstance(text, str) else rows)
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return SimpleNamespace(input_ids=ids, attention_mask=mask)


def test_text_batches_group_sentences_into_passages() -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    ids, mask = text_batches(_WordTokenizer(), text, n_texts=5, max_len=16)
    assert ids.shape[0] == 5 and ids.shape == mask.shape and ids.shape[1] <= 16
    assert bool((ids[:, 0] == 1).all())  # special tokens kept
    assert int(mask.sum(dim=1).min()) > 2


def test_fisher_predicts_embedding_cosine_loss() -> None:
    """1/2 sum F dW^2 of the projection objective predicts the measured mean 1 - cos."""
    ids = tiny_ids(8, 24)
    model = tiny_model("bert")
    table = profile(model, ids, "fisher", "b3-g32", progress=False, settings={"probes": 64})
    reference = _embedding(model, ids)
    checked = 0
    for unit in table.units[:6]:
        module = model.get_submodule(unit.name)
        weight = module.weight.data.clone()
        module.weight.data = fake_quantize(weight, Option.parse("b3-g32"))
        measured = float((1 - (_embedding(model, ids) * reference).sum(-1)).mean())
        module.weight.data = weight
        if measured > 1e-6:  # q/k barely move a random-weight BERT's embedding
            assert 0.5 < table.losses[unit.name]["b3-g32"] / measured < 2.0
            checked += 1
    assert checked >= 3


def test_causal_only_estimator_refused_for_encoders() -> None:
    with pytest.raises(UnsupportedError, match=r"causal-LM head.*fisher"):
        profile(tiny_model("bert"), tiny_ids(2, 16), "kl", "b4-g32", progress=False)
