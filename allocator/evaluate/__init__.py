"""Evaluating compressed models: perplexity on held-out text and mean KL against the original."""

from allocator.evaluate.metrics import EvalResult, LogProbCache, evaluate, mean_kl, perplexity

__all__ = ["EvalResult", "LogProbCache", "evaluate", "mean_kl", "perplexity"]
