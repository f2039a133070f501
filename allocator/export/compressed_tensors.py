"""llm-compressor recipe and compressed-tensors ``quantization_config`` (also the vLLM preset).

Units sharing one option form one config group whose only target is an anchored ``re:`` regex
of their exact names; compressed-tensors' ``match_name`` applies ``re.match`` to ``re:`` targets
and string equality to the rest. Units kept in fp16 are in no group, so nothing touches them.
N:M 2:4 sparsity becomes ``sparse-24-bitmask`` (SparseGPT ``mask_structure: "2:4"``),
unstructured sparsity ``sparse-bitmask``; a plan mixing the two has no single sparsity format.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import yaml

from allocator.errors import UnsupportedError
from allocator.export import EXPORTERS
from allocator.export.base import ExportContext, ExportResult, groups_by_option, header_lines
from allocator.patterns import anchored, exact_names_regex
from allocator.schema.option import Option
from allocator.schema.plan import Plan
from allocator.schema.targets import enforce, sparsity_kind


def weight_args(option: Option) -> dict[str, Any]:
    """compressed-tensors QuantizationArgs of a weight-only integer option."""
    per_channel = option.group_size is None
    return {
        "num_bits": option.bits,
        "type": "int",
        "symmetric": option.symmetric,
        "strategy": "channel" if per_channel else "group",
        "group_size": None if per_channel else option.group_size,
        "dynamic": False,
        "actorder": None,
    }


def _config_groups(plan: Plan) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    merged: dict[str, list[str]] = defaultdict(list)
    first: dict[str, Option] = {}
    for option, units in groups_by_option(plan):
        if option.is_fp16:
            continue
        dense = option.model_copy(update={"sparsity": 0.0, "sparsity_pattern": "none", "nm": None})
        merged[dense.key].extend(units)
        first.setdefault(dense.key, dense)
    for i, (key, units) in enumerate(merged.items()):
        groups[f"group_{i}"] = {
            "targets": ["re:" + anchored(exact_names_regex(units))],
            "weights": weight_args(first[key]),
        }
    return groups


def _sparse_units(plan: Plan) -> dict[str, list[str]]:
    sparse: dict[str, list[str]] = defaultdict(list)
    for a in plan.assignments:
        kind = sparsity_kind(a.option)
        if kind != "none":
            sparse[kind if kind == "2:4" else f"{a.option.sparsity:g}"].append(a.unit)
    return dict(sparse)


def _sparsity_config(plan: Plan, sparse: dict[str, list[str]]) -> dict[str, Any] | None:
    if not sparse:
        return None
    structured = "2:4" in sparse
    if structured and len(sparse) > 1:
        raise UnsupportedError(
            "compressed-tensors stores one sparsity format per model; the plan mixes 2:4 with "
            f"unstructured ratios {sorted(k for k in sparse if k != '2:4')}; use one kind"
        )
    units = [u for group in sparse.values() for u in group]
    sparse_numel = sum(a.numel * a.option.sparsity for a in plan.assignments if a.unit in units)
    return {
        "format": "sparse-24-bitmask" if structured else "sparse-bitmask",
        "targets": ["re:" + anchored(exact_names_regex(units))],
        "ignore": [],
        "global_sparsity": sparse_numel / max(plan.total_numel, 1),
        "sparsity_structure": "2:4" if structured else "unstructured",
    }


def _recipe(plan: Plan, groups: dict[str, Any], sparse: dict[str, list[str]]) -> dict[str, Any]:
    recipe: dict[str, Any] = {}
    for i, (kind, units) in enumerate(sorted(sparse.items())):
        modifier = {
            "sparsity": 0.5 if kind == "2:4" else float(kind),
            "mask_structure": "2:4" if kind == "2:4" else "0:0",
            "targets": ["re:" + anchored(exact_names_regex(units))],
        }
        recipe[f"sparsity_stage_{i}"] = {"sparsity_modifiers": {"SparseGPTModifier": modifier}}
    methods = {a.option.method for a in plan.assignments if not a.option.is_fp16}
    modifier_name = "GPTQModifier" if methods == {"gptq"} else "QuantizationModifier"
    if groups:
        recipe["quant_stage"] = {
            "quant_modifiers": {modifier_name: {"ignore": [], "config_groups": groups}}
        }
    return recipe


def build(plan: Plan, target: str, context: ExportContext) -> ExportResult:
    enforce(plan, context.target_rules(target), context.unit_shapes())
    groups = _config_groups(plan)
    sparse = _sparse_units(plan)
    sparsity_config = _sparsity_config(plan, sparse)
    quantization_config: dict[str, Any] = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            name: {**group, "input_activations": None, "output_activations": None}
            for name, group in groups.items()
        },
        "ignore": [],
    }
    if sparsity_config is not None:
        quantization_config["sparsity_config"] = sparsity_config
    recipe = _recipe(plan, groups, sparse)
    n_fp16 = sum(a.option.is_fp16 for a in plan.assignments)
    report = header_lines(
        plan,
        target,
        f"{len(groups)} config groups (one per distinct scheme), {n_fp16} units left in fp16",
        f"sparsity: {sparsity_config['format'] if sparsity_config else 'none'}",
        "recipe: oneshot(model=..., recipe=OUT, dataset=...); quantization_config: the "
        "'quantization_config' entry of config.json",
    )
    files = {
        "": yaml.safe_dump(recipe, sort_keys=False),
        ".quantization_config.json": json.dumps(quantization_config, indent=2) + "\n",
    }
    config = {"recipe": recipe, "quantization_config": quantization_config}
    return ExportResult(target, config, files, report)


@EXPORTERS.register("compressed-tensors")
def export_compressed_tensors(plan: Plan, context: ExportContext) -> ExportResult:
    """llm-compressor recipe (YAML) plus the equivalent compressed-tensors quantization_config."""
    return build(plan, "compressed-tensors", context)


@EXPORTERS.register("vllm")
def export_vllm(plan: Plan, context: ExportContext) -> ExportResult:
    """compressed-tensors export restricted to what vLLM's WNA16 kernels serve."""
    return build(plan, "vllm", context)
