"""``kl``: measured end-to-end KL of next-token distributions when only one unit is compressed.

The clean hidden states entering every block and the clean log-probabilities are computed once.
For a unit in block l, only blocks l..end, the final norm and the head run again:
``KL = mean over tokens of sum_v p_clean(v) (log p_clean(v) - log p_unit(v))`` (nats/token).
This is the calibration-loss table of Hubara et al.'s integer-programming allocation. Units are
measured one by one and journaled, so a killed run resumes; values are clipped to >= 0.
Cost: about |options| x (n_blocks - l) / n_blocks forward passes over the token budget per unit.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from tqdm.auto import tqdm

from allocator.models.offload import holding, is_offloaded
from allocator.profile.capture import BlockInputs, find_backbone, run_block
from allocator.profile.estimators import Estimator, register
from allocator.profile.journal import open_journal
from allocator.schema.option import Option
from allocator.schema.unit import Unit


class KLMeter:
    """Measures KL(clean || model with one unit's weight replaced) over fixed token windows."""

    def __init__(self, ctx: Any, input_ids: torch.Tensor | None = None) -> None:
        self.ctx = ctx
        self.backbone = find_backbone(ctx.model)
        with torch.no_grad():
            self.states: list[BlockInputs] = ctx.clean_states(input_ids)
            self.clean_logp = [self._log_probs(h) for h in self.states[-1].hidden]
        self.n_tokens = sum(h.shape[0] * h.shape[1] for h in self.states[-1].hidden)

    def _log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.backbone.logits(hidden).float(), dim=-1)

    @torch.no_grad()
    def measure(self, unit: Unit, weight: torch.Tensor) -> float:
        """Mean KL per token (nats) with ``weight`` in place of the unit's weight."""
        module = self.ctx.module(unit)
        original = module.weight.data
        module.weight.data = weight.to(original.dtype)
        try:
            first = unit.layer if unit.layer is not None else len(self.backbone.layers)
            hidden = self.states[first]
            for block in self.backbone.layers[first:]:
                hidden = run_block(block, hidden)
        finally:
            module.weight.data = original
        return self._kl(hidden)

    def _kl(self, hidden: BlockInputs) -> float:
        total = 0.0
        for h, clean in zip(hidden.hidden, self.clean_logp, strict=True):
            logq = self._log_probs(h)
            total += float((clean.exp() * (clean - logq)).sum())
        return max(total / self.n_tokens, 0.0)

    def measure_options(self, unit: Unit, options: list[Option]) -> dict[str, float]:
        if is_offloaded(self.ctx.model) and unit.layer is not None:
            return self._measure_streamed(unit, unit.layer, options)
        return {o.key: self.measure(unit, self.ctx.compress(unit, o)) for o in options}

    @torch.no_grad()
    def _measure_streamed(self, unit: Unit, layer: int, options: list[Option]) -> dict[str, float]:
        """Offloaded model: every option's hidden states pass each downstream block during one
        read of it (the same operations as ``measure``, option by option); ``layer``: the
        unit's block."""
        module = self.ctx.module(unit)
        weights = {o.key: self.ctx.compress(unit, o) for o in options}
        first = self.backbone.layers[layer]
        hidden: dict[str, BlockInputs] = {}
        original = module.weight.data
        for key, weight in weights.items():
            module.weight.data = weight.to(original.dtype)
            try:
                hidden[key] = run_block(first, self.states[layer])
            finally:
                module.weight.data = original
        for block in self.backbone.layers[layer + 1 :]:
            with holding(block):
                hidden = {key: run_block(block, h) for key, h in hidden.items()}
        return {key: self._kl(h) for key, h in hidden.items()}

    def head_resident(self) -> contextlib.AbstractContextManager:
        """Offloaded model: keep the final norm and head loaded while units are measured."""
        stack = contextlib.ExitStack()
        for module in (self.backbone.norm, self.backbone.head):
            if module is not None:
                stack.enter_context(holding(module))
        return stack


def journaled_rows(
    ctx: Any, name: str, measure: Any, units: list[Unit] | None = None
) -> dict[str, dict[str, float]]:
    """Run ``measure(unit) -> row`` for each unit, skipping and recording units in the journal."""
    journal = open_journal(ctx, name)
    rows: dict[str, dict[str, float]] = {}
    todo = units if units is not None else ctx.units
    for unit in tqdm(todo, desc=name, unit="unit", disable=not ctx.progress):
        if journal is not None and unit.name in journal.done:
            rows[unit.name] = journal.done[unit.name]
            continue
        rows[unit.name] = measure(unit)
        if journal is not None:
            journal.append(unit.name, rows[unit.name])
    return rows


def kl_losses(ctx: Any) -> dict[str, dict[str, float]]:
    meter = KLMeter(ctx)
    with meter.head_resident():
        return journaled_rows(ctx, "kl", lambda unit: meter.measure_options(unit, ctx.options))


register(
    Estimator(
        "kl",
        kl_losses,
        windows=8,
        seq_len=256,
        journaled=True,
        tasks=("causal_lm",),
        doc="measured single-unit KL vs the unmodified model",
    )
)
