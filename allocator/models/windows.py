"""Tokenizing text into fixed-length windows for calibration and evaluation."""

from __future__ import annotations

import hashlib
from typing import Any

from allocator.errors import InputError


def token_windows(
    tokenizer: Any,
    text: str,
    *,
    seq_len: int,
    n_windows: int | None,
    seed: int = 0,
    contiguous: bool = False,
) -> Any:
    """Return a LongTensor (n, seq_len) of token windows from the text.

    ``contiguous=True`` takes the first ``n_windows`` non-overlapping windows (evaluation);
    otherwise ``n_windows`` random non-overlapping windows chosen with ``seed`` (calibration).
    ``n_windows=None`` takes every window.
    """
    import torch

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    available = ids.numel() // seq_len
    if available < 1:
        raise InputError(
            f"text has {ids.numel()} tokens, fewer than one window of seq_len={seq_len}; "
            "give more text or a smaller --seq-len"
        )
    n = available if n_windows is None else min(n_windows, available)
    chunks = ids[: available * seq_len].view(available, seq_len)
    if contiguous:
        return chunks[:n].clone()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(available, generator=generator)[:n]
    return chunks[order.sort().values].clone()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
