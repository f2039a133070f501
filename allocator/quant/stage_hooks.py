"""Forward hooks for compressing a block stage by stage (``allocator.quant.apply``): ending a
forward once a stage's layers have read their inputs, and pairing each layer's input in the
original block with its input in the block being compressed (X^T Y for ``gptq.clean_target``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn


class StageRead(Exception):
    """Every layer of a stage has read its input: the rest of the block's forward is not needed."""


def stop_once_read(linears: dict[str, nn.Linear]) -> list[Any]:
    """Forward pre-hooks (registered after the ones that record inputs) that end one forward of
    the block once every layer of ``linears`` has been called; where one is not (an MoE expert
    no token reached), the forward runs to its end."""
    waiting = set(linears)

    def make(name: str) -> Any:
        def hook(_module: nn.Module, _args: tuple[Any, ...]) -> None:
            waiting.discard(name)
            if not waiting:
                raise StageRead

        return hook

    return [m.register_forward_pre_hook(make(n)) for n, m in linears.items()]


def cross_hooks(
    linears: dict[str, nn.Linear],
    originals: dict[str, nn.Linear],
    cross: dict[str, Any],  # name -> CrossStats, or None: left out
    original_block: nn.Module,
    original_batch: tuple[torch.Tensor, Any],
) -> list[Any]:
    """Runs the original block on its batch, keeping each layer's input X, and returns hooks that
    add X^T Y for the input Y each layer then receives; a layer whose tokens differ between the
    two (an MoE expert routed otherwise) is left out for good."""
    from allocator.models.actstats import CrossStats

    seen: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            seen.setdefault(name, args[0])

        return hook

    handles = [originals[n].register_forward_pre_hook(keep(n)) for n in linears]
    handles += stop_once_read({n: originals[n] for n in linears})
    try:
        hidden, call = original_batch
        with contextlib.suppress(StageRead):
            call(original_block, hidden)
    finally:
        for handle in handles:
            handle.remove()

    def add(name: str) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x, y = seen.get(name), args[0]
            if cross.get(name, True) is None:
                return
            if x is None or x.shape != y.shape:
                cross[name] = None
                return
            acc = cross.setdefault(name, CrossStats(linears[name].in_features))
            acc.add_batch(x, y)

        return hook

    return [m.register_forward_pre_hook(add(n)) for n, m in linears.items()]
