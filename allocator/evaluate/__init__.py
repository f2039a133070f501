"""Evaluating compressed models: perplexity on held-out text and mean KL against the original."""

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
    "EvalResult",
    "LogProbCache",
    "auto_batch_size",
    "evaluate",
    "evaluate_many",
    "mean_kl",
    "perplexity",
]
