"""Rule-based baselines: every rule fits its budget, follows its rule, and makes a valid Plan."""

from __future__ import annotations

import pytest

from allocator.errors import InfeasibleError, InputError
from allocator.schema import Constraints, Option, SensitivityTable, Unit
from allocator.solve.rules import (
    choice_cost_bits,
    lim_choice,
    llama_promoted,
    llama_rule_choice,
    plan_from_choice,
    tie_groups,
    uniform_choice,
)

SHAPES = {
    "self_attn.q_proj": (576, 576),
    "self_attn.k_proj": (192, 576),
    "self_attn.v_proj": (192, 576),
    "self_attn.o_proj": (576, 576),
    "mlp.gate_proj": (1536, 576),
    "mlp.up_proj": (1536, 576),
    "mlp.down_proj": (576, 1536),
}
GRID = [Option.parse(f"b{b}-g{g}") for b in (2, 3, 4, 5, 6, 8) for g in (32, 64, 128, 256)]


def smollm_units(n_layers: int = 30) -> list[Unit]:
    """SmolLM2-135M-shaped units (7 linears per block), with tie keys as find_units sets them."""
    units = []
    for layer in range(n_layers):
        for suffix, shape in SHAPES.items():
            name = f"model.layers.{layer}.{suffix}"
            tie = None
            if "self_attn" in suffix and suffix != "self_attn.o_proj":
                tie = f"model.layers.{layer}.self_attn.qkv"
            if suffix in ("mlp.gate_proj", "mlp.up_proj"):
                tie = f"model.layers.{layer}.mlp.gate_up"
            units.append(
                Unit(name=name, shape=shape, kind=suffix.split(".")[-1], tie=tie, layer=layer)
            )
    return units


UNITS = smollm_units()


def avg_bits(choice: dict[str, Option], c: Constraints) -> float:
    return choice_cost_bits(UNITS, choice, c) / sum(u.numel for u in UNITS)


@pytest.mark.parametrize("budget", [2.5, 3.0, 3.5, 4.25])
def test_uniform_is_the_largest_single_option_that_fits(budget: float) -> None:
    c = Constraints.simple(budget)
    choice = uniform_choice(UNITS, c, GRID)
    assert len(set(o.key for o in choice.values())) == 1
    used = avg_bits(choice, c)
    assert used <= budget + 1e-9
    for option in GRID:
        size = avg_bits({u.name: option for u in UNITS}, c)
        assert size <= used + 1e-12 or size > budget


def test_uniform_known_settings() -> None:
    assert next(iter(uniform_choice(UNITS, Constraints.simple(3.5), GRID).values())).key == "b3-g64"
    # b4-g128 is 4.27 bpw here (576 columns leave a ragged 5th group), so 4.25 gets b4-g256
    assert (
        next(iter(uniform_choice(UNITS, Constraints.simple(4.25), GRID).values())).key == "b4-g256"
    )


def test_llama_promoted_matches_use_more_bits() -> None:
    layers = sorted({int(n.split(".")[2]) for n in llama_promoted(UNITS)})
    # llama.cpp use_more_bits for n=30: i < 3, i >= 26, (i - 3) % 3 == 2
    assert layers == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    assert all(n.endswith(("v_proj", "down_proj")) for n in llama_promoted(UNITS))


@pytest.mark.parametrize("budget", [2.5, 3.0, 3.5, 4.25])
def test_llama_rule_fits_and_promotes(budget: float) -> None:
    c = Constraints.simple(budget)
    choice = llama_rule_choice(UNITS, c, GRID, group_size=128)
    assert avg_bits(choice, c) <= budget + 1e-9
    assert all(o.group_size == 128 for o in choice.values())
    promoted = llama_promoted(UNITS)
    base = min(o.bits for o in choice.values())
    assert all(choice[n].bits >= base + 1 for n in promoted)
    # the fill leaves less than one cheapest upgrade step unused
    assert avg_bits(choice, c) > budget - 0.05


def test_llama_rule_respects_ties() -> None:
    c = Constraints.simple(3.5, tie_presets=["qkv", "gate_up"])
    choice = llama_rule_choice(UNITS, c, GRID, group_size=128)
    for group in tie_groups(UNITS, c):
        assert len({choice[u.name].key for u in group}) == 1
    assert avg_bits(choice, c) <= 3.5 + 1e-9


def test_lim_moves_least_important_layers_down() -> None:
    scores = {layer: float(layer % 7) + layer / 100 for layer in range(30)}
    c = Constraints.simple(3.5)
    choice = lim_choice(UNITS, c, GRID, scores, group_size=128)
    assert avg_bits(choice, c) <= 3.5 + 1e-9
    bits = {layer: {choice[u.name].bits for u in UNITS if u.layer == layer} for layer in range(30)}
    assert all(len(b) == 1 for b in bits.values())
    low = [layer for layer in range(30) if bits[layer] == {3}]
    high = [layer for layer in range(30) if bits[layer] == {4}]
    assert low and high
    assert max(scores[k] for k in low) <= min(scores[k] for k in high)


def test_lim_needs_every_layer_scored() -> None:
    with pytest.raises(InputError, match="layer_scores"):
        lim_choice(UNITS, Constraints.simple(3.5), GRID, {0: 1.0})


def test_infeasible_budget_is_a_clear_error() -> None:
    c = Constraints.simple(1.0)
    with pytest.raises(InfeasibleError):
        uniform_choice(UNITS, c, GRID)
    with pytest.raises(InfeasibleError):
        llama_rule_choice(UNITS, c, GRID)
    with pytest.raises(InfeasibleError):
        lim_choice(UNITS, c, GRID, {k: 0.0 for k in range(30)})


def test_plan_from_choice_totals_and_losses() -> None:
    c = Constraints.simple(3.5)
    choice = uniform_choice(UNITS, c, GRID)
    table = SensitivityTable(
        units=UNITS,
        options=[Option.parse("b3-g64")],
        losses={u.name: {"b3-g64": 0.5} for u in UNITS},
    )
    plan = plan_from_choice(UNITS, choice, c, solver="rule:uniform", table=table)
    assert plan.predicted_loss == pytest.approx(0.5 * len(UNITS))
    assert plan.size_bits == pytest.approx(choice_cost_bits(UNITS, choice, c))
    assert plan.avg_bits == pytest.approx(3.5)
    assert plan.status == "heuristic" and plan.table_hash == table.content_hash()
    bare = plan_from_choice(UNITS, choice, c, solver="rule:uniform")
    assert bare.predicted_loss == 0 and bare.notes
    with pytest.raises(InputError, match="choice"):
        plan_from_choice(UNITS, {}, c, solver="x")
