"""Quality of a compressed encoder / embedding model against the original, streamed by batch.

Two numbers on held-out texts, each text a padded row with its attention mask:

- ``cosine``: mean over texts of cos(e', e) between the compressed and the original model's
  sentence embeddings, e = the attention-mask-weighted mean of the last hidden state (the
  pooling of sentence-transformers models such as all-MiniLM-L6-v2); ``cosine_min`` is the worst
  text;
- ``hidden_mse``: mean squared error of the last hidden state over real (unpadded) tokens, and
  ``relative_mse``, the same divided by the original's mean square (scale-free).

The reference model runs next to the candidates batch by batch, so memory is one batch of
hidden states per model. ``text_batches`` turns text into such rows: consecutive sentences
grouped into passages of at most ``max_len`` tokens, tokenized with the model's special tokens.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import torch

from allocator.errors import InputError


@dataclass
class EmbeddingResult:
    """Embedding agreement with the original model on n_texts texts (n_tokens real tokens)."""

    cosine: float
    cosine_min: float
    hidden_mse: float
    relative_mse: float
    n_texts: int
    n_tokens: int
    seconds: float


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of hidden (B, L, d) over the tokens ``mask`` (B, L) keeps (all when None)."""
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.to(hidden.dtype)[..., None]
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def text_batches(
    tokenizer: Any, text: str, *, n_texts: int, max_len: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (n, L): the first ``n_texts`` passages of the text.

    Sentences are grouped greedily into passages of at most ``max_len`` tokens (special tokens
    included); rows are padded to the longest passage.
    """
    if tokenizer is None:
        raise InputError("embedding evaluation needs the model's tokenizer")
    sentences = [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]
    budget = max(max_len - 2, 1)  # room for [CLS]/[SEP]
    passages: list[str] = []
    current: list[str] = []
    used = 0
    for sentence in sentences:
        length = len(tokenizer(sentence, add_special_tokens=False).input_ids)
        if current and used + length > budget:
            passages.append(" ".join(current))
            if len(passages) >= n_texts:
                break
            current, used = [], 0
        current.append(sentence)
        used += length
    if current and len(passages) < n_texts:
        passages.append(" ".join(current))
    if not passages:
        raise InputError("the evaluation text has no sentences to embed; give more text")
    encoded = tokenizer(
        passages, padding=True, truncation=True, max_length=max_len, return_tensors="pt"
    )
    return encoded.input_ids, encoded.attention_mask


@torch.no_grad()
def _hidden(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device))
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden.float().cpu()


def evaluate_embeddings(
    models: dict[str, Any],
    input_ids: torch.Tensor,
    reference: Any,
    *,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "embedding",
) -> dict[str, EmbeddingResult]:
    """Cosine of pooled embeddings and hidden-state MSE of each model against ``reference``."""
    from tqdm.auto import tqdm

    began = time.perf_counter()
    mask_all = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    cos_sum = dict.fromkeys(models, 0.0)
    cos_min = dict.fromkeys(models, 1.0)
    sq_err = dict.fromkeys(models, 0.0)
    ref_sq = 0.0
    n_tokens = 0
    bar = tqdm(total=input_ids.shape[0], desc=desc, disable=not progress)
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size]
        mask = mask_all[start : start + batch_size]
        ref_hidden = _hidden(reference, ids, mask)
        ref_pooled = mean_pool(ref_hidden, mask)
        keep = mask.bool()
        tokens = int(keep.sum())
        width = ref_hidden.shape[-1]
        ref_sq += float(ref_hidden[keep].square().sum())
        n_tokens += tokens
        for name, model in models.items():
            hidden = _hidden(model, ids, mask)
            cos = torch.nn.functional.cosine_similarity(mean_pool(hidden, mask), ref_pooled, dim=-1)
            cos_sum[name] += float(cos.sum())
            cos_min[name] = min(cos_min[name], float(cos.min()))
            sq_err[name] += float((hidden - ref_hidden)[keep].square().sum())
        bar.update(ids.shape[0])
    bar.close()
    n = input_ids.shape[0]
    elements = max(n_tokens * width, 1)
    seconds = time.perf_counter() - began
    return {
        name: EmbeddingResult(
            cosine=cos_sum[name] / n,
            cosine_min=cos_min[name],
            hidden_mse=sq_err[name] / elements,
            relative_mse=sq_err[name] / max(ref_sq, 1e-30),
            n_texts=n,
            n_tokens=n_tokens,
            seconds=seconds,
        )
        for name in models
    }


def embedding_similarity(
    model: Any,
    reference: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> EmbeddingResult:
    """``evaluate_embeddings`` for one model."""
    return evaluate_embeddings(
        {"model": model},
        input_ids,
        reference,
        attention_mask=attention_mask,
        batch_size=batch_size,
        progress=progress,
    )["model"]
