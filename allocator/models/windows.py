"""Tokenizing text into fixed-length windows for calibration and evaluation."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from allocator.errors import InputError
from allocator.models.heap import return_freed_memory


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer starts every encoded text with its BOS token by default."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a").input_ids
    return len(ids) > 0 and ids[0] == bos


def token_windows(
    tokenizer: Any,
    text: str,
    *,
    seq_len: int,
    n_windows: int | None,
    seed: int = 0,
    contiguous: bool = False,
    bos: bool | None = None,
    holdout: bool = False,
    avoid: Sequence[Draw] = (),
) -> Any:
    """Return a LongTensor (n, seq_len) of token windows from the text.

    ``contiguous=True`` takes the first ``n_windows`` non-overlapping windows (evaluation);
    otherwise ``n_windows`` random non-overlapping windows chosen with ``seed`` (calibration).
    ``n_windows=None`` takes every window. With ``bos`` (default: when the tokenizer adds BOS
    by default, as for Gemma and Llama 3) every window is the BOS token followed by
    ``seq_len - 1`` text tokens, the input such models always see; the window's first text
    token is then predicted and scored, as in llama.cpp's perplexity. ``holdout=True`` takes
    random windows from the other end of the same permutation: disjoint from the calibration
    windows of the same seed while the two counts together fit the text; ``avoid`` names
    other random draws of this text and seed (``Draw``: windows and their length, e.g. the
    profiler's) whose tokens held-out windows also keep clear of (``holdout_windows``).
    """
    return _draw(tokenizer, text, seq_len, n_windows, seed, contiguous, bos, holdout, avoid)[0]


@dataclass(frozen=True)
class Draw:
    """A random draw of ``n_windows`` windows of ``seq_len`` tokens (same text, seed and BOS
    rule); ``n_windows=None``: every window."""

    n_windows: int | None
    seq_len: int


def holdout_windows(
    tokenizer: Any, text: str, *, seq_len: int, n_windows: int | None, seed: int,
    avoid: Sequence[Draw], bos: bool | None = None,
) -> tuple[Any, int]:  # fmt: skip
    """``token_windows(..., holdout=True, avoid=avoid)`` and how many of the windows share
    tokens with a draw in ``avoid``.

    Held-out windows are the chunks at the far end of the permutation whose tokens no avoided
    draw uses; only when too few such chunks exist are overlapping ones taken (counted).
    """
    return _draw(tokenizer, text, seq_len, n_windows, seed, False, bos, True, avoid)


def _draw(
    tokenizer: Any, text: str, seq_len: int, n_windows: int | None, seed: int, contiguous: bool,
    bos: bool | None, holdout: bool, avoid: Sequence[Draw],
) -> tuple[Any, int]:  # fmt: skip
    """(windows, how many held-out windows overlap ``avoid``): ``token_windows``' work."""
    import torch

    use_bos = adds_bos(tokenizer) if bos is None else bos
    if use_bos and getattr(tokenizer, "bos_token_id", None) is None:
        raise InputError("bos: the tokenizer has no BOS token; run without --bos")
    body = seq_len - 1 if use_bos else seq_len
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    available = ids.numel() // body if body > 0 else 0
    if available < 1:
        raise InputError(
            f"text has {ids.numel()} tokens, fewer than one window of seq_len={seq_len}; "
            "give more text or a smaller --seq-len"
        )
    n = available if n_windows is None else min(n_windows, available)
    chunks = ids[: available * body].view(available, body)
    overlapping = 0
    if contiguous:
        chosen = chunks[:n]
    else:
        order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))
        if holdout:
            order = order.flip(0)
            used = _used_tokens(ids.numel(), avoid, seed, use_bos)
            if used is not None:
                busy = used[: available * body].view(available, body).any(dim=1)[order]
                order = torch.cat([order[~busy], order[busy]])
                overlapping = max(n - int((~busy).sum()), 0)
        chosen = chunks[order[:n].sort().values]
    if use_bos:
        prefix = torch.full((chosen.shape[0], 1), int(tokenizer.bos_token_id), dtype=chosen.dtype)
        chosen = torch.cat([prefix, chosen], dim=1)
    chosen = chosen.clone()
    del ids, chunks
    return_freed_memory()  # the whole text's encoding (160 MB for a 1.4M-character text)
    return chosen, overlapping


def _used_tokens(n_tokens: int, draws: Sequence[Draw], seed: int, use_bos: bool) -> Any:
    """Bool per token of the text: used by one of the random ``draws`` (None without draws)."""
    import torch

    if not draws:
        return None
    used = torch.zeros(n_tokens, dtype=torch.bool)
    for draw in draws:
        body = draw.seq_len - 1 if use_bos else draw.seq_len
        available = n_tokens // body if body > 0 else 0
        if available < 1:
            continue
        n = available if draw.n_windows is None else min(draw.n_windows, available)
        order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:n]
        used[: available * body].view(available, body)[order] = True
    return used


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
