"""Input statistics of a linear layer, accumulated batch by batch (GPTQ's ``add_batch``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


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

    def add(self, x: torch.Tensor) -> None:
        rows = x.reshape(-1, x.shape[-1]).float()
        self.xtx += (rows.T @ rows).double().cpu()
        self.norm_sum += float(rows.norm(dim=1).sum())
        self.n_tokens += rows.shape[0]

    @property
    def divisor(self) -> int:
        return max(self.per_tokens or self.n_tokens, 1)

    @property
    def hessian(self) -> torch.Tensor:
        return self.xtx / self.divisor

    @property
    def act_sq(self) -> torch.Tensor:
        return torch.diagonal(self.xtx) / self.divisor

    @property
    def mean_norm(self) -> float:
        return self.norm_sum / max(self.n_tokens, 1)
