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
