"""The compressed weight an option yields, for scoring: ``allocator.quant.compress.compress_weight``
(the one compressor; RTN options take its vectorized path). Kept as the name profiling imports."""

from __future__ import annotations

import torch

from allocator.quant.compress import compress_weight
from allocator.schema.option import Option


def compressed_weight(
    weight: torch.Tensor,
    option: Option,
    *,
    hessian: torch.Tensor | None = None,
    act_sq: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dequantized (and pruned) weight, same shape and dtype as ``weight``."""
    return compress_weight(weight, option, hessian, act_sq)
