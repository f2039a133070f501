"""Target rules: what does not fit is named exactly, and presets produce plans that fit."""

from __future__ import annotations

import re

import pytest

from allocator.errors import UnsupportedError
from allocator.export import export_plan
from allocator.export.llamacpp import GGML_TYPES
from allocator.models.gguf_names import gguf_to_hf, hf_to_gguf
from allocator.patterns import anchored, exact_names_regex
from allocator.schema import Constraints, Option, OptionFilter
from allocator.schema.targets import TARGETS, check_plan, constraints_for_target, get_rules

from .conftest import CANDIDATES, make_plan
from .conftest import TARGETS as TARGET_NAMES


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_preset_plans_fit(target, target_plans):
    assert check_plan(target_plans[target], get_rules(target)) == []


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_constraints_for_target_is_constraints_compatible(target):
    for extra in (constraints_for_target(target), constraints_for_target(target, CANDIDATES)):
        c = Constraints.simple(4.0, allowed=extra["allowed"], tie_presets=extra["tie_presets"])
        assert isinstance(c.allowed, OptionFilter)
    exact = constraints_for_target(target, CANDIDATES)["allowed"]["keys"]
    coarse = OptionFilter.model_validate(constraints_for_target(target)["allowed"])
    assert exact and all(coarse.allows(Option.parse(k)) for k in exact)  # coarse is a superset


def test_mixed_plan_problems_are_named(mixed_plan):
    problems = check_plan(mixed_plan, get_rules("gptqmodel+vllm"))
    bad_bits = [a for a in mixed_plan.assignments if a.option.bits in (5, 6, 7)]
    assert bad_bits
    for a in bad_bits:
        assert any(p.startswith(f"{a.unit}: {a.option.key}: bits=") for p in problems)
    assert any("fused shards need one scheme" in p and ".qkv" in p for p in problems)
    with pytest.raises(
        UnsupportedError,
        match=r"(?s)does not fit target 'gptqmodel\+vllm'.*target: gptqmodel\+vllm",
    ):
        export_plan(mixed_plan, "gptqmodel+vllm")


def test_serving_rules_are_opt_in(mixed_plan):
    """Plain gptqmodel/autoround/compressed-tensors check only the format; '+vllm' adds vLLM's
    fused-shard ties and symmetric 8-bit."""
    for target in ("gptqmodel", "autoround", "compressed-tensors"):
        plain = check_plan(mixed_plan, get_rules(target))
        served = check_plan(mixed_plan, get_rules(f"{target}+vllm"))
        assert not any("fused shards" in p for p in plain), target
        assert any("fused shards" in p for p in served), target
        assert get_rules(f"{target}+vllm").size_model == get_rules(target).size_model
    assert get_rules("gptqmodel").option_problem(Option.parse("b8-g128")) is None
    assert get_rules("autoround").option_problem(Option.parse("b8-g128"))  # AutoRound refuses
    assert "symmetric" in str(get_rules("gptqmodel+vllm").option_problem(Option.parse("b8-g128")))
    with pytest.raises(UnsupportedError, match="no variant 'sglang'"):
        get_rules("gptqmodel+sglang")


def test_specific_rule_messages(units):
    by_name = {u.name: u for u in units}
    q = "model.layers.0.self_attn.q_proj"
    choice = {u.name: Option.parse("b4-g128") for u in units}
    choice[q] = Option.parse("b4-g128-sym")
    plan = make_plan(units, choice)
    assert by_name[q]
    modelopt = check_plan(plan, get_rules("modelopt"))
    assert any("asymmetric" in p for p in modelopt)
    assert any(p.startswith("model.layers.0.self_attn.qkv: fused shards") for p in modelopt)
    hqq = check_plan(plan, get_rules("hqq"))
    assert any(
        p.startswith("self_attn.q_proj: hqq takes one setting per projection type") for p in hqq
    )
    with pytest.raises(UnsupportedError, match=r"self_attn\.q_proj"):
        export_plan(plan, "hqq")


def test_unknown_target():
    with pytest.raises(UnsupportedError, match="choose one of"):
        get_rules("tensorrt-foo")
    assert get_rules("llm-compressor").name == "compressed-tensors"


def test_sparsity_mix_is_refused(units):
    choice = {u.name: Option.parse("b4-g128") for u in units}
    for u in units:
        if u.layer == 0:
            choice[u.name] = Option.parse("b4-g128-2:4")
        if u.layer == 1:
            choice[u.name] = Option.parse("b4-g128-s0.3")
    with pytest.raises(UnsupportedError, match="one sparsity format"):
        export_plan(make_plan(units, choice), "compressed-tensors")


def test_ggml_bits_per_weight_match_gguf():
    gguf = pytest.importorskip("gguf")
    for name, (bpw, block) in GGML_TYPES.items():
        block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
        assert block_size == block, name
        assert type_size * 8 / block_size == bpw, name


def test_gguf_names_round_trip(units):
    for u in units:
        assert gguf_to_hf(hf_to_gguf(u.name)) == u.name
    assert hf_to_gguf("model.layers.3.mlp.down_proj") == "blk.3.ffn_down.weight"
    assert gguf_to_hf("blk.0.attn_norm.weight") is None
    with pytest.raises(UnsupportedError):
        hf_to_gguf("model.layers.0.self_attn.rotary", "llama")
    with pytest.raises(UnsupportedError, match=r"--model-type .gpt2."):
        hf_to_gguf("model.layers.0.self_attn.q_proj", "gpt2")


@pytest.mark.parametrize("seed", range(5))
def test_exact_names_regex_matches_only_its_names(seed, module_names):
    import random

    rng = random.Random(seed)
    chosen = rng.sample(module_names, 25)
    regex = re.compile(anchored(exact_names_regex(chosen)))
    assert [n for n in module_names if regex.search(n)] == [n for n in module_names if n in chosen]


def test_every_target_has_rules_and_exporter():
    from allocator.export import EXPORTERS

    assert set(TARGETS) == set(EXPORTERS.names())


def test_group_must_divide_inputs(units):
    """torchao/vLLM-style targets refuse g128 on SmolLM2's 576-input weights when shapes are known."""
    choice = {u.name: Option.parse("b4-g64") for u in units}
    choice["model.layers.0.self_attn.o_proj"] = Option.parse("b4-g128")
    plan = make_plan(units, choice)
    export_plan(plan, "torchao")  # without shapes the check cannot run
    with pytest.raises(
        UnsupportedError, match=r"o_proj: b4-g128: group size 128 does not divide the 576"
    ):
        export_plan(plan, "torchao", units=units)
    extra = constraints_for_target("torchao", CANDIDATES, units)
    rule = next(
        r for r in extra["rules"] if re.search(r["pattern"], "model.layers.0.self_attn.o_proj")
    )
    assert 128 not in rule["allow"]["group_size"] and 64 in rule["allow"]["group_size"]
    assert not any(re.search(r["pattern"], "model.layers.0.mlp.down_proj") for r in extra["rules"])
