"""The bundled example is what its generator makes, and it solves within budget."""

from __future__ import annotations

import itertools

from allocator.data.example import example_table, load_example


def test_bundled_table_matches_its_generator() -> None:
    table, constraints = load_example()
    assert table == example_table()
    assert len(table.units) == 210
    assert sum(u.numel for u in table.units) == 30 * (
        2 * 576 * 576 + 2 * 192 * 576 + 3 * 1536 * 576
    )
    assert constraints.budget.avg_bits == 3.5 and constraints.tie_presets == ["qkv", "gate_up"]


def test_losses_are_convex_decreasing_in_bits() -> None:
    table = example_table()
    for name, row in table.losses.items():
        curve = [row[f"b{b}-g128"] for b in (2, 3, 4, 5, 6, 8)]
        assert all(a > b for a, b in itertools.pairwise(curve)), name
        assert row["fp16"] == 0.0
