"""The reduction chain: selection, filters, pins, ties, dominated options, resources."""

from __future__ import annotations

import numpy as np
import pytest

from allocator.errors import AllocatorWarning, InputError
from allocator.schema.constraints import Budget, Constraints, OptionFilter, ResourceLimit, UnitRule
from allocator.schema.option import Option
from allocator.schema.table import SensitivityTable
from allocator.schema.unit import Unit
from allocator.solve.reductions import reduce

KEYS = ["b2-g128", "b3-g128", "b4-g128", "b4-g64", "b8-g128", "fp16"]
NAMES = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.self_attn.k_proj",
    "model.layers.0.self_attn.v_proj",
    "model.layers.0.mlp.gate_proj",
    "model.layers.0.mlp.up_proj",
    "model.layers.0.mlp.down_proj",
]


def _table(resources: bool = False) -> SensitivityTable:
    units = [Unit(name=n, shape=(128, 256)) for n in NAMES]
    losses = {
        n: {k: 1.0 / (i + 1) / (Option.parse(k).bits ** 2) for k in KEYS}
        for i, n in enumerate(NAMES)
    }
    for n in NAMES:
        losses[n]["b4-g64"] = losses[n]["b4-g128"] * 0.9
    extra = {}
    if resources:
        extra = {"latency": {n: {k: float(Option.parse(k).bits) for k in KEYS} for n in NAMES}}
    return SensitivityTable(
        units=units, options=[Option.parse(k) for k in KEYS], losses=losses, resources=extra
    )


def _c(**kwargs: object) -> Constraints:
    return Constraints(budget=Budget(avg_bits=4.0), **kwargs)


def test_plain_table_keeps_every_unit_and_drops_only_dominated() -> None:
    red = reduce(_table(), _c())
    assert red.units == NAMES
    assert red.groups == [[n] for n in NAMES]
    assert all(len(cols) == len(KEYS) for cols in red.columns)
    assert red.problem.budget == 4.0 * 6 * 128 * 256


def test_dominated_option_is_dropped_and_kept_under_distinct_cap() -> None:
    table = _table()
    for n in NAMES:  # make b4-g64 cost more AND lose more than b4-g128: dominated
        table.losses[n]["b4-g64"] = table.losses[n]["b4-g128"] * 2
    red = reduce(table, _c())
    assert all("b4-g64" not in cols for cols in red.columns)
    assert any("dominated" in note for note in red.notes)
    capped = reduce(table, _c(max_distinct_options=2))
    assert all("b4-g64" in cols for cols in capped.columns)


def test_columns_stay_aligned_with_losses_after_dropping() -> None:
    table = _table()
    table.losses[NAMES[0]]["b3-g128"] = 10.0  # dominated by b4-g128? no, cheaper; by b2-g128 yes
    red = reduce(table, _c())
    row = red.groups.index([NAMES[0]])
    for col, key in enumerate(red.columns[row]):
        assert red.problem.loss[row, col] == pytest.approx(table.losses[NAMES[0]][key])


def test_include_exclude_select_units() -> None:
    red = reduce(_table(), _c(include=["self_attn"], exclude=["k_proj$"]))
    assert red.units == [NAMES[0], NAMES[2]]
    assert red.problem.budget == 4.0 * 2 * 128 * 256


@pytest.mark.parametrize(
    "field",
    [
        {"include": ["nothing_like_this"]},
        {"exclude": ["nothing_like_this"]},
        {"rules": [UnitRule(pattern="nothing_like_this", min_bits=3)]},
        {"ties": [["q_proj$", "nothing_like_this"]]},
    ],
)
def test_pattern_matching_nothing_is_an_input_error_when_strict(field: dict) -> None:
    with pytest.raises(InputError, match=r"nothing_like_this.*matches no unit"):
        reduce(_table(), _c(**field, strict=True))


@pytest.mark.parametrize(
    "field",
    [
        {"include": ["nothing_like_this", "proj$"]},
        {"exclude": ["nothing_like_this"]},
        {"rules": [UnitRule(pattern="nothing_like_this", min_bits=3)]},
        {"ties": [["q_proj$", "nothing_like_this"]]},
    ],
)
def test_pattern_matching_nothing_warns_by_default(field: dict) -> None:
    """Rule sets written for several model families (lm_head with tied embeddings) still solve."""
    with pytest.warns(AllocatorWarning, match=r"nothing_like_this.*matches no unit.*strict"):
        red = reduce(_table(), _c(**field))
    assert any("nothing_like_this" in note for note in red.notes)
    assert red.units == NAMES


def test_bad_regex_is_an_input_error() -> None:
    # the schema refuses it when the constraints are built ...
    with pytest.raises(ValueError, match="not a valid regular expression"):
        UnitRule(pattern="proj(", min_bits=3)
    # ... and the reductions when they are built around validation
    rule = UnitRule.model_construct(pattern="proj(", min_bits=3, max_bits=None, pin=None)
    rule.allow, rule.max_sparsity = None, None
    with pytest.raises(InputError, match="not a valid regular expression"):
        reduce(_table(), _c(rules=[rule]))


def test_allowed_and_rule_bounds_filter_options() -> None:
    red = reduce(
        _table(),
        _c(
            allowed=OptionFilter(bits=[2, 3, 4, 8]),
            rules=[UnitRule(pattern="down_proj$", min_bits=4, max_bits=4)],
        ),
    )
    down = red.groups.index([NAMES[5]])
    assert set(red.columns[down]) <= {"b4-g128", "b4-g64"}
    assert all("fp16" not in cols for cols in red.columns)


def test_rule_leaving_no_option_names_the_rule() -> None:
    with pytest.raises(InputError, match=r"rules\[0\].*leaves unit"):
        reduce(_table(), _c(rules=[UnitRule(pattern="q_proj", min_bits=5, max_bits=7)]))


def test_option_no_unit_allows_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"b6-g128.*offered by no unit"):
        reduce(_table(), _c(allowed=OptionFilter(keys=["b6-g128", "b4-g128"])))


def test_pin_fixes_the_unit() -> None:
    red = reduce(_table(), _c(rules=[UnitRule(pattern="down_proj$", pin="b8-g128")]))
    row = red.groups.index([NAMES[5]])
    assert red.columns[row] == ["b8-g128"]


def test_pin_missing_from_table_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"pin.*b6-g128.*not in the table"):
        reduce(_table(), _c(rules=[UnitRule(pattern="down_proj$", pin="b6-g128")]))


def test_pin_conflicting_with_bounds_is_an_input_error() -> None:
    rules = [UnitRule(pattern="down_proj$", pin="b2-g128"), UnitRule(pattern="proj$", min_bits=3)]
    with pytest.raises(InputError, match="ruled out"):
        reduce(_table(), _c(rules=rules))


def test_presets_merge_qkv_and_gate_up_and_sum_costs() -> None:
    table = _table()
    red = reduce(table, _c(target="vllm"))
    assert [NAMES[0], NAMES[1], NAMES[2]] in red.groups
    assert [NAMES[3], NAMES[4]] in red.groups
    assert len(red.groups) == 3
    row = red.groups.index([NAMES[0], NAMES[1], NAMES[2]])
    col = red.columns[row].index("b4-g128")
    assert red.problem.loss[row, col] == pytest.approx(
        sum(table.losses[n]["b4-g128"] for n in NAMES[:3])
    )
    # vllm counts sizes as compressed-tensors stores them: fp16 scale + 4-bit packed zero per
    # group, and the 128-bit weight_shape tensor per unit
    assert red.problem.cost[row, col] == pytest.approx(3 * (128 * 256 * 4 + 128 * 2 * 20 + 128))
    choice = np.array([red.columns[r].index("b4-g128") for r in range(len(red.groups))])
    assert set(red.assignment(choice).values()) == {"b4-g128"}


def test_explicit_ties_merge_overlapping_groups() -> None:
    red = reduce(_table(), _c(ties=[["q_proj$", "k_proj$"], ["k_proj$", "down_proj$"]]))
    assert [NAMES[0], NAMES[1], NAMES[5]] in red.groups


def test_tie_without_common_option_is_an_input_error() -> None:
    rules = [UnitRule(pattern="q_proj$", max_bits=3), UnitRule(pattern="k_proj$", min_bits=4)]
    with pytest.raises(InputError, match="share an option"):
        reduce(_table(), _c(rules=rules, tie_presets=["qkv"]))


def test_moe_expert_preset_ties_same_projection_across_experts() -> None:
    names = [f"model.layers.0.mlp.experts.{e}.{p}" for e in range(3) for p in ("w1", "w2")]
    table = SensitivityTable(
        units=[Unit(name=n, numel=1024) for n in names],
        options=[Option.parse("b4-g128"), Option.parse("b3-g128")],
        losses={n: {"b4-g128": 0.1, "b3-g128": 0.3} for n in names},
    )
    red = reduce(table, _c(tie_presets=["moe_experts"]))
    assert sorted(len(g) for g in red.groups) == [3, 3]


def test_resources_from_table_and_builtin_bops() -> None:
    limits = [ResourceLimit(name="latency", max=30), ResourceLimit(name="bops", max=1e9)]
    red = reduce(_table(resources=True), _c(resources=limits))
    assert red.problem.resource_names == ["latency", "bops"]
    row, col = 0, red.columns[0].index("b3-g128")
    assert red.problem.resources[0, row, col] == 3.0
    assert red.problem.resources[1, row, col] == 3 * 16 * 128 * 256


def test_unknown_resource_is_an_input_error() -> None:
    with pytest.raises(InputError, match="unknown resource 'watts'"):
        reduce(_table(), _c(resources=[ResourceLimit(name="watts", max=1)]))


def test_resource_missing_a_value_is_an_input_error() -> None:
    table = _table(resources=True)
    del table.resources["latency"][NAMES[0]]["b3-g128"]
    with pytest.raises(InputError, match="no value for unit"):
        reduce(table, _c(resources=[ResourceLimit(name="latency", max=30)]))
