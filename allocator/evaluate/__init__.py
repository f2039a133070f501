"""Evaluating compressed models: perplexity on held-out text and mean KL against the original;
for encoders, embedding cosine and hidden-state MSE against the original."""

from allocator.evaluate.embedding import (
    EmbeddingResult,
    embedding_similarity,
    evaluate_embeddings,
    text_batches,
)
from allocator.evaluate.metrics import (
    EvalResult,
    LogProbCache,
    auto_batch_size,
    evaluate,
    evaluate_many,
    mean_kl,
    perplexity,
)

__all__ = [
    "EmbeddingResult",
    "EvalResult",
    "LogProbCache",
    "auto_batch_size",
    "embedding_similarity",
    "evaluate",
    "evaluate_embeddings",
    "evaluate_many",
    "mean_kl",
    "perplexity",
    "text_batches",
]
