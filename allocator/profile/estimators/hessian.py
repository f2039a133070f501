"""Layer-wise Hessian proxies: ``hessian`` (full H) and ``hessian_diag`` (diag(H) or an imatrix).

With ``H = X^T X / n_tokens`` from the calibration capture and ``dW = W_q - W`` the real error
of the option, ``hessian`` is ``tr(dW H dW^T)`` = the mean squared output error per token summed
over output channels. ``hessian_diag`` keeps only ``diag(H)``: ``sum_ij dW_ij^2 d_j``, where ``d``
is the capture's per-column mean square or, when ``settings["imatrix"]`` maps unit names to
per-column values (a GGUF imatrix), those values (then no calibration pass is run).
"""

from __future__ import annotations

from typing import Any

import torch

from allocator.errors import InputError
from allocator.profile.estimators import Estimator, register
from allocator.schema.option import Option
from allocator.schema.unit import Unit


@torch.no_grad()
def hessian_losses(ctx: Any) -> dict[str, dict[str, float]]:
    """tr(dW H dW^T) for every unit and option."""
    losses: dict[str, dict[str, float]] = {}

    def score(units: list[Unit]) -> None:
        for unit in units:
            losses[unit.name] = hessian_row(ctx, unit, ctx.options)

    ctx.by_block(score)  # one block's H in memory at a time
    return {u.name: losses[u.name] for u in ctx.units}


@torch.no_grad()
def hessian_row(ctx: Any, unit: Unit, options: list[Option]) -> dict[str, float]:
    """tr(dW H dW^T) of one unit for each option."""
    hessian = ctx.stats(unit).hessian_fp32
    weight = ctx.module(unit).weight.detach().float()
    row = {}
    for option in options:
        dw = ctx.compress(unit, option).float() - weight
        row[option.key] = max(float(((dw @ hessian) * dw).sum()), 0.0)
    return row


def _imatrix_column(imatrix: dict[str, Any], name: str, in_features: int) -> torch.Tensor:
    if name not in imatrix:
        raise InputError(f"imatrix: no entry for unit {name!r}; give one per unit")
    values = torch.as_tensor(imatrix[name], dtype=torch.float32).reshape(-1)
    if values.numel() != in_features:
        raise InputError(
            f"imatrix[{name!r}] has {values.numel()} values but the layer has {in_features} "
            "input columns; give one value per input column"
        )
    return values


@torch.no_grad()
def hessian_diag_losses(ctx: Any) -> dict[str, dict[str, float]]:
    """sum_ij dW_ij^2 d_j with d = diag(H) or imatrix values."""
    imatrix = ctx.settings.get("imatrix")
    losses: dict[str, dict[str, float]] = {}
    if imatrix is None:  # statistics from a capture: score block by block as it runs
        ctx.by_block(lambda units: losses.update(_diag_rows(ctx, units, None)))
        return {u.name: losses[u.name] for u in ctx.units}
    return _diag_rows(ctx, list(ctx.units), imatrix)


def _diag_rows(ctx: Any, units: list[Unit], imatrix: Any) -> dict[str, dict[str, float]]:
    losses: dict[str, dict[str, float]] = {}
    for unit in units:
        weight = ctx.module(unit).weight.detach().float()
        if imatrix is not None:
            column = _imatrix_column(imatrix, unit.name, weight.shape[1])
        else:
            column = ctx.stats(unit).act_sq.float()
        row = {}
        for option in ctx.options:
            dw = (
                ctx.compress(
                    unit, option, with_stats=False if imatrix is not None else None
                ).float()
                - weight
            )
            row[option.key] = max(float((dw.square() * column[None]).sum()), 0.0)
        losses[unit.name] = row
    return losses


register(Estimator("hessian", hessian_losses, windows=64, seq_len=512, doc="tr(dW H dW^T)"))
register(
    Estimator("hessian_diag", hessian_diag_losses, windows=64, seq_len=512, doc="sum dW^2 diag(H)")
)
