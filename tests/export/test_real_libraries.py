"""Load exported configs with the targets' own libraries where they install offline (no GPU).

compressed-tensors (QuantizationConfig, sparsity configs, match_named_modules) and torchao
(config_from_dict, FqnToConfig matching) are verified this way; the other targets are verified
by their matching semantics only (test_matching.py).
"""

from __future__ import annotations

import pytest

from allocator.export import export_plan


@pytest.mark.parametrize("target", ["compressed-tensors", "vllm"])
def test_compressed_tensors_loads_and_matches(target, target_plans, model):
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.config import SparsityCompressionConfig
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.utils.match import match_named_modules

    plan = target_plans[target]
    qc = export_plan(plan, target).config["quantization_config"]
    config = QuantizationConfig.model_validate(qc)
    assert config.quant_method == "compressed-tensors" and ct
    options = plan.options_by_unit()
    for group in config.config_groups.values():
        matched = [name for name, _ in match_named_modules(model, group.targets)]
        assert matched
        for name in matched:
            option = options[name]
            assert group.weights.num_bits == option.bits
            assert group.weights.symmetric == option.symmetric
            assert group.weights.group_size == option.group_size
    quantized = {u for u, o in options.items() if not o.is_fp16}
    all_matched = {
        n for g in config.config_groups.values() for n, _ in match_named_modules(model, g.targets)
    }
    assert all_matched == quantized
    sparse = qc.get("sparsity_config")
    if sparse:
        loaded = SparsityCompressionConfig.load_from_registry(sparse["format"], **sparse)
        assert loaded.sparsity_structure == "2:4"
        names = {n for n, _ in match_named_modules(model, loaded.targets)}
        assert names == {u for u, o in options.items() if o.sparsity > 0}


def test_torchao_loads_and_matches(target_plans, module_names):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchao")
    from torchao.core.config import config_from_dict
    from torchao.quantization import FqnToConfig, IntxWeightOnlyConfig, PerAxis, PerGroup
    from torchao.quantization.quant_api import fqn_matches_fqn_config

    plan = target_plans["torchao"]
    config = config_from_dict(export_plan(plan, "torchao").config)
    assert isinstance(config, FqnToConfig)
    options = plan.options_by_unit()
    for name in module_names:
        assert fqn_matches_fqn_config(name, config) == (name in options), name
    for key, sub in config.fqn_to_config.items():
        import re

        members = [n for n in module_names if re.fullmatch(key[3:], n)]
        assert members
        for name in members:
            option = options[name]
            if option.is_fp16:
                assert sub is None
                continue
            assert isinstance(sub, IntxWeightOnlyConfig)
            assert sub.weight_dtype == getattr(torch, f"int{option.bits}")
            if option.group_size is None:
                assert isinstance(sub.granularity, PerAxis) and sub.granularity.axis == 0
            else:
                assert isinstance(sub.granularity, PerGroup)
                assert sub.granularity.group_size == option.group_size
            assert sub.mapping_type.name == ("SYMMETRIC" if option.symmetric else "ASYMMETRIC")


def test_autoround_set_layer_config(target_plans, model):
    """AutoRound's own resolver expands our layer_config to exactly the planned settings."""
    torch = pytest.importorskip("torch")
    utils = pytest.importorskip("auto_round.compressors.utils")
    from auto_round.utils.common import INNER_SUPPORTED_LAYER_TYPES, SUPPORTED_LAYER_TYPES

    plan = target_plans["autoround"]
    config = export_plan(plan, "autoround").config
    resolved = utils.set_layer_config(
        model,
        config["layer_config"],
        "W4A16",
        torch.float16,
        SUPPORTED_LAYER_TYPES,
        INNER_SUPPORTED_LAYER_TYPES,
    )[0]
    assert set(resolved) == {a.unit for a in plan.assignments}  # lm_head, embeddings untouched
    for a in plan.assignments:
        got = resolved[a.unit]
        if a.option.is_fp16:
            assert got["bits"] == 16 and got["data_type"] == "float", a.unit
            continue
        group = -1 if a.option.group_size is None else a.option.group_size
        assert (got["bits"], got["group_size"], got["sym"]) == (
            a.option.bits,
            group,
            a.option.symmetric,
        )


@pytest.mark.parametrize("suffix", ["", ".legacy.yaml"])
def test_modelopt_quantize_on_cpu(suffix):
    """mtq.quantize with our quant_cfg enables exactly the planned weight quantizers."""
    torch = pytest.importorskip("torch")
    mtq = pytest.importorskip("modelopt.torch.quantization")
    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    from allocator.models.units import find_units

    from .conftest import random_plan

    config = LlamaConfig(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    tiny = LlamaForCausalLM(config)
    plan = random_plan(find_units(tiny), "modelopt", seed=5)
    quant = yaml.safe_load(export_plan(plan, "modelopt").files[suffix])
    tokens = torch.randint(0, 256, (1, 16))
    mtq.quantize(tiny, quant, forward_loop=lambda m: m(tokens))
    options = plan.options_by_unit()
    enabled = {}
    for name, module in tiny.named_modules():
        if name.endswith("_quantizer") and module.is_enabled:
            enabled[name] = module
    want = {f"{u}.weight_quantizer" for u, o in options.items() if not o.is_fp16}
    assert set(enabled) == want
    for name, quantizer in enabled.items():
        option = options[name.removesuffix(".weight_quantizer")]
        assert quantizer.num_bits == option.bits
        if option.group_size is None:
            assert quantizer.axis == 0 and not quantizer.block_sizes
        else:
            assert quantizer.block_sizes[-1] == option.group_size


def test_hqq_config_through_transformers(target_plans):
    """transformers' HqqConfig loads the export and prepare_for_hqq_linear tags exactly the plan."""
    pytest.importorskip("hqq")
    import json

    from torch import nn
    from transformers import HqqConfig
    from transformers.integrations.hqq import prepare_for_hqq_linear

    from .conftest import smollm2_model

    plan = target_plans["hqq"]
    config = HqqConfig(**json.loads(export_plan(plan, "hqq").files[""]))
    model = prepare_for_hqq_linear(smollm2_model(), quantization_config=config)
    options = plan.options_by_unit()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        got = getattr(module, "quant_config", None)
        option = options.get(name)
        if option is None or option.is_fp16:
            assert got is None, name
        else:
            params = got["weight_quant_params"]
            assert (params["nbits"], params["group_size"]) == (option.bits, option.group_size)


def test_torchao_quantize_applies_exactly_the_plan():
    """torchao's quantize_ with our FqnToConfig quantizes exactly the planned weights (CPU)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchao")
    from torchao.core.config import config_from_dict
    from torchao.quantization import quantize_
    from transformers import LlamaConfig, LlamaForCausalLM

    from allocator.models.units import find_units

    from .conftest import random_plan

    config = LlamaConfig(
        vocab_size=256,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=2,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    tiny = LlamaForCausalLM(config)
    units = find_units(tiny)
    plan = random_plan(units, "torchao", seed=2)
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    quantize_(
        tiny, config_from_dict(export_plan(plan, "torchao", units=units).config), filter_fn=None
    )
    options = plan.options_by_unit()
    for name, param in tiny.named_parameters():
        module = name.removesuffix(".weight")
        option = options.get(module)
        quantized = type(param).__name__ != "Parameter" or type(param.data) is not torch.Tensor
        if option is None or option.is_fp16 or not name.endswith(".weight"):
            assert not quantized and torch.equal(param.detach(), before[name]), name
            continue
        assert quantized, name
        error = (param.dequantize() - before[name]).abs().max().item()
        scale = before[name].abs().max().item()
        assert 0 < error <= scale * 2.0 ** (1 - option.bits) + 1e-6, (name, option.key, error)
