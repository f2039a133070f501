"""What every estimator receives: the model, calibration windows, units, options and settings.

Expensive shared work (the block-by-block capture, the clean hidden states entering each block)
is computed lazily once and reused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from allocator.models.offload import keep_resident
from allocator.profile.capture import (
    ActStats,
    BlockInputs,
    Capture,
    capture_stats,
    embed_inputs,
    find_backbone,
    run_block,
)
from allocator.quant.compress import compress_weight, needs_hessian, uses_act_sq
from allocator.schema.option import Option
from allocator.schema.unit import Unit


@dataclass
class ProfileContext:
    """Inputs of one profiling run. ``input_ids`` is (n_windows, seq_len) on the CPU."""

    model: nn.Module
    input_ids: torch.Tensor
    units: list[Unit]
    options: list[Option]
    settings: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    batch_size: int = 4
    seed: int = 0
    _capture: Capture | None = None
    _states: list[BlockInputs] | None = None
    _block_stats: dict[str, ActStats] | None = None  # the block ``by_block`` is scoring
    _masks: tuple[Any, dict[Any, torch.Tensor]] = (None, {})  # one unit's pruning masks

    def capture(self) -> Capture:
        """Per-linear input statistics over ``input_ids`` (computed on first use)."""
        if self._capture is None:
            names = {u.name for u in self.units}
            self._capture = capture_stats(
                self.model,
                self.input_ids,
                unit_names=names,
                batch_size=self.batch_size,
                progress=self.progress,
            )
        return self._capture

    def stats(self, unit: Unit) -> ActStats:
        if self._block_stats is not None and unit.name in self._block_stats:
            return self._block_stats[unit.name]
        return self.capture().stats[unit.name]

    def by_block(self, score: Callable[[list[Unit]], None]) -> None:
        """Call ``score(units of one block)`` block after block while that block's statistics
        are held, then drop them: memory holds one block's H instead of every layer's (what
        makes ``hessian`` on a model larger than memory possible). Units outside the blocks
        (none today) are scored last with a whole capture."""
        if self._capture is not None:  # captured already: score from it
            score(list(self.units))
            return
        order = {u.name: i for i, u in enumerate(self.units)}
        pending = {u.name: u for u in self.units}

        def on_block(_index: int, stats: dict[str, ActStats]) -> None:
            units = sorted(
                (pending.pop(n) for n in stats if n in pending), key=lambda u: order[u.name]
            )
            self._block_stats = stats
            try:
                score(units)
            finally:
                self._block_stats = None

        capture_stats(
            self.model,
            self.input_ids,
            unit_names={u.name for u in self.units},
            batch_size=self.batch_size,
            progress=self.progress,
            on_block=on_block,
        )
        if pending:
            score(list(pending.values()))

    def module(self, unit: Unit) -> nn.Linear:
        # units are linear layers: prepare_model re-lays Conv1D and fused experts out as nn.Linear
        module = cast(nn.Linear, self.model.get_submodule(unit.name))
        keep_resident(self.model, unit.name)  # offloaded: its block stays loaded while in use
        return module

    def needs_stats(self) -> bool:
        """Whether some option needs activation statistics (Wanda masks, GPTQ)."""
        return any(needs_hessian(o) or uses_act_sq(o) for o in self.options)

    def compress(
        self, unit: Unit, option: Option, *, with_stats: bool | None = None
    ) -> torch.Tensor:
        """The compressed weight of a unit under an option (Wanda/GPTQ use the capture)."""
        weight = self.module(unit).weight
        use = self.needs_stats() if with_stats is None else with_stats
        masks = self._unit_masks(unit, weight, use)
        if use and (needs_hessian(option) or uses_act_sq(option)):
            stats = self.stats(unit)
            return compress_weight(
                weight, option, hessian=stats.hessian_fp32, act_sq=stats.act_sq.float(),
                masks=masks,
            )  # fmt: skip
        return compress_weight(weight, option, masks=masks)

    def _unit_masks(self, unit: Unit, weight: torch.Tensor, use: bool) -> dict[Any, torch.Tensor]:
        """The memo of pruning masks for this unit's weight as it is now: the 20 options of one
        sparsity share a mask, computed once (estimators score a unit's options in a row)."""
        key = (unit.name, weight.data_ptr(), weight._version, use)
        if self._masks[0] != key:
            self._masks = (key, {})
        return self._masks[1]

    @torch.no_grad()
    def clean_states(self, input_ids: torch.Tensor | None = None) -> list[BlockInputs]:
        """Hidden states entering every block (index l) and leaving the last (index n_blocks)."""
        if self._states is not None and input_ids is None:
            return self._states
        backbone = find_backbone(self.model)
        ids = self.input_ids if input_ids is None else input_ids
        states = [embed_inputs(backbone, ids, self.batch_size)]
        for block in backbone.layers:
            states.append(run_block(block, states[-1]))
        if input_ids is None:
            self._states = states
        return states
