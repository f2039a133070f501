"""Input statistics of a linear layer, accumulated batch by batch (GPTQ's ``add_batch``): the
one Hessian accumulator, used by calibration capture (``allocator.profile.capture``), GPTQ and
SparseGPT when applying a plan (``allocator.quant.apply``) and the estimators.

``stat_hooks`` installs the forward pre-hooks that feed them; layers fed the same tensor (q/k/v,
gate/up) share one ActStats, computed once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

XTX_COLUMNS = 1024  # columns of X^T X formed at once by ActStats.add_batch


@dataclass
class ActStats:
    """Input statistics of one linear layer; ``hessian`` is X^T X / n_tokens in fp64, (in, in).

    ``per_tokens``, when set, replaces n_tokens as the divisor of ``hessian``/``act_sq``: an MoE
    expert sees only the tokens routed to it, and dividing its X^T X by all the block's tokens
    makes tr(dW H dW^T) its error per model token, comparable with every other unit's.
    """

    in_features: int
    xtx: torch.Tensor = field(init=False)
    norm_sum: float = 0.0
    n_tokens: int = 0
    per_tokens: int | None = None

    def __post_init__(self) -> None:
        self.xtx = torch.zeros(self.in_features, self.in_features, dtype=torch.float64)

    def add_batch(self, x: torch.Tensor) -> None:
        """Add activations (..., in_features); every row is one sample (token).

        X^T X is formed and added in column slices, so the fp32 product and its fp64 copy are
        (in, COLUMNS) temporaries, not two more (in, in) matrices (for a 5632-input layer
        that is 69 MB instead of 381 MB on top of the accumulator). Each entry is the same dot
        product over the tokens as in the whole product (equal floats on the CPU builds
        measured; a BLAS may order a sum differently for another width)."""
        rows = x.reshape(-1, x.shape[-1]).float()
        for start in range(0, rows.shape[1], XTX_COLUMNS):
            part = rows[:, start : start + XTX_COLUMNS]
            self.xtx[:, start : start + part.shape[1]] += (rows.T @ part).double().cpu()
        self.norm_sum += float(rows.norm(dim=1).sum())
        self.n_tokens += rows.shape[0]

    add = add_batch  # the name older callers use

    @property
    def divisor(self) -> int:
        return max(self.per_tokens or self.n_tokens, 1)

    @property
    def hessian(self) -> torch.Tensor:
        return self.xtx / self.divisor

    @property
    def hessian_fp32(self) -> torch.Tensor:
        """``hessian`` rounded to fp32, formed in row slices (equal values, no fp64 copy)."""
        out = torch.empty(self.xtx.shape, dtype=torch.float32, device=self.xtx.device)
        for start in range(0, self.xtx.shape[0], XTX_COLUMNS):
            out[start : start + XTX_COLUMNS] = self.xtx[start : start + XTX_COLUMNS] / self.divisor
        return out

    @property
    def act_sq(self) -> torch.Tensor:
        return torch.diagonal(self.xtx) / self.divisor

    @property
    def mean_norm(self) -> float:
        return self.norm_sum / max(self.n_tokens, 1)


@dataclass
class CrossStats:
    """X^T Y / n of one linear layer: X its inputs in the original model, Y the same tokens'
    inputs in the model being compressed (``allocator.quant.gptq.clean_target``)."""

    in_features: int
    xty: torch.Tensor = field(init=False)
    n_tokens: int = 0

    def __post_init__(self) -> None:
        self.xty = torch.zeros(self.in_features, self.in_features, dtype=torch.float64)

    def add_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        xs = x.reshape(-1, x.shape[-1]).float()
        ys = y.reshape(-1, y.shape[-1]).float()
        for start in range(0, ys.shape[1], XTX_COLUMNS):
            part = ys[:, start : start + XTX_COLUMNS]
            self.xty[:, start : start + part.shape[1]] += (xs.T @ part).double().cpu()
        self.n_tokens += ys.shape[0]

    @property
    def cross(self) -> torch.Tensor:
        return (self.xty / max(self.n_tokens, 1)).float()


def stat_hooks(linears: dict[str, nn.Linear], stats: dict[str, ActStats]) -> list[Any]:
    """Forward pre-hooks accumulating each linear's input into ``stats[name]`` (remove them when
    done). Layers fed the same tensor share one ActStats, computed once; register them anew for
    each forward call (the shared-input memo lives as long as the hooks)."""
    seen: dict[int, tuple[ActStats, torch.Tensor]] = {}

    def make(name: str, module: nn.Linear) -> Callable[..., None]:
        def hook(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            hit = seen.get(id(x))
            if hit is not None and hit[1] is x:
                stats.setdefault(name, hit[0])
                return
            acc = stats.setdefault(name, ActStats(module.in_features))
            acc.add_batch(x)
            seen[id(x)] = (acc, x)  # keeping x alive prevents another tensor reusing its id

        return hook

    return [m.register_forward_pre_hook(make(n, m)) for n, m in linears.items()]
