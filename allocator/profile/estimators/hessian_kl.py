"""``hessian_kl``: the ``hessian`` proxy calibrated per unit against measured KL points.

For every unit, the true single-unit KL (see ``kl``) is measured at one or two reference options
(``settings["reference"]``, default: the two lowest-bit dense options of the grid), and the
unit's proxy curve tr(dW H dW^T) over the whole grid is rescaled to pass through them
(``allocator.profile.calibrate``). This puts a full grid on the end-to-end scale for the cost of
|references| x units KL measurements instead of |options| x units. KL is measured on the first
``kl_windows`` windows truncated to ``kl_seq_len`` tokens (defaults 8 x 256); the measured points
are journaled, so a killed run resumes. ``settings["proxy"]`` picks another proxy estimator to
calibrate (``hessian_diag``, ``fisher``, ``hutchinson``); ``allocator profile --calibrate kl``
selects this estimator with the ``--estimator`` given as the proxy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from allocator.errors import InputError
from allocator.profile.calibrate import calibrate_row
from allocator.profile.estimators import ESTIMATORS, Estimator, register
from allocator.profile.estimators.kl import KLMeter, journaled_rows
from allocator.profile.options import parse_options
from allocator.schema.option import Option


def reference_options(ctx: Any) -> list[Option]:
    """The options measured exactly per unit."""
    spec = ctx.settings.get("reference")
    if spec:
        keys = spec if isinstance(spec, list) else str(spec).split(",")
        return parse_options([k.strip() for k in keys if k.strip()])
    dense = [o for o in ctx.options if o.sparsity == 0 and not o.is_fp16]
    if not dense:
        raise InputError("hessian_kl: the grid has no dense option; give --set reference=b3-g128")
    group = dense[0].group_size
    same_group = sorted({o.bits for o in dense if o.group_size == group})[:2]
    return [o for o in dense if o.group_size == group and o.bits in same_group][:2]


def hessian_kl_losses(ctx: Any) -> dict[str, dict[str, float]]:
    references = reference_options(ctx)
    n = int(ctx.settings.get("kl_windows", 8))
    length = int(ctx.settings.get("kl_seq_len", 256))
    kl_ids = ctx.input_ids[:n, :length]
    meter = KLMeter(ctx, kl_ids)
    with meter.head_resident():
        measured = journaled_rows(
            ctx, "hessian_kl", lambda unit: meter.measure_options(unit, references)
        )
    everything = list({o.key: o for o in [*ctx.options, *references]}.values())
    proxy_name = str(ctx.settings.get("proxy", "hessian"))
    proxy_estimator = ESTIMATORS.get(proxy_name)
    if proxy_estimator.kind != "loss" or proxy_estimator.journaled:
        raise InputError(
            f"proxy {proxy_name!r} cannot be calibrated; use hessian, hessian_diag, fisher or "
            "hutchinson"
        )
    proxies = proxy_estimator.run(dataclasses.replace(ctx, options=everything))
    losses = {}
    for unit in ctx.units:
        curve = calibrate_row(proxies[unit.name], measured[unit.name])
        losses[unit.name] = {o.key: curve[o.key] for o in ctx.options}
    return losses


register(
    Estimator(
        "hessian_kl",
        hessian_kl_losses,
        windows=16,
        seq_len=512,
        journaled=True,
        tasks=("causal_lm",),
        doc="hessian proxy calibrated to measured KL at reference options",
    )
)
