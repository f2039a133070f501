"""Re-apply every exported config with its target's own matching rules to SmolLM2's real names.

Each test resolves every module of the model the way the target would and checks that each unit
gets exactly its planned setting and that no other module (embeddings, lm_head, norms, parents)
is touched.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import pytest
import yaml

from allocator.export import export_plan
from allocator.export.autoround import option_fields as autoround_fields
from allocator.export.gptqmodel import option_fields as gptq_fields
from allocator.export.llamacpp import ggml_type_for
from allocator.models.gguf_names import hf_to_gguf
from allocator.schema.targets import kind_of


def _check(resolved: dict[str, Any], expected: dict[str, Any], names: list[str]) -> None:
    """``resolved`` maps touched names to settings; it must equal ``expected`` exactly."""
    untouched_units = [n for n in expected if expected[n] is None]
    touched = {n: s for n, s in resolved.items() if s is not None}
    want = {n: s for n, s in expected.items() if s is not None}
    assert touched == want
    assert all(n in names for n in expected)
    assert not any(n in touched for n in untouched_units)


# ---------------------------------------------------------------- GPTQModel (re.match, in order)
def gptqmodel_resolve(config: dict[str, Any], name: str) -> dict[str, Any] | bool | None:
    """GPTQModel's dynamic_get: "-:" keys first, re.match on the full name, first match wins."""
    dynamic = config["dynamic"]
    ordered = {k: v for k, v in dynamic.items() if k.startswith("-")}
    ordered |= {k: v for k, v in dynamic.items() if not k.startswith("-")}
    for pattern, overrides in ordered.items():
        if pattern.startswith("-:"):
            if re.match(pattern.removeprefix("-:"), name):
                return False
        elif re.match(pattern.removeprefix("+:"), name):
            return overrides
    return None


def test_gptqmodel_dynamic_matches_exactly(target_plans, module_names):
    plan = target_plans["gptqmodel"]
    config = export_plan(plan, "gptqmodel").config
    base = {k: config[k] for k in ("bits", "group_size", "sym")}
    units = plan.options_by_unit()
    for name in module_names:
        hit = gptqmodel_resolve(config, name)
        if name not in units:
            assert hit is None, f"{name} is not a unit but matched {hit}"
            continue
        option = units[name]
        if option.is_fp16:
            assert hit is False, name
        else:
            assert {**base, **(hit or {})} == gptq_fields(option), name


# ------------------------------------------------------ AutoRound (exact names, else re.search)
def autoround_standard_regex(pattern: str) -> str:
    meta = (".*", "^", "$", "|", "(", ")", "[", "]", "?", "+")
    return pattern if any(t in pattern for t in meta) else ".*" + re.escape(pattern) + ".*"


def test_autoround_layer_config_matches_exactly(target_plans, linear_names, module_names):
    plan = target_plans["autoround"]
    layer_config = export_plan(plan, "autoround").config["layer_config"]
    resolved: dict[str, Any] = {}
    for key, value in layer_config.items():
        if key in linear_names:
            resolved[key] = value
        else:  # AutoRound's fuzzy path: a regex searched over every supported layer
            regex = re.compile(autoround_standard_regex(key))
            for name in linear_names:
                if regex.search(name):
                    resolved[name] = value
    expected = {a.unit: autoround_fields(a.option) for a in plan.assignments}
    assert resolved == expected
    # even read as fuzzy substrings, each key finds only its own module among all modules
    for key in layer_config:
        regex = re.compile(autoround_standard_regex(key))
        assert [n for n in module_names if regex.search(n)] == [key]


# ----------------------------------------- compressed-tensors (re: -> re.match, else equality)
def ct_match(name: str, target: str) -> bool:
    if target.startswith("re:"):
        return re.match(target.removeprefix("re:"), name) is not None
    return target == name


@pytest.mark.parametrize("target", ["compressed-tensors", "vllm"])
def test_compressed_tensors_groups_match_exactly(target, target_plans, module_names):
    plan = target_plans[target]
    qc = export_plan(plan, target).config["quantization_config"]
    resolved: dict[str, Any] = {}
    for name in module_names:
        hits = [
            g["weights"]
            for g in qc["config_groups"].values()
            if any(ct_match(name, t) for t in g["targets"])
        ]
        assert len(hits) <= 1, name
        resolved[name] = hits[0] if hits else None
    expected = {}
    for a in plan.assignments:
        o = a.option
        expected[a.unit] = None
        if not o.is_fp16:
            expected[a.unit] = {
                "num_bits": o.bits,
                "type": "int",
                "symmetric": o.symmetric,
                "strategy": "channel" if o.group_size is None else "group",
                "group_size": o.group_size,
                "dynamic": False,
                "actorder": None,
            }
    _check(resolved, expected, module_names)
    sparse = qc.get("sparsity_config")
    sparse_units = {a.unit for a in plan.assignments if a.option.sparsity > 0}
    if sparse_units:
        matched = {n for n in module_names if any(ct_match(n, t) for t in sparse["targets"])}
        assert matched == sparse_units
    else:
        assert sparse is None


def test_compressed_tensors_real_match_name(target_plans, module_names):
    match = pytest.importorskip("compressed_tensors.utils.match")
    qc = export_plan(target_plans["compressed-tensors"], "compressed-tensors").config
    for group in qc["quantization_config"]["config_groups"].values():
        for target in group["targets"]:
            ours = [n for n in module_names if ct_match(n, target)]
            assert ours == [n for n in module_names if match.match_name(n, target)]
            assert ours


# ------------------------------------------ llama.cpp (lowercased patterns, std::regex_search)
def gguf_tensor_names(n_layers: int = 30) -> list[str]:
    names = ["token_embd.weight", "output_norm.weight", "output.weight"]
    for i in range(n_layers):
        names += [f"blk.{i}.attn_norm.weight", f"blk.{i}.ffn_norm.weight"]
        names += [
            f"blk.{i}.{stem}.weight"
            for stem in (
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            )
        ]
    return names


def test_llamacpp_tensor_types_match_exactly(target_plans, units):
    plan = target_plans["llamacpp"]
    text = export_plan(plan, "llamacpp", units=units).files[""]
    tokens = text.split()  # llama-quantize reads whitespace-separated tokens
    rules = []
    for token in tokens:
        pattern, _, ggml = token.partition("=")
        rules.append((re.compile(pattern.lower()), ggml.upper()))
    shapes = {u.name: u.shape for u in units}
    expected = {
        hf_to_gguf(a.unit): ggml_type_for(a.option, shapes[a.unit][1]) for a in plan.assignments
    }
    resolved = {}
    for tensor in gguf_tensor_names():
        hits = [ggml for regex, ggml in rules if regex.search(tensor)]
        assert len(hits) <= 1, tensor  # disjoint: first-match and last-match releases agree
        resolved[tensor] = hits[0] if hits else None
    _check(resolved, expected, gguf_tensor_names())
    rows = {hf_to_gguf(u.name): u.shape[1] for u in units}
    assert all(rows[t] % 256 == 0 for t, ggml in expected.items() if ggml.endswith("_K"))


# ------------------------------------------- torchao (exact key, then first re: fullmatch)
def torchao_resolve(fqn_to_config: dict[str, Any], fqn: str) -> tuple[bool, Any]:
    if fqn in fqn_to_config:
        return True, fqn_to_config[fqn]
    for key, value in fqn_to_config.items():
        if key.startswith("re:") and re.fullmatch(key[3:], fqn):
            return True, value
    return False, fqn_to_config.get("_default")


def test_torchao_fqn_to_config_matches_exactly(target_plans, module_names):
    plan = target_plans["torchao"]
    mapping = export_plan(plan, "torchao").config["_data"]["fqn_to_config"]
    units = plan.options_by_unit()
    for name in module_names:
        matched, config = torchao_resolve(mapping, name)
        if name not in units:
            assert not matched and config is None, name
            continue
        option = units[name]
        assert matched, name
        if option.is_fp16:
            assert config is None
        else:
            data = config["_data"]
            assert data["weight_dtype"]["_data"] == f"int{option.bits}"
            gran = data["granularity"]
            if option.group_size is None:
                assert gran == {"_type": "PerAxis", "_version": 1, "_data": {"axis": 0}}
            else:
                assert gran["_data"] == {"group_size": option.group_size}
            sym = "SYMMETRIC" if option.symmetric else "ASYMMETRIC"
            assert data["mapping_type"]["_data"] == sym


# ------------------------------- ModelOpt (fnmatch on quantizer names, in order, last wins)
def modelopt_entries(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(pattern, attributes) in application order, from the list or the legacy dict format."""
    quant_cfg = yaml.safe_load(text)["quant_cfg"]
    if isinstance(quant_cfg, dict):  # legacy: "default" first, then keys in order
        first = [("*", quant_cfg["default"])]
        return first + [(k, v) for k, v in quant_cfg.items() if k != "default"]
    out = []
    for entry in quant_cfg:
        attrs = dict(entry.get("cfg") or {})
        if "enable" in entry:
            attrs["enable"] = entry["enable"]
        elif "cfg" in entry:
            attrs["enable"] = True
        out.append((entry["quantizer_name"], attrs))
    return out


@pytest.mark.parametrize("suffix", ["", ".legacy.yaml"])
def test_modelopt_quant_cfg_matches_exactly(suffix, target_plans, linear_names):
    plan = target_plans["modelopt"]
    entries = modelopt_entries(export_plan(plan, "modelopt").files[suffix])
    kinds = ("weight_quantizer", "input_quantizer", "output_quantizer")
    quantizers = [f"{n}.{q}" for n in linear_names for q in kinds]
    state: dict[str, dict[str, Any]] = {q: {} for q in quantizers}
    for pattern, attrs in entries:
        for q in quantizers:
            if fnmatch.fnmatch(q, pattern):
                state[q].update(attrs)
    units = plan.options_by_unit()
    for q, attrs in state.items():
        module, kind = q.rsplit(".", 1)
        option = units.get(module)
        if kind != "weight_quantizer" or option is None or option.is_fp16:
            assert attrs == {"enable": False}, q
            continue
        assert attrs["enable"] is True and attrs["num_bits"] == option.bits, q
        if option.group_size is None:
            assert attrs["axis"] == 0
        else:
            assert attrs["block_sizes"][-1] == option.group_size


# ------------------------------------------------ HQQ (linear tag = name minus indices)
def test_hqq_dynamic_config_matches_exactly(target_plans, linear_names):
    plan = target_plans["hqq"]
    config = export_plan(plan, "hqq").config
    units = plan.options_by_unit()
    for name in linear_names:
        tag = kind_of(name)
        quantized = tag not in config["skip_modules"] and config["dynamic_config"].get(tag)
        option = units.get(name)
        if option is None or option.is_fp16:
            assert not quantized, name
        else:
            assert quantized == {"nbits": option.bits, "group_size": option.group_size}, name
