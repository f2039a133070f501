"""What each export target can express, checks of a plan against it, and constraint presets.

The one owner of target rules: the solver folds them into constraints (``target:``, see
``allocator.solve.targets``) and every exporter checks its plan with them (``allocator.export``).

``check_plan`` lists every assignment that does not fit (unit, option, what is allowed);
``constraints_for_target`` gives the solver the restrictions that make plans fit from the start.
Sources: GPTQModel ``QuantizeConfig`` (bits in {2,3,4,8}, ``group_size=-1`` per channel),
AutoRound export formats (2/3/4/8 bits), compressed-tensors ``QuantizationArgs`` and vLLM's
``compressed-tensors`` W4A16/W8A16 schemes (fused ``qkv_proj`` / ``gate_up_proj`` layers take one
scheme), ModelOpt INT4 block / INT8 per-channel configs (symmetric max calibration), HQQ in
transformers (``nbits`` in {1,2,3,4,8}, affine with zero point), torchao ``IntxWeightOnlyConfig``
(``torch.int1``-``torch.int8``), llama.cpp ggml types.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from allocator.errors import InputError, UnsupportedError
from allocator.patterns import exact_name_patterns
from allocator.schema.option import Option
from allocator.schema.plan import Plan
from allocator.schema.size import (
    COMPRESSED_TENSORS_SIZE_MODEL,
    DEFAULT_SIZE_MODEL,
    GGML_SIZE_MODEL,
    GPTQ_SIZE_MODEL,
    TORCHAO_SIZE_MODEL,
    SizeModel,
)
from allocator.schema.ties import preset_groups, preset_key
from allocator.schema.unit import Unit

ANY_GROUP = "any"


@dataclass(frozen=True)
class TargetRules:
    """An export target and what it accepts: the registry entry that owns the target's metadata
    (name, aliases, size model, option defaults, serving variants, output file suffix).

    ``groups[bits]`` lists allowed group sizes (None = per channel); a bits value missing from
    ``groups`` takes ``groups[0]`` (the default row). ``variants`` are opt-in serving rules
    (``gptqmodel+vllm``): field overrides applied on top of the base rules."""

    name: str
    bits: frozenset[int]
    groups: Mapping[int, frozenset[int | None] | str] = field(default_factory=dict)
    symmetric: bool | None = None  # None: either; True: symmetric only; False: zero point only
    symmetric_bits: frozenset[int] = frozenset()  # widths that must be symmetric
    sparsity: frozenset[str] = frozenset({"none"})  # "none", "2:4", "unstructured"
    allow_fp16: bool = True
    tie_presets: tuple[str, ...] = ()
    per_kind_uniform: bool = False
    group_divides: bool = False  # group size must divide in_features (no ragged last group)
    why: str = ""
    aliases: tuple[str, ...] = ()
    size_model: SizeModel = DEFAULT_SIZE_MODEL  # how the target stores a weight (sizes)
    option_defaults: Mapping[str, Any] = field(default_factory=dict)  # e.g. symmetric for GPTQ
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    suffix: str = ".json"  # the main output file's usual extension
    description: str = ""

    def allowed_groups(self, bits: int) -> frozenset[int | None] | str:
        return self.groups.get(bits, self.groups.get(0, ANY_GROUP))

    def option_problem(self, option: Option) -> str | None:
        """Why this option does not fit the target, or None when it fits."""
        if option.is_fp16:
            return None if self.allow_fp16 else "fp16 units cannot be kept unquantized"
        if option.bits not in self.bits:
            return f"bits={option.bits} not in {sorted(self.bits)}"
        groups = self.allowed_groups(option.bits)
        if groups != ANY_GROUP and option.group_size not in groups:
            shown = sorted("per-channel" if g is None else str(g) for g in groups)
            group = "per-channel" if option.group_size is None else option.group_size
            return f"group size {group} not in {shown} for {option.bits}-bit"
        if self.symmetric is True and not option.symmetric:
            return "asymmetric (zero point) not supported; use a -sym option"
        if self.symmetric is False and option.symmetric:
            return "symmetric not supported (always stores a zero point)"
        if option.bits in self.symmetric_bits and not option.symmetric:
            return f"{option.bits}-bit must be symmetric ({self.name}: vLLM serves GPTQ-format W8 symmetric only)"
        pattern = sparsity_kind(option)
        if pattern not in self.sparsity:
            return f"sparsity {pattern} not supported (allowed: {sorted(self.sparsity)})"
        return None


def sparsity_kind(option: Option) -> str:
    if option.sparsity_pattern == "nm" and option.nm is not None:
        return f"{option.nm[0]}:{option.nm[1]}"
    return "unstructured" if option.sparsity > 0 else "none"


_GROUPS_STD: frozenset[int | None] = frozenset({None, 32, 64, 128})
_VLLM_WHY = "vLLM fuses q/k/v into qkv_proj and gate/up into gate_up_proj; each fused layer takes one scheme"
# Serving on vLLM, opt-in as ``<target>+vllm``: fused q/k/v and gate/up shards share a scheme,
# and GPTQ-format 8-bit weights must be symmetric.
_VLLM_GPTQ = {"symmetric_bits": frozenset({8}), "tie_presets": ("qkv", "gate_up")}

TARGETS: dict[str, TargetRules] = {
    "gptqmodel": TargetRules(
        "gptqmodel",
        group_divides=True,
        bits=frozenset({2, 3, 4, 8}),
        groups={0: frozenset({None, 16, 32, 64, 128})},
        why="GPTQModel QuantizeConfig bits choices [2,3,4,8]",
        size_model=GPTQ_SIZE_MODEL,
        option_defaults={"symmetric": True},
        variants={"vllm": {**_VLLM_GPTQ, "why": _VLLM_WHY}},
        description="GPTQModel QuantizeConfig kwargs with a per-module dynamic dict",
    ),
    "autoround": TargetRules(
        "autoround",
        group_divides=True,
        bits=frozenset({2, 3, 4, 8}),
        groups={0: _GROUPS_STD},
        symmetric_bits=frozenset({8}),  # AutoRound itself refuses asymmetric W8 in this format
        why="AutoRound's auto_round/auto_gptq formats pack 2/3/4/8 bits, 8-bit symmetric only",
        size_model=GPTQ_SIZE_MODEL,
        option_defaults={"symmetric": True},
        variants={"vllm": {**_VLLM_GPTQ, "why": _VLLM_WHY}},
        description="AutoRound arguments with an exact-name layer_config",
    ),
    "compressed-tensors": TargetRules(
        "compressed-tensors",
        group_divides=True,
        bits=frozenset(range(2, 9)),
        groups={0: _GROUPS_STD},
        sparsity=frozenset({"none", "2:4", "unstructured"}),
        why="pack-quantized int weights; sparse-24-bitmask / sparse-bitmask",
        aliases=("llm-compressor",),
        size_model=COMPRESSED_TENSORS_SIZE_MODEL,
        variants={"vllm": {"tie_presets": ("qkv", "gate_up"), "why": _VLLM_WHY}},
        suffix=".yaml",
        description="llm-compressor recipe + compressed-tensors quantization_config",
    ),
    "vllm": TargetRules(
        "vllm",
        group_divides=True,
        bits=frozenset({4, 8}),
        groups={0: _GROUPS_STD},
        tie_presets=("qkv", "gate_up"),
        why="vLLM compressed-tensors WNA16 kernels take 4 or 8 bits; " + _VLLM_WHY,
        size_model=COMPRESSED_TENSORS_SIZE_MODEL,
        suffix=".yaml",
        description="compressed-tensors restricted to what vLLM's WNA16 kernels serve",
    ),
    "llamacpp": TargetRules(
        "llamacpp",
        bits=frozenset(range(2, 9)),
        groups={0: ANY_GROUP},
        why="ggml types fix their own block size; the group size of the plan is not kept",
        aliases=("llama.cpp", "gguf"),
        size_model=GGML_SIZE_MODEL,
        suffix=".txt",
        description="llama-quantize --tensor-type-file",
    ),
    "torchao": TargetRules(
        "torchao",
        group_divides=True,
        bits=frozenset(range(1, 9)),
        groups={0: ANY_GROUP},
        why="IntxWeightOnlyConfig takes torch.int1..int8, PerGroup or PerAxis(0)",
        size_model=TORCHAO_SIZE_MODEL,
        description="serialized FqnToConfig of IntxWeightOnlyConfig",
    ),
    "modelopt": TargetRules(
        "modelopt",
        bits=frozenset({4, 8}),
        groups={4: frozenset({64, 128}), 8: frozenset({None})},
        symmetric=True,
        tie_presets=("qkv", "gate_up"),
        why="ModelOpt/TensorRT-LLM: INT4 blocks of 64/128 or INT8 per channel, symmetric; "
        "TensorRT-LLM fuses qkv and gate/up",
        option_defaults={"symmetric": True},
        suffix=".yaml",
        description="mtq.quantize quant_cfg (list format, plus the legacy dict format)",
    ),
    "hqq": TargetRules(
        "hqq",
        bits=frozenset({1, 2, 3, 4, 8}),
        groups={0: frozenset({32, 64, 128})},
        symmetric=False,
        per_kind_uniform=True,
        why="transformers HqqConfig dynamic_config is keyed by projection type only",
        description="transformers HqqConfig(dynamic_config=..., skip_modules=...)",
    ),
}
ALIASES = {alias: name for name, rules in TARGETS.items() for alias in rules.aliases}


def get_rules(target: str) -> TargetRules:
    """A target's rules by name or alias; ``name+variant`` (``gptqmodel+vllm``) adds the
    variant's opt-in serving rules."""
    base, plus, variant = target.partition("+")
    name = ALIASES.get(base, base)
    if name not in TARGETS:
        known = ", ".join(sorted([*TARGETS, *ALIASES]))
        raise UnsupportedError(f"target {target!r} is unknown; choose one of: {known}")
    rules = TARGETS[name]
    if not plus:
        return rules
    if variant not in rules.variants:
        offered = ", ".join(f"{name}+{v}" for v in rules.variants) or "none"
        raise UnsupportedError(
            f"target {target!r}: {name} has no variant {variant!r}; variants: {offered}"
        )
    extra = dict(rules.variants[variant])
    why = f"{rules.why}; {extra.pop('why', variant)}"
    return dataclasses.replace(rules, name=f"{name}+{variant}", why=why, variants={}, **extra)


def size_model_for(target: str | None) -> SizeModel:
    """How ``target`` stores a weight (the default size model for None); an unknown target is an
    InputError naming the known ones."""
    if target is None:
        return DEFAULT_SIZE_MODEL
    try:
        return get_rules(target).size_model
    except UnsupportedError as exc:
        raise InputError(str(exc)) from None


def kind_of(unit: str) -> str:
    """Projection type as HQQ's ``name_to_linear_tag`` sees it: ``self_attn.q_proj``."""
    return ".".join(p for p in unit.split(".") if p not in ("model", "layers") and not p.isdigit())


def group_problem(rules: TargetRules, option: Option, in_features: int | None) -> str | None:
    """Why ``option``'s group size cannot serve a weight with ``in_features`` inputs, or None."""
    group = option.group_size
    if not rules.group_divides or option.is_fp16 or group is None or in_features is None:
        return None
    if in_features % group:
        return f"group size {group} does not divide the {in_features} inputs (no ragged groups)"
    return None


def check_plan(
    plan: Plan, rules: TargetRules, shapes: Mapping[str, tuple[int, int]] | None = None
) -> list[str]:
    """Every way the plan does not fit the target, one line each (empty when it fits).

    ``shapes`` (unit -> (out, in)) enables the checks that depend on a weight's size.
    """
    problems = []
    options = plan.options_by_unit()
    shapes = shapes or {}
    for unit, option in options.items():
        shape = shapes.get(unit)
        why = rules.option_problem(option) or group_problem(rules, option, shape and shape[1])
        if why:
            problems.append(f"{unit}: {option.key}: {why}")
    for preset in rules.tie_presets:
        groups = preset_groups(list(options), [preset])
        for units in sorted(groups, key=lambda members: str(preset_key(members[0], preset))):
            keys = {options[u].key for u in units}
            if len(keys) > 1:
                listed = ", ".join(f"{u.rsplit('.', 1)[-1]}={options[u].key}" for u in units)
                problems.append(
                    f"{preset_key(units[0], preset)}: fused shards need one scheme, got {listed}"
                )
    if rules.per_kind_uniform:
        by_kind: dict[str, set[str]] = defaultdict(set)
        for unit, option in options.items():
            by_kind[kind_of(unit)].add(option.key)
        for kind, keys in sorted(by_kind.items()):
            if len(keys) > 1:
                problems.append(
                    f"{kind}: {rules.name} takes one setting per projection type, the plan uses "
                    f"{sorted(keys)}; solve with a rule tying every {kind} unit"
                )
    return problems


def enforce(
    plan: Plan,
    rules: TargetRules,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    limit: int = 20,
) -> None:
    """Raise UnsupportedError listing what does not fit (at most ``limit`` lines)."""
    problems = check_plan(plan, rules, shapes)
    if not problems:
        return
    shown = "\n  ".join(problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    raise UnsupportedError(
        f"plan does not fit target {rules.name!r} ({rules.why}); {len(problems)} problem(s):\n  "
        f"{shown}{more}\nre-solve with 'target: {rules.name}' in the constraints to get a plan that fits"
    )


def option_fits(target: str, option: Option) -> bool:
    return get_rules(target).option_problem(option) is None


def constraints_for_target(
    target: str,
    options: Iterable[Option | str] | None = None,
    units: Iterable[Unit | str] | None = None,
) -> dict[str, Any]:
    """Extra restrictions that make solved plans fit ``target``, as a Constraints-compatible dict.

    Returns ``{"allowed": {...OptionFilter fields...}, "tie_presets": [...]}``. With ``options``
    (a table's option list) ``allowed`` is the exact list of fitting keys; without it, a field
    filter (bits, group sizes, sparsity) that may still admit options ``option_fits`` rejects
    (symmetry, group sizes that depend on bits). Targets that take one setting per projection
    type (HQQ) add ``"uniform_per_kind": True`` and, given the unit names, ``"ties"``: one
    Constraints tie group (an anchored pattern) per projection type. For llama.cpp, units with
    shapes add ``"rules"``: tensors whose rows are not a multiple of 256 have no 2/3/6-bit ggml
    type (llama-quantize would fall back to Q4_0/Q8_0), so they may use only 4, 5, 8 bits or fp16.
    """
    rules = get_rules(target)
    unit_list = list(units or ())
    names = [u.name if isinstance(u, Unit) else u for u in unit_list]
    result: dict[str, Any] = {"tie_presets": list(rules.tie_presets)}
    options_list = None if options is None else [Option.parse(o) for o in options]
    if options_list is not None:
        parsed = options_list
        result["allowed"] = {"keys": [o.key for o in parsed if rules.option_problem(o) is None]}
    else:
        bits = sorted(rules.bits | ({16} if rules.allow_fp16 else set()))
        allowed: dict[str, Any] = {"bits": bits}
        groups: set[int | None] = set()
        any_group = False
        for b in rules.bits:
            g = rules.allowed_groups(b)
            if isinstance(g, str):  # ANY_GROUP
                any_group = True
            else:
                groups |= set(g)
        if not any_group:
            allowed["group_size"] = sorted(groups, key=lambda g: -1 if g is None else g)
        if "unstructured" not in rules.sparsity:  # unstructured admits any ratio
            allowed["sparsity"] = sorted({_sparsity_value(s) for s in rules.sparsity})
        result["allowed"] = allowed
    if rules.per_kind_uniform:
        result["uniform_per_kind"] = True
        if names:
            kinds = sorted({kind_of(u) for u in names})
            result["ties"] = [[rf"(^|\.){re.escape(k)}$"] for k in kinds]
    shaped = [u for u in unit_list if isinstance(u, Unit) and u.shape is not None]
    unit_rules = []
    misaligned = [u.name for u in shaped if u.shape is not None and u.shape[1] % 256]
    if rules.name == "llamacpp" and misaligned:
        for pattern in exact_name_patterns(misaligned):
            unit_rules.append({"pattern": pattern, "allow": {"bits": [4, 5, 8, 16]}})
    if rules.group_divides and shaped:
        unit_rules.extend(_group_rules(rules, shaped, options_list))
    if unit_rules:
        result["rules"] = unit_rules
    return result


def _group_rules(
    rules: TargetRules, units: Sequence[Unit], options: list[Option] | None
) -> list[dict[str, Any]]:
    """Per input size, a rule keeping only group sizes that divide it."""
    if options is not None:
        candidates = {o.group_size for o in options if not o.is_fp16}
    else:
        candidates = set()
        for b in rules.bits:
            groups = rules.allowed_groups(b)
            candidates |= set() if isinstance(groups, str) else set(groups)
    by_inputs: dict[int, list[str]] = defaultdict(list)
    for u in units:
        assert u.shape is not None
        by_inputs[u.shape[1]].append(u.name)
    out = []
    for inputs, names in sorted(by_inputs.items()):
        keep = sorted((g for g in candidates if g is None or inputs % g == 0), key=lambda g: g or 0)
        if len(keep) < len(candidates):
            for pattern in exact_name_patterns(names):
                out.append({"pattern": pattern, "allow": {"group_size": keep}})
    return out


def _sparsity_value(kind: str) -> float:
    if kind == "none":
        return 0.0
    n, m = (int(x) for x in kind.split(":"))
    return 1 - n / m


def unit_names(plan: Plan) -> Sequence[str]:
    return [a.unit for a in plan.assignments]
