"""Perplexity and mean KL divergence of a causal LM on token windows, streamed batch by batch.

Perplexity is ``exp(mean NLL)`` over every predicted token (positions 1..L-1 of each window).
Mean KL is ``KL(p_ref || p_model)`` per token, averaged over every position of every window;
the reference is either a second model (run batch by batch next to the evaluated ones, its
logits shared by every candidate of ``evaluate_many``) or, for small repeated measurements, a
``LogProbCache`` of its log-probabilities kept on disk in fp16 (renormalized when read). Batches
are sized so one batch of fp32 logits stays under ``LOGIT_BYTES``: memory does not grow with
the vocabulary or the number of windows.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from allocator.models.offload import streamed

TOKEN_CHUNK = 512


@dataclass
class EvalResult:
    """Perplexity (and KL when a reference was given) measured on n_tokens predicted tokens."""

    perplexity: float
    kl: float | None
    n_windows: int
    n_tokens: int
    seconds: float


def _batches(windows: torch.Tensor, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    for start in range(0, windows.shape[0], batch_size):
        yield start, windows[start : start + batch_size]


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _logits(model: Any, batch: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=batch.to(_device_of(model)), use_cache=False)
    return out.logits.float().cpu()


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=-1)


def _nll_sum(logits: torch.Tensor, batch: torch.Tensor) -> float:
    """Sum of next-token NLL over a batch: logits (B, L, V), batch (B, L)."""
    pred = logits[:, :-1].reshape(-1, logits.shape[-1])
    target = batch[:, 1:].reshape(-1)
    total = 0.0
    for start in range(0, pred.shape[0], TOKEN_CHUNK):
        chunk = pred[start : start + TOKEN_CHUNK]
        total += float(F.cross_entropy(chunk, target[start : start + TOKEN_CHUNK], reduction="sum"))
    return total


def _kl_sum(ref_log_probs: torch.Tensor, logits: torch.Tensor) -> float:
    """Sum over tokens of KL(ref || model): ref_log_probs and logits (B, L, V)."""
    ref = ref_log_probs.reshape(-1, ref_log_probs.shape[-1])
    mod = logits.reshape(-1, logits.shape[-1])
    total = 0.0
    for start in range(0, ref.shape[0], TOKEN_CHUNK):
        ref_chunk = _log_probs(ref[start : start + TOKEN_CHUNK])  # renormalizes cached fp16
        mod_chunk = _log_probs(mod[start : start + TOKEN_CHUNK])
        total += float(F.kl_div(mod_chunk, ref_chunk, log_target=True, reduction="sum"))
    return total


class LogProbCache:
    """A reference model's log-probabilities on fixed windows, stored as fp16 in a disk memmap.

    Build once with ``LogProbCache.build(reference_model, windows)`` and pass it as ``reference``
    to ``mean_kl``/``evaluate`` for every candidate; 32 x 512 tokens x 49152 vocab take 1.6 GB of
    disk. ``close()`` (or garbage collection) deletes the file.
    """

    def __init__(self, windows: torch.Tensor, vocab: int, folder: str | None = None) -> None:
        self.windows = windows.clone()
        fd, self.path = tempfile.mkstemp(prefix="logprobs-", suffix=".f16", dir=folder)
        os.close(fd)
        shape = (windows.shape[0], windows.shape[1], vocab)
        self.data = np.memmap(self.path, dtype=np.float16, mode="w+", shape=shape)

    @classmethod
    def build(
        cls,
        model: Any,
        windows: torch.Tensor,
        *,
        batch_size: int = 4,
        progress: bool = True,
        folder: str | None = None,
    ) -> LogProbCache:
        cache: LogProbCache | None = None
        model = streamed(model, windows, batch_size)  # offloaded: block by block
        bar = tqdm(total=windows.shape[0], desc="reference log-probs", disable=not progress)
        for start, batch in _batches(windows, batch_size):
            log_probs = _log_probs(_logits(model, batch))
            if cache is None:
                cache = cls(windows, log_probs.shape[-1], folder)
            cache.data[start : start + batch.shape[0]] = log_probs.half().numpy()
            bar.update(batch.shape[0])
        bar.close()
        assert cache is not None
        cache.data.flush()
        return cache

    def log_probs(self, start: int, end: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.data[start:end], dtype=np.float32))

    def close(self) -> None:
        if getattr(self, "data", None) is not None:
            del self.data
            self.data = None  # type: ignore[assignment]
        if os.path.exists(self.path):
            os.unlink(self.path)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _reference_log_probs(reference: Any, windows: torch.Tensor, start: int, batch: torch.Tensor):
    if isinstance(reference, LogProbCache):
        if not torch.equal(reference.windows[start : start + batch.shape[0]], batch):
            raise ValueError("the LogProbCache was built on other windows than the ones evaluated")
        return reference.log_probs(start, start + batch.shape[0])
    return _logits(reference, batch)


LOGIT_BYTES = 512 << 20  # fp32 logits of one batch stay under this (vocab-independent memory)


def auto_batch_size(model: Any, seq_len: int, budget_bytes: int = LOGIT_BYTES) -> int:
    """Windows per batch so one batch's fp32 logits fit ``budget_bytes`` (at least 1)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = int(head.weight.shape[0]) if head is not None else 1
    return max(1, min(8, budget_bytes // max(4 * seq_len * vocab, 1)))


@dataclass
class BatchSums:
    """One batch's sums: next-token NLL per model, KL(reference || model) per model (empty
    without a reference) and the reference's own NLL (with ``reference_nll``)."""

    windows: int
    nll: dict[str, float]
    kl: dict[str, float]
    reference_nll: float = 0.0


def batch_sums(
    models: dict[str, Any],
    windows: torch.Tensor,
    reference: Any = None,
    *,
    batch_size: int,
    reference_nll: bool = False,
    on_batch: Any = None,
) -> list[BatchSums]:
    """The sums of every batch of ``batch_size`` windows, in order (``on_batch(n)`` after each).

    Adding these in order gives ``evaluate_many``'s totals bit for bit, so windows may be
    split at batch boundaries across processes (``allocator.evaluate.distributed``)."""
    # offloaded models run every window through one block at a time (each block read once)
    models = {name: streamed(model, windows, batch_size) for name, model in models.items()}
    if reference is not None and not isinstance(reference, LogProbCache):
        reference = streamed(reference, windows, batch_size)
    own_reference = reference is not None and not isinstance(reference, LogProbCache)
    out = []
    for start, batch in _batches(windows, batch_size):
        sums = BatchSums(windows=int(batch.shape[0]), nll={}, kl={})
        ref_logits = None
        if reference is not None:
            ref_logits = _reference_log_probs(reference, windows, start, batch)
            if own_reference and reference_nll:
                sums.reference_nll = _nll_sum(ref_logits, batch)
        for name, model in models.items():
            logits = _logits(model, batch)
            sums.nll[name] = _nll_sum(logits, batch)
            if ref_logits is not None:
                sums.kl[name] = _kl_sum(ref_logits, logits)
            del logits
        del ref_logits
        out.append(sums)
        if on_batch is not None:
            on_batch(sums.windows)
    return out


def results_of(
    sums: list[BatchSums],
    names: list[str],
    seq_len: int,
    *,
    with_kl: bool,
    reference_name: str | None = None,
    seconds: float = 0.0,
) -> dict[str, EvalResult]:
    """Perplexity and mean KL of every model from its batches' sums (added in batch order)."""
    n = sum(s.windows for s in sums)
    n_pred = n * (seq_len - 1)
    nll = dict.fromkeys(names, 0.0)
    kl = dict.fromkeys(names, 0.0)
    ref_nll = 0.0
    for s in sums:
        for name in names:
            nll[name] += s.nll[name]
            if with_kl:
                kl[name] += s.kl[name]
        ref_nll += s.reference_nll

    def result(total_nll: float, total_kl: float | None) -> EvalResult:
        return EvalResult(
            perplexity=math.exp(total_nll / n_pred),
            kl=None if total_kl is None else total_kl / (n * seq_len),
            n_windows=n,
            n_tokens=n_pred,
            seconds=seconds,
        )

    results = {name: result(nll[name], kl[name] if with_kl else None) for name in names}
    if reference_name is not None:
        results[reference_name] = result(ref_nll, 0.0)
    return results


def evaluate_many(
    models: dict[str, Any],
    windows: torch.Tensor,
    reference: Any = None,
    *,
    reference_name: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "evaluate",
) -> dict[str, EvalResult]:
    """Perplexity (and mean KL vs ``reference``) of several models in one pass over ``windows``.

    A reference model's logits are computed once per batch and shared by every candidate, so
    memory is one batch of logits per model whatever the vocabulary, and nothing is cached.
    With a reference model and ``reference_name``, its own perplexity is reported under that
    name (KL 0).
    """
    began = time.perf_counter()
    first = next(iter(models.values()), reference)
    size = batch_size or auto_batch_size(first, windows.shape[1])
    own_reference = reference is not None and not isinstance(reference, LogProbCache)
    with_ref_nll = own_reference and reference_name is not None
    bar = tqdm(total=windows.shape[0], desc=desc, disable=not progress)
    sums = batch_sums(models, windows, reference, batch_size=size, reference_nll=with_ref_nll,
                      on_batch=bar.update)  # fmt: skip
    bar.close()
    return results_of(
        sums, list(models), int(windows.shape[1]), with_kl=reference is not None,
        reference_name=reference_name if with_ref_nll else None,
        seconds=time.perf_counter() - began,
    )  # fmt: skip


def evaluate(
    model: Any,
    windows: torch.Tensor,
    reference: Any = None,
    *,
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "evaluate",
) -> EvalResult:
    """Perplexity of ``model`` on ``windows`` (n, L) and, with a reference, mean KL, in one pass."""
    results = evaluate_many(
        {"model": model}, windows, reference, batch_size=batch_size, progress=progress, desc=desc
    )
    return results["model"]


def perplexity(
    model: Any, windows: torch.Tensor, *, batch_size: int | None = None, progress: bool = True
) -> float:
    """exp(mean next-token NLL) of the model on windows (n, L)."""
    return evaluate(
        model, windows, batch_size=batch_size, progress=progress, desc="perplexity"
    ).perplexity


def mean_kl(
    model: Any,
    reference: Any,
    windows: torch.Tensor,
    *,
    batch_size: int | None = None,
    progress: bool = True,
) -> float:
    """Mean per-token KL(reference || model); reference is a model or a LogProbCache."""
    result = evaluate(
        model, windows, reference, batch_size=batch_size, progress=progress, desc="KL"
    )
    assert result.kl is not None
    return result.kl
