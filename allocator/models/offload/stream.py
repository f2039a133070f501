"""Evaluating an offloaded causal LM: every window through one block at a time
(``StreamedLM``), each block read once per evaluation instead of once per batch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from allocator.models.offload.runtime import runtime_of


# -- evaluation: every window through one block at a time ------------------------------------
class StreamedLM:
    """Stands in for an offloaded causal LM in ``allocator.evaluate``: the last hidden state of
    every window is computed block by block up front (each block read once, not once per
    batch), and a call with one batch of those windows returns its logits."""

    def __init__(self, model: nn.Module, windows: torch.Tensor, batch_size: int) -> None:
        from allocator.models.blocks import find_backbone, record_block_calls, run_block

        self.model: Any = model  # a transformers model (nn.Module attributes type as Tensor)
        self.backbone = find_backbone(model)
        with torch.no_grad():
            inputs = record_block_calls(self.backbone, windows, batch_size)
            for block in self.backbone.layers:
                inputs = run_block(block, inputs)
        self._batches = [
            (windows[start : start + batch_size], hidden)
            for start, hidden in zip(
                range(0, windows.shape[0], batch_size), inputs.hidden, strict=True
            )
        ]

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    def get_output_embeddings(self) -> Any:
        return self.model.get_output_embeddings()

    @torch.no_grad()
    def __call__(self, *, input_ids: torch.Tensor, **_: Any) -> Any:
        from types import SimpleNamespace

        batch = input_ids.cpu()
        for ids, hidden in self._batches:
            if ids.shape == batch.shape and torch.equal(ids, batch):
                return SimpleNamespace(logits=self.backbone.logits(hidden))
        raise ValueError("StreamedLM: called with windows it was not built on")


def streamed(model: Any, windows: torch.Tensor, batch_size: int) -> Any:
    """``StreamedLM`` for an offloaded causal LM, the model itself otherwise."""
    if runtime_of(model) is None or not hasattr(model, "get_output_embeddings"):
        return model
    if model.get_output_embeddings() is None:
        return model
    return StreamedLM(model, windows, batch_size)
