"""``apply --ray``: the units of a block compressed as parallel Ray tasks.

Blocks stay sequential (GPTQ/SparseGPT calibrate each block on the outputs of the compressed
blocks below it); inside a block every unit is independent given its input Hessian, so each
unit's ``compress`` runs as one task on the weight and statistics the driver sends. The
functions are the single-process ones, so the checkpoint is bit-identical.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def compress_task(
    weight: torch.Tensor,
    option: Any,
    hessian: torch.Tensor | None,
    act_sq: torch.Tensor | None,
    act_order: bool,
) -> Any:
    """``allocator.quant.compress.compress`` of one unit (a Ray task)."""
    from allocator.quant.compress import compress

    return compress(weight, option, hessian, act_sq, act_order=act_order)


def compress_many(
    pool: Any,
    linears: dict[str, nn.Linear],
    options: dict[str, Any],
    stats: dict[str, Any],
    act_order: bool,
) -> dict[str, Any]:
    """Compressed weights of ``linears`` computed by Ray tasks ({} without a pool).

    ``stats`` maps a unit to its ActStats (H and act_sq) or None (no calibration needed).
    """
    if pool is None or not linears:
        return {}
    names = list(linears)
    tasks = []
    for name in names:
        stat = stats.get(name)
        tasks.append(
            (
                pool.put(linears[name].weight.detach().cpu()),
                options[name],
                None if stat is None else stat.hessian_fp32,
                None if stat is None else stat.act_sq.float(),
                act_order,
            )
        )
    return dict(zip(names, pool.map(compress_task, tasks), strict=True))
