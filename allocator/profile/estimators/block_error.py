"""``block_error``: relative output error of a block when only one of its units is compressed.

ExLlamaV2's measurement: with the clean inputs X_l of block l cached, ``||B'(X_l) - B(X_l)||^2 /
||B(X_l)||^2`` where B' has the unit's weight compressed. Journaled unit by unit like ``kl``.
"""

from __future__ import annotations

from typing import Any

import torch

from allocator.profile.capture import find_backbone, run_block
from allocator.profile.estimators import Estimator, register
from allocator.profile.estimators.kl import journaled_rows
from allocator.schema.unit import Unit


def block_error_losses(ctx: Any) -> dict[str, dict[str, float]]:
    if ctx.needs_stats():
        ctx.capture()
    layers = find_backbone(ctx.model).layers
    states = ctx.clean_states()

    @torch.no_grad()
    def measure(unit: Unit) -> dict[str, float]:
        assert unit.layer is not None  # block units only (find_units)
        block, inputs, clean = layers[unit.layer], states[unit.layer], states[unit.layer + 1]
        energy = sum(float(y.float().square().sum()) for y in clean.hidden)
        module = ctx.module(unit)
        original = module.weight.data
        row = {}
        for option in ctx.options:
            module.weight.data = ctx.compress(unit, option).to(original.dtype)
            try:
                out = run_block(block, inputs)
            finally:
                module.weight.data = original
            err = sum(
                float((a.float() - b.float()).square().sum())
                for a, b in zip(out.hidden, clean.hidden, strict=True)
            )
            row[option.key] = err / max(energy, 1e-30)
        return row

    return journaled_rows(ctx, "block_error", measure)


register(
    Estimator(
        "block_error",
        block_error_losses,
        windows=8,
        seq_len=256,
        journaled=True,
        doc="relative block output error",
    )
)
