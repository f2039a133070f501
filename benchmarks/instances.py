"""Seeded generator of realistic bit-allocation instances for the solver benchmarks.

Each unit ``i`` has ``numel_i`` weights and a heavy-tailed sensitivity ``scale_i`` (lognormal,
sigma 1.5 by default). Option ``(b, g)`` (bits, group size) costs ``numel_i * (b + 32 / g)`` bits
(fp16 scale and zero per group, as the size model charges) and loses

    loss[i, (b, g)] = scale_i * 2^(-2 b) * (g / 128)^0.15 * noise,

the exponential rate-distortion law with a mild group-size penalty; ``noise`` is lognormal
(sigma 0.05), so a few units have noise-induced non-convexities and dominated options. Costs are
integers (bits), so the DP backend can use their GCD.
"""

from __future__ import annotations

import numpy as np

from allocator.solve.problem import Problem

# weight counts of the linear layers of a small Llama block (SmolLM2-135M): q/o, k/v, gate/up/down
LAYER_NUMELS = np.array([576 * 576, 576 * 192, 576 * 1536], dtype=np.int64)
GROUP_NUMEL = 128


MIXED_8 = [(2, 64), (2, 128), (3, 64), (3, 128), (4, 64), (4, 128), (6, 128), (8, 128)]


def option_grid(n_options: int, mixed: bool = False) -> list[tuple[int, int]]:
    """(bits, group size) pairs: 8 -> bits 1..8 at g128 (or, ``mixed``, 2-8 bits at g64/g128,
    uneven cost steps and some dominated options); 32 -> bits 1..8 x groups 32..256."""
    if n_options == 8 and mixed:
        return MIXED_8
    if n_options == 8:
        return [(b, 128) for b in range(1, 9)]
    if n_options == 32:
        return [(b, g) for b in range(1, 9) for g in (32, 64, 128, 256)]
    raise ValueError(f"n_options must be 8 or 32, got {n_options}")


def make_instance(
    n_units: int,
    n_options: int,
    *,
    avg_bits: float = 3.5,
    per_group: bool | None = None,
    seed: int = 0,
    scale_sigma: float = 1.5,
    noise_sigma: float = 0.05,
    mixed: bool = False,
) -> Problem:
    """Build a budget-only Problem with ``avg_bits`` bits per weight (overhead included).

    ``per_group`` (default: ``n_units > 10^5``) makes every unit one group of 128 weights, the
    setting of per-group allocation; otherwise units are layer-sized.
    """
    rng = np.random.default_rng(seed)
    grid = option_grid(n_options, mixed)
    bits = np.array([b for b, _ in grid], dtype=np.float64)
    groups = np.array([g for _, g in grid], dtype=np.float64)
    per_group = n_units > 100_000 if per_group is None else per_group
    if per_group:
        numel = np.full(n_units, GROUP_NUMEL, dtype=np.int64)
    else:
        numel = LAYER_NUMELS[rng.integers(0, len(LAYER_NUMELS), size=n_units)]
    scale = rng.lognormal(mean=0.0, sigma=scale_sigma, size=n_units)
    cost = numel[:, None] * bits[None, :] + 32 * numel[:, None] // groups[None, :].astype(np.int64)
    cost = cost.astype(np.float64)
    shape = np.exp2(-2.0 * bits) * (groups / 128.0) ** 0.15
    loss = scale[:, None] * shape[None, :]
    loss *= rng.lognormal(mean=0.0, sigma=noise_sigma, size=loss.shape)
    budget = float(avg_bits * numel.sum())
    return Problem(cost=cost, loss=loss, valid=np.ones(cost.shape, dtype=bool), budget=budget)
