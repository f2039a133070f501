"""llama.cpp: a ``--tensor-type-file`` for ``llama-quantize`` (``pattern=type`` tokens).

llama-quantize lowercases each pattern, then tests tensors with ``std::regex_search`` (the first
matching pattern wins in current releases, the last in older ones); patterns here are anchored
and disjoint, so the order never matters. Each option maps to the ggml type of its bit width
(K-quants: Q2_K 2.625, Q3_K 3.4375, Q4_K 4.5, Q5_K 5.5, Q6_K 6.5625 bits per weight with their
256-weight super-blocks; Q8_0 8.5). When a tensor's row length is not a multiple of 256 (SmolLM2's
576), llama-quantize would silently fall back; we pick the 32-block type ourselves (Q4_0, Q5_0,
Q8_0) and report the size this costs. The plan's group size and symmetry are not kept: ggml types
fix their own blocks.
"""

from __future__ import annotations

from collections import defaultdict

from allocator.export import EXPORTERS
from allocator.export.base import ExportContext, ExportResult, header_lines
from allocator.models.gguf_names import hf_to_gguf
from allocator.patterns import anchored, exact_names_regex
from allocator.schema.option import Option
from allocator.schema.plan import Plan
from allocator.schema.targets import enforce, get_rules

# ggml type -> (bits per weight, weights per block); bpw = 8 * block bytes / block weights
GGML_TYPES: dict[str, tuple[float, int]] = {
    "Q2_K": (2.625, 256),
    "Q3_K": (3.4375, 256),
    "Q4_K": (4.5, 256),
    "Q5_K": (5.5, 256),
    "Q6_K": (6.5625, 256),
    "Q4_0": (4.5, 32),
    "Q4_1": (5.0, 32),
    "Q5_0": (5.5, 32),
    "Q5_1": (6.0, 32),
    "Q8_0": (8.5, 32),
    "IQ4_NL": (4.5, 32),
    "IQ4_XS": (4.25, 256),
    "IQ3_S": (3.4375, 256),
    "IQ3_XXS": (3.0625, 256),
    "IQ2_S": (2.5625, 256),
    "IQ2_XS": (2.3125, 256),
    "IQ2_XXS": (2.0625, 256),
    "F16": (16.0, 1),
}
# Bit width -> ggml types in order of preference: the K-quant of that width, then the smallest
# 32-block type with at least that many bits (IQ types need an imatrix, so none is chosen here).
PREFERENCE: dict[int, tuple[str, ...]] = {
    2: ("Q2_K", "Q4_0"),
    3: ("Q3_K", "Q4_0"),
    4: ("Q4_K", "Q4_0"),
    5: ("Q5_K", "Q5_0"),
    6: ("Q6_K", "Q8_0"),
    7: ("Q8_0",),
    8: ("Q8_0",),
    16: ("F16",),
}


def ggml_type_for(option: Option, in_features: int | None) -> str:
    """The ggml type for an option on a tensor whose rows hold ``in_features`` weights."""
    for name in PREFERENCE[option.bits]:
        block = GGML_TYPES[name][1]
        if in_features is None or in_features % block == 0:
            return name
    return "F16"


@EXPORTERS.register("llamacpp")
def export_llamacpp(plan: Plan, context: ExportContext) -> ExportResult:
    """Tensor-type file: one anchored pattern per ggml type, listing exact GGUF tensor names."""
    enforce(plan, get_rules("llamacpp"), context.unit_shapes())
    shapes = context.unit_shapes()
    by_type: dict[str, list[str]] = defaultdict(list)
    mapping: dict[tuple[str, str], list[int]] = defaultdict(list)
    ggml_bits = 0.0
    for a in plan.assignments:
        shape = shapes.get(a.unit)
        ggml = ggml_type_for(a.option, shape[1] if shape else None)
        by_type[ggml].append(hf_to_gguf(a.unit, context.model_type))
        mapping[(a.option.key, ggml)].append(a.numel)
        ggml_bits += a.numel * GGML_TYPES[ggml][0]
    lines = [
        f"{anchored(exact_names_regex(names))}={ggml.lower()}" for ggml, names in by_type.items()
    ]
    # overrides apply only under a quantized base ftype, so F16 is never the base
    quantized = [t for t in by_type if t != "F16"]
    base = max(quantized, key=lambda t: len(by_type[t])) if quantized else "Q8_0"
    report = header_lines(plan, "llamacpp")
    for (key, ggml), numels in sorted(mapping.items()):
        report.append(
            f"  {key:>16} -> {ggml:<6} ({GGML_TYPES[ggml][0]:.4f} bpw) on {len(numels)} tensors, "
            f"{sum(numels)} weights"
        )
    report.append(
        f"size: planned {plan.size_bits / 8 / 2**20:.3f} MiB ({plan.avg_bits:.4f} bpw) -> ggml "
        f"{ggml_bits / 8 / 2**20:.3f} MiB ({ggml_bits / max(plan.total_numel, 1):.4f} bpw), "
        f"{ggml_bits / max(plan.size_bits, 1e-9):.3f}x"
    )
    if not shapes:
        report.append("row lengths unknown (no units given): K-quant block fit not checked")
    report.append(
        f"use: llama-quantize --tensor-type-file OUT model-f16.gguf out.gguf {base} "
        "(token_embd/output follow the base type's own rules)"
    )
    text = "\n".join(lines) + "\n"
    config = {"tensor_types": lines, "base_type": base, "ggml_bits": ggml_bits}
    return ExportResult("llamacpp", config, {"": text}, report)
