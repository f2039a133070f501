"""The order in which a block's linear layers can be calibrated one after another.

GPTQ's "true sequential" calibration compresses a block's layers in stages: q/k/v first, then
o_proj on the outputs of the compressed q/k/v, then gate/up, then down_proj, so that each layer
corrects the error of the layers it reads from. ``sequential_stages`` finds those stages for any
architecture by tracing one forward: every tensor carries the number of linear layers on its
longest path from the block's input (a ``TorchFunctionMode`` takes the maximum over each
operation's inputs, a linear layer adds one), and a layer's stage is that depth of its input.
Parallel blocks (GPT-J, Phi: attention and MLP read the same normed input) put q/k/v and fc1 in
one stage; MoE experts' gate/up share a stage and their down projections the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary


class _DepthMode(TorchFunctionMode):
    """Tags every tensor an operation returns with the largest depth among its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = WeakTensorKeyDictionary()

    def of(self, value: Any) -> int:
        leaves, _ = tree_flatten(value)
        return max((self.depth.get(t, 0) for t in leaves if isinstance(t, torch.Tensor)), default=0)

    def tag(self, value: Any, depth: int) -> None:
        leaves, _ = tree_flatten(value)
        for t in leaves:
            if isinstance(t, torch.Tensor):
                self.depth[t] = depth

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        depth = max(self.of(args), self.of(kwargs))
        if depth:  # in-place operations return a tagged input: a depth never decreases
            self.tag(out, max(depth, self.of(out)))
        return out


def sequential_stages(
    linears: dict[str, nn.Linear],
    forward: Callable[[], Any],
) -> list[list[str]]:
    """``linears`` grouped into stages, in calibration order, by tracing ``forward()`` once.

    A stage holds the layers whose inputs are ``k`` linear layers deep; a layer the traced
    forward did not call (an MoE expert no token was routed to) joins the last stage.
    """
    return _trace(linears, forward)[0]


class StageCache:
    """``sequential_stages`` of a model's blocks, traced once per block class and layer names.

    Blocks of one class with the same layers (by their names inside the block) have the same
    stages, so a 30-block model is traced once, not 30 times (each trace is a full forward). A
    trace that missed a layer (an MoE expert no token reached) is not kept.
    """

    def __init__(self) -> None:
        self._stages: dict[tuple[Any, ...], list[list[str]]] = {}

    def stages(
        self, block: nn.Module, prefix: str, linears: dict[str, nn.Linear],
        forward: Callable[[], Any],
    ) -> list[list[str]]:  # fmt: skip
        """Stages of ``linears`` (full names, each starting with ``prefix``) of ``block``."""
        inner = {n: n.removeprefix(prefix) for n in linears}
        key = (type(block), tuple(inner.values()))
        known = self._stages.get(key)
        if known is not None:
            full = {rel: n for n, rel in inner.items()}
            return [[full[rel] for rel in stage] for stage in known]
        stages, complete = _trace(linears, forward)
        if complete:
            self._stages[key] = [[inner[n] for n in stage] for stage in stages]
        return stages


def _trace(
    linears: dict[str, nn.Linear], forward: Callable[[], Any]
) -> tuple[list[list[str]], bool]:
    """(stages, whether the forward called every layer)."""
    mode = _DepthMode()
    stage: dict[str, int] = {}

    def before(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            depth = mode.of(args[0])
            stage[name] = max(stage.get(name, 0), depth)

        return hook

    def after(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            mode.tag(out, mode.of(args[0]) + 1)

        return hook

    handles = []
    for name, module in linears.items():
        handles.append(module.register_forward_pre_hook(before(name)))
        handles.append(module.register_forward_hook(after(name)))
    try:
        with torch.no_grad(), mode:
            forward()
    finally:
        for handle in handles:
            handle.remove()
    depths = sorted(set(stage.values()))
    stages = [[n for n in linears if stage.get(n) == d] for d in depths]
    missing = [n for n in linears if n not in stage]
    if missing:
        if stages:
            stages[-1].extend(missing)
        else:
            stages.append(missing)
    return stages, not missing
