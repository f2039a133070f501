"""X^T X accumulated in column slices equals the whole product; fp32 H equals the rounded fp64."""

from __future__ import annotations

import torch

from allocator.models.actstats import XTX_COLUMNS, ActStats


def test_sliced_xtx_equals_the_whole_product() -> None:
    """Wider than one slice (and not a multiple of it): every column filled, sums as before."""
    torch.manual_seed(0)
    width = XTX_COLUMNS * 2 + 37
    batches = [torch.randn(3, 50, width), torch.randn(70, width)]
    stats = ActStats(width)
    for x in batches:
        stats.add_batch(x)
    expected = torch.zeros(width, width, dtype=torch.float64)
    for x in batches:
        rows = x.reshape(-1, width)
        expected += (rows.T @ rows).double()
    torch.testing.assert_close(stats.xtx, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats.xtx, stats.xtx.T, rtol=1e-9, atol=1e-9)  # every slice
    assert stats.n_tokens == 220


def test_fp32_hessian_equals_the_rounded_fp64_one() -> None:
    torch.manual_seed(1)
    width = XTX_COLUMNS + 5
    stats = ActStats(width)
    stats.add_batch(torch.randn(40, width))
    assert torch.equal(stats.hessian_fp32, stats.hessian.float())


def test_cross_statistics_equal_x_transpose_y() -> None:
    """X^T Y / n over batches, sliced like X^T X (wider than one slice)."""
    from allocator.models.actstats import CrossStats

    torch.manual_seed(2)
    width = XTX_COLUMNS + 11
    xs = [torch.randn(2, 30, width), torch.randn(25, width)]
    ys = [x + 0.1 * torch.randn_like(x) for x in xs]
    stats = CrossStats(width)
    for x, y in zip(xs, ys, strict=True):
        stats.add_batch(x, y)
    rows_x = torch.cat([x.reshape(-1, width) for x in xs]).double()
    rows_y = torch.cat([y.reshape(-1, width) for y in ys]).double()
    torch.testing.assert_close(stats.cross, (rows_x.T @ rows_y / 85).float(), rtol=1e-5, atol=1e-6)
    assert stats.n_tokens == 85
