"""Sensitivity tables and scores the quality benchmark needs, measured by the library itself.

Every table comes from ``allocator.profile.api.profile`` with the benchmark's own windows (the
registered estimators ``kl``, ``fisher``, ``hutchinson``, ``block_error``; see their modules for
the formulas), LIM scores from the calibration capture (``allocator.profile.capture``), and the
closed-loop refinement's measure is the library's mean KL against cached reference log-probs.
Compressed weights come from ``allocator.quant.compress.compress_weight`` on the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from allocator.evaluate import LogProbCache, mean_kl
from allocator.profile.api import profile
from allocator.profile.capture import capture_stats
from allocator.quant.compress import compress_weight
from allocator.schema import Option, SensitivityTable, Unit

# estimator -> (windows, seq_len, settings) the benchmark measures it with
TABLE_SETTINGS: dict[str, tuple[int, int, dict[str, Any]]] = {
    "kl": (8, 256, {}),
    "block_error": (8, 256, {}),
    "fisher": (8, 512, {}),
    "hutchinson": (4, 512, {"probes": 8}),
}


def measure_table(
    model: torch.nn.Module,
    calib_ids: torch.Tensor,
    name: str,
    units: list[Unit],
    options: Sequence[Option],
    *,
    device: str = "cpu",
    quiet: bool = False,
) -> SensitivityTable:
    """The ``name`` table of ``model`` on the first calibration windows (``TABLE_SETTINGS``)."""
    windows, seq_len, settings = TABLE_SETTINGS[name]
    ids = calib_ids[:windows, :seq_len]
    return profile(model, ids, name, list(options), units=units, device=device,
                   progress=not quiet, settings=dict(settings))  # fmt: skip


def lim_scores(model: torch.nn.Module, calib_ids: torch.Tensor, quiet: bool) -> dict[int, float]:
    """Per block, the mean ``1 - cos(block input, block output)`` on 8 x 256 tokens."""
    return capture_stats(model, calib_ids[:8, :256], progress=not quiet).lim


class ChoiceMeasure:
    """Mean KL vs the unmodified model, on 8 x 256 calibration tokens, with every unit of a
    choice compressed at once (RTN): the measure of the closed-loop refinement."""

    def __init__(self, model: torch.nn.Module, calib_ids: torch.Tensor, quiet: bool) -> None:
        self.model = model
        self.ids = calib_ids[:8, :256]
        self.reference = LogProbCache.build(model, self.ids, progress=not quiet)

    @torch.no_grad()
    def __call__(self, choice: Mapping[str, Option]) -> float:
        saved = {}
        try:
            for name, option in choice.items():
                module = self.model.get_submodule(name)
                saved[name] = module.weight.data
                module.weight.data = compress_weight(saved[name].cpu(), option).to(
                    saved[name].device
                )
            return mean_kl(self.model, self.reference, self.ids, progress=False)
        finally:
            for name, weight in saved.items():
                self.model.get_submodule(name).weight.data = weight
