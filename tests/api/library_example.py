import allocator
from allocator import Budget, Constraints, SensitivityTable, UnitRule

# Your library's numbers: loss increase (KL, nats) per layer and (bits, group_size), and shapes.
losses = {
    "model.layers.0.self_attn.q_proj": {(4, 64): 0.010, (3, 64): 0.041, (2, 64): 0.200},
    "model.layers.0.mlp.down_proj": {(4, 64): 0.022, (3, 64): 0.090, (2, 64): 0.610},
    "lm_head": {(8, 64): 0.001, (4, 64): 0.150},
}
shapes = {
    "model.layers.0.self_attn.q_proj": (576, 576),
    "model.layers.0.mlp.down_proj": (576, 1536),
    "lm_head": (4096, 576),
}
table = SensitivityTable.from_losses(losses, shapes, symmetric=True)
constraints = Constraints(
    budget=Budget(avg_bits=4.25),  # GPTQ's real size: packed zeros, fp16 scales, g_idx
    target="gptqmodel",  # "gptqmodel+vllm" adds vLLM's serving rules
    rules=[UnitRule(pattern=r"\.down_proj$", min_bits=3)],
)
try:
    plan = allocator.solve(table, constraints)
except allocator.InfeasibleError as exc:
    raise SystemExit(f"budget too small: at least {exc.min_size_bits} bits") from exc
bits: dict[str, int] = {a.unit: a.option.bits for a in plan.assignments}
print(plan.status, round(plan.avg_bits, 3), plan.predicted_loss, plan.gap, bits)
result = allocator.export_plan(plan, "gptqmodel", units=table.units)
quantize_config: dict[str, object] = result.config  # QuantizeConfig(**quantize_config)
