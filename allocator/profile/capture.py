"""Block-by-block calibration capture (GPTQ style): embed once, then run one block at a time.

Each block's inputs are cached for the next, so memory is one block plus the cached hidden states
``(n_windows, seq_len, hidden)``, never the whole model's activations. Forward pre-hooks on the
block's linear layers accumulate, per distinct input tensor (q/k/v and gate/up share one):

- ``H = X^T X / n_tokens`` in fp64, shape (in, in): the layer-wise Hessian proxy;
- ``act_sq = diag(H)``: per-column mean square of the inputs (Wanda, imatrix);
- the mean L2 norm of an input row.

MoE experts see only the tokens routed to them; their H is divided by all the block's tokens
(``ActStats.per_tokens``) and an expert no calibration token reached gets an empty H (its
measured losses are 0; GPTQ treats an all-zero H as no evidence and rounds to nearest).

Every block is replayed with the arguments the model's own forward gives it
(``allocator.models.blocks``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from allocator.models.activations import like
from allocator.models.actstats import ActStats, stat_hooks
from allocator.models.blocks import (
    Backbone,
    BlockInputs,
    find_backbone,
    linear_children,
    record_block_calls,
    run_block,
)
from allocator.models.offload import holding
from allocator.models.units import is_expert

__all__ = [
    "ActStats",
    "Backbone",
    "BlockInputs",
    "Capture",
    "capture_stats",
    "embed_inputs",
    "find_backbone",
    "layers_prefix",
    "linear_children",
    "run_block",
]


@dataclass
class Capture:
    """What one block-by-block pass collected: per-linear ActStats and per-block LIM scores."""

    stats: dict[str, ActStats]
    lim: dict[int, float]
    n_tokens: int


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
    on_block: Callable[[int, dict[str, ActStats]], None] | None = None,
) -> Capture:
    """One block-by-block pass accumulating ActStats for every linear (or only ``unit_names``).

    With ``on_block``, each block's statistics go to ``on_block(index, stats)`` while the block
    is still held, and are then dropped: memory holds one block's H, not the model's (the
    returned ``stats`` is empty)."""
    backbone = find_backbone(model)
    prefix = backbone.prefix
    inputs = embed_inputs(backbone, input_ids, batch_size)
    stats: dict[str, ActStats] = {}
    lim: dict[int, float] = {}
    for index, block in enumerate(
        tqdm(backbone.layers, desc="capture", unit="block", disable=not progress)
    ):
        linears = linear_children(block, f"{prefix}.{index}")
        if unit_names is not None:
            linears = {n: m for n, m in linears.items() if n in unit_names}
        outs = like(inputs.hidden)  # in memory, or in files (--offload-activations)
        with holding(block):  # an offloaded block is read once for every batch
            for hidden, call in inputs:
                hooks = stat_hooks(linears, stats)
                try:
                    outs.append(call(block, hidden))
                finally:
                    for handle in hooks:
                        handle.remove()
            block_tokens = inputs.n_tokens
            for name, module in linears.items():
                stat = stats.setdefault(name, ActStats(module.in_features))  # unrouted: 0
                if is_expert(name) and stat.n_tokens < block_tokens:
                    stat.per_tokens = block_tokens  # error per model token (see ActStats)
            if on_block is not None:
                on_block(index, {n: stats.pop(n) for n in linears})
        outputs = BlockInputs(hidden=outs, calls=inputs.calls, layer=index + 1)
        lim[index] = _cosine_gap(inputs, outputs)
        inputs = outputs
    return Capture(stats=stats, lim=lim, n_tokens=int(input_ids.numel()))


def layers_prefix(model: nn.Module) -> str:
    """Module path of the block list, e.g. ``model.layers``."""
    return find_backbone(model).prefix


def embed_inputs(backbone: Backbone, input_ids: torch.Tensor, batch_size: int) -> BlockInputs:
    """Hidden states entering block 0 and every block's own arguments (see models.blocks)."""
    return record_block_calls(backbone, input_ids, batch_size)
