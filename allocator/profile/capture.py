"""Block-by-block calibration capture (GPTQ style): embed once, then run one block at a time.

Each block's inputs are cached for the next, so memory is one block plus the cached hidden states
``(n_windows, seq_len, hidden)``, never the whole model's activations. Forward pre-hooks on the
block's linear layers accumulate, per distinct input tensor (q/k/v and gate/up share one):

- ``H = X^T X / n_tokens`` in fp64, shape (in, in): the layer-wise Hessian proxy;
- ``act_sq = diag(H)``: per-column mean square of the inputs (Wanda, imatrix);
- the mean L2 norm of an input row.

Blocks must return a tensor or a tuple whose first item is the hidden state (Llama-like models).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from allocator.errors import UnsupportedError


@dataclass
class ActStats:
    """Input statistics of one linear layer; ``hessian`` is X^T X / n_tokens in fp64, (in, in)."""

    in_features: int
    xtx: torch.Tensor = field(init=False)
    norm_sum: float = 0.0
    n_tokens: int = 0

    def __post_init__(self) -> None:
        self.xtx = torch.zeros(self.in_features, self.in_features, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        rows = x.reshape(-1, x.shape[-1]).float()
        self.xtx += (rows.T @ rows).double().cpu()
        self.norm_sum += float(rows.norm(dim=1).sum())
        self.n_tokens += rows.shape[0]

    @property
    def hessian(self) -> torch.Tensor:
        return self.xtx / max(self.n_tokens, 1)

    @property
    def act_sq(self) -> torch.Tensor:
        return torch.diagonal(self.xtx) / max(self.n_tokens, 1)

    @property
    def mean_norm(self) -> float:
        return self.norm_sum / max(self.n_tokens, 1)


@dataclass
class Backbone:
    """The parts of a decoder LM the profiler drives: embedding stage, blocks, final norm, head."""

    model: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    head: nn.Module


def find_backbone(model: nn.Module) -> Backbone:
    """Locate the block list, final norm and head of a Hugging Face decoder LM."""
    inner = getattr(model, "model", None) or getattr(model, "transformer", None)
    layers = getattr(inner, "layers", None) or getattr(inner, "h", None)
    norm = getattr(inner, "norm", None) or getattr(inner, "ln_f", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(layers, nn.ModuleList) or norm is None or head is None:
        raise UnsupportedError(
            f"{type(model).__name__}: cannot find decoder blocks, final norm and head "
            "(expected model.model.layers / model.model.norm / lm_head, as in Llama); "
            "block-by-block profiling supports Llama-like causal LMs"
        )
    return Backbone(model=model, layers=layers, norm=norm, head=head)


class _Stop(Exception):
    pass


class _Catcher(nn.Module):
    """Stands in for block 0: records its hidden-state input and keyword arguments, then stops."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.hidden: torch.Tensor | None = None
        self.kwargs: dict[str, Any] = {}

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.hidden = hidden
        self.kwargs = kwargs
        raise _Stop


@dataclass
class BlockInputs:
    """Hidden states entering a block, split in batches, each with its block keyword arguments."""

    hidden: list[torch.Tensor]
    kwargs: list[dict[str, Any]]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
        return iter(zip(self.hidden, self.kwargs, strict=True))

    @property
    def n_tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


@torch.no_grad()
def embed_inputs(backbone: Backbone, input_ids: torch.Tensor, batch_size: int) -> BlockInputs:
    """Run the model up to block 0 for every batch of windows and keep what block 0 receives."""
    device = next(backbone.model.parameters()).device
    catcher = _Catcher(backbone.layers[0])
    backbone.layers[0] = catcher
    hidden, kwargs = [], []
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            batch = input_ids[start : start + batch_size].to(device)
            with contextlib.suppress(_Stop):
                backbone.model(input_ids=batch, use_cache=False)
            assert catcher.hidden is not None
            hidden.append(catcher.hidden)
            kwargs.append(dict(catcher.kwargs))
    finally:
        backbone.layers[0] = catcher.block
    return BlockInputs(hidden=hidden, kwargs=kwargs)


def run_block(block: nn.Module, inputs: BlockInputs) -> BlockInputs:
    """Outputs of one block for every cached batch (same keyword arguments)."""
    outs = []
    for hidden, kwargs in inputs:
        out = block(hidden, **kwargs)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return BlockInputs(hidden=outs, kwargs=inputs.kwargs)


def linear_children(block: nn.Module, prefix: str) -> dict[str, nn.Linear]:
    """Full names of the block's linear layers."""
    return {f"{prefix}.{n}": m for n, m in block.named_modules() if isinstance(m, nn.Linear)}


@dataclass
class Capture:
    """What one block-by-block pass collected: per-linear ActStats and per-block LIM scores."""

    stats: dict[str, ActStats]
    lim: dict[int, float]
    n_tokens: int


def _stat_hooks(
    linears: dict[str, nn.Linear], stats: dict[str, ActStats], seen: dict[tuple, tuple]
) -> list[Any]:
    """Pre-hooks that feed ActStats, computing each distinct input tensor once (q/k/v share)."""

    def make(name: str, module: nn.Linear) -> Callable[..., None]:
        def hook(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            key = (x.data_ptr(), tuple(x.shape))
            hit = seen.get(key)
            if hit is not None and hit[1] is x:
                stats.setdefault(name, hit[0])
                return
            acc = stats.setdefault(name, ActStats(module.in_features))
            acc.add(x)
            seen[key] = (acc, x)  # keeping x alive prevents another tensor reusing its address

        return hook

    return [m.register_forward_pre_hook(make(n, m)) for n, m in linears.items()]


def _cosine_gap(inputs: BlockInputs, outputs: BlockInputs) -> float:
    """Mean over tokens of 1 - cos(block input, block output) (the LIM score)."""
    total, count = 0.0, 0
    for x, y in zip(inputs.hidden, outputs.hidden, strict=True):
        cos = nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
        total += float((1 - cos).sum())
        count += cos.numel()
    return total / max(count, 1)


@torch.no_grad()
def capture_stats(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    unit_names: set[str] | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> Capture:
    """One block-by-block pass accumulating ActStats for every linear (or only ``unit_names``)."""
    backbone = find_backbone(model)
    prefix = _layers_prefix(model, backbone)
    inputs = embed_inputs(backbone, input_ids, batch_size)
    stats: dict[str, ActStats] = {}
    lim: dict[int, float] = {}
    for index, block in enumerate(
        tqdm(backbone.layers, desc="capture", unit="block", disable=not progress)
    ):
        linears = linear_children(block, f"{prefix}.{index}")
        if unit_names is not None:
            linears = {n: m for n, m in linears.items() if n in unit_names}
        outs = []
        for hidden, kwargs in inputs:
            seen: dict[tuple, tuple] = {}
            hooks = _stat_hooks(linears, stats, seen)
            try:
                out = block(hidden, **kwargs)
            finally:
                for handle in hooks:
                    handle.remove()
            outs.append(out[0] if isinstance(out, tuple) else out)
        outputs = BlockInputs(hidden=outs, kwargs=inputs.kwargs)
        lim[index] = _cosine_gap(inputs, outputs)
        inputs = outputs
    return Capture(stats=stats, lim=lim, n_tokens=int(input_ids.numel()))


def _layers_prefix(model: nn.Module, backbone: Backbone) -> str:
    for name, module in model.named_modules():
        if module is backbone.layers:
            return name
    raise UnsupportedError("cannot name the block list of this model")


def layers_prefix(model: nn.Module) -> str:
    """Module path of the block list, e.g. ``model.layers``."""
    return _layers_prefix(model, find_backbone(model))
