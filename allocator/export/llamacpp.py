"""llama.cpp: a ``--tensor-type-file`` for ``llama-quantize`` (``pattern=type`` tokens).

llama-quantize lowercases each pattern, then tests tensors with ``std::regex_search`` (the first
matching pattern wins in current releases, the last in older ones); patterns here are anchored
and disjoint, so the order never matters. Each option maps to the ggml type of its bit width
(K-quants: Q2_K 2.625, Q3_K 3.4375, Q4_K 4.5, Q5_K 5.5, Q6_K 6.5625 bits per weight with their
256-weight super-blocks; Q8_0 8.5). When a tensor's row length is not a multiple of 256 (SmolLM2's
576), llama-quantize would silently fall back; we pick the 32-block type ourselves (Q4_1/Q5_1 for
asymmetric options, which store a minimum per block like a zero point; Q4_0/Q5_0 for symmetric
ones; Q8_0) and report the size this costs. The plan's group size is not kept: ggml types fix
their own blocks.
"""

from __future__ import annotations

from collections import defaultdict

from allocator.export import EXPORTERS
from allocator.export.base import ExportContext, ExportResult, header_lines
from allocator.models.gguf_names import hf_to_gguf
from allocator.patterns import anchored, exact_names_regex
from allocator.schema.plan import Plan
from allocator.schema.size import GGML_TYPES, ggml_type_for
from allocator.schema.targets import enforce


@EXPORTERS.register("llamacpp")
def export_llamacpp(plan: Plan, context: ExportContext) -> ExportResult:
    """Tensor-type file: one anchored pattern per ggml type, listing exact GGUF tensor names."""
    enforce(plan, context.target_rules("llamacpp"), context.unit_shapes())
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
