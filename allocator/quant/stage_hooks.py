"""Forward hooks for compressing a block stage by stage (``allocator.quant.apply``): ending a
forward once a stage's layers have read their inputs, and pairing each layer's input in the
original block with its input in the block being compressed (X^T Y for ``gptq.clean_target``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class StageRead(Exception):
    """Every layer of a stage has read its input: the rest of the block's forward is not needed."""


def stop_once_read(linears: dict[str, nn.Module]) -> list[Any]:
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


def keep_inputs(linears: dict[str, nn.Module], seen: dict[str, torch.Tensor]) -> list[Any]:
    """Forward pre-hooks keeping the first input each layer reads in ``seen`` (layers fed one
    tensor, q/k/v, keep that one tensor)."""

    def keep(name: str) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            seen.setdefault(name, args[0])

        return hook

    return [m.register_forward_pre_hook(keep(n)) for n, m in linears.items()]


class OriginalInputs:
    """Each layer's input X in the original block, batch by batch, and the block's outputs.

    In memory, one pass over the original block keeps every layer's input (q/k/v share one
    tensor) and its outputs, which enter the next original block. With hidden states in files
    (``--offload-activations``, models larger than memory) nothing is kept: each stage re-runs
    the original block up to the stage's layers, and ``outputs()`` runs it once more.
    """

    def __init__(self, block: nn.Module, originals: dict[str, nn.Module], inputs: Any) -> None:
        from allocator.models.activations import DiskTensors

        self.block, self.originals, self.inputs = block, originals, inputs
        self.kept: list[dict[str, torch.Tensor]] | None = None
        self._outputs: Any = None
        if not isinstance(inputs.hidden, DiskTensors):
            self._capture()

    def _capture(self) -> None:
        from allocator.models.blocks import BlockInputs

        self.kept, outs = [], []
        for hidden, call in self.inputs:
            seen: dict[str, torch.Tensor] = {}
            handles = keep_inputs(self.originals, seen)
            try:
                outs.append(call(self.block, hidden))
            finally:
                for handle in handles:
                    handle.remove()
            self.kept.append(seen)
        self._outputs = BlockInputs(hidden=outs, calls=self.inputs.calls,
                                    layer=self.inputs.layer + 1)  # fmt: skip

    def batches(self, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
        """Per batch, the inputs of the layers ``names`` (a stage) in the original block."""
        if self.kept is not None:
            yield from self.kept
            return
        stage = {n: self.originals[n] for n in names}
        for hidden, call in self.inputs:
            seen: dict[str, torch.Tensor] = {}
            handles = keep_inputs(stage, seen) + stop_once_read(stage)
            try:
                with contextlib.suppress(StageRead):
                    call(self.block, hidden)
            finally:
                for handle in handles:
                    handle.remove()
            yield seen

    def outputs(self) -> Any:
        """The original block's outputs (the next original block's inputs)."""
        if self._outputs is None:
            from allocator.models.blocks import run_block

            self._outputs = run_block(self.block, self.inputs)
        return self._outputs


def cross_hooks(
    linears: dict[str, nn.Linear],
    cross: dict[str, Any],  # name -> CrossStats, or None: left out
    seen: dict[str, torch.Tensor],
) -> list[Any]:
    """Hooks that add X^T Y, for X each layer's input in the original block (``seen``) and Y the
    input it receives now; layers fed the same X and Y (q/k/v) share one CrossStats, computed
    once. A layer whose tokens differ between the two (an MoE expert routed otherwise) is left
    out for good."""
    from allocator.models.actstats import CrossStats

    shared: dict[tuple[int, int], tuple[Any, torch.Tensor]] = {}

    def add(name: str) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x, y = seen.get(name), args[0]
            if cross.get(name, True) is None:
                return
            if x is None or x.shape != y.shape:
                cross[name] = None
                return
            hit = shared.get((id(x), id(y)))
            if hit is not None and hit[1] is y:
                acc = cross.setdefault(name, hit[0])
                if acc is not hit[0]:  # it did not share the pair in earlier batches
                    acc.add_batch(x, y)
                return
            acc = cross.setdefault(name, CrossStats(linears[name].in_features))
            acc.add_batch(x, y)
            shared[(id(x), id(y))] = (acc, y)  # keeping y alive: its id is not reused

        return hook

    return [m.register_forward_pre_hook(add(n)) for n, m in linears.items()]
