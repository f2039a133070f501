"""Evaluation machinery of the quality benchmark: the shared state, fresh models, and applying a
plan (RTN or sequential GPTQ). Perplexity and KL are the library's (``allocator.evaluate``), in
one pass against the unmodified model or its cached log-probabilities."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from allocator.evaluate import LogProbCache, evaluate
from allocator.models.loader import load_model
from allocator.schema import Constraints, Plan, Unit


@dataclass
class Bench:
    """Shared state: the model spec and device, units, windows, and the reference (the unmodified
    model on the device, or its log-probs cached on disk)."""

    model: str
    device: str
    units: list[Unit]
    eval_ids: torch.Tensor
    calib_ids: torch.Tensor
    quiet: bool
    results: Path  # cached rows
    tables: Path  # cached tables
    reference: Any = None  # nn.Module or LogProbCache
    cache: dict[str, Any] = field(default_factory=dict)

    def constraints(self, budget: float) -> Constraints:
        return Constraints.simple(budget)

    def fresh_model(self, device: str | None = None) -> torch.nn.Module:
        model = load_model(self.model).model
        return model.eval().to(device or self.device)


def cached_reference(model: torch.nn.Module, ids: torch.Tensor, quiet: bool) -> LogProbCache:
    """The unmodified model's log-probs on the evaluation windows (fp16 on disk)."""
    return LogProbCache.build(model, ids, progress=not quiet)


def evaluate_model(model: torch.nn.Module, bench: Bench) -> tuple[float, float]:
    """(perplexity, mean KL(reference || model) per token in nats) in one pass."""
    result = evaluate(model, bench.eval_ids, bench.reference, progress=not bench.quiet)
    assert result.kl is not None
    return result.perplexity, result.kl


def reference_perplexity(bench: Bench, model: torch.nn.Module) -> float:
    """The unmodified model's perplexity on the evaluation windows."""
    return evaluate(model, bench.eval_ids, progress=not bench.quiet).perplexity


def densify(model: torch.nn.Module) -> torch.nn.Module:
    """Replace QuantLinear modules by nn.Linear holding their dequantized weight (for devices
    where the low-bit kernels are not what is measured)."""
    from allocator.quant.quant_linear import QuantLinear

    for name, module in list(model.named_modules()):
        if isinstance(module, QuantLinear):
            weight = module.dequantized_weight(torch.float32)
            bias = getattr(module, "bias", None)
            linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            linear.weight.data = weight
            if bias is not None:
                linear.bias.data = bias.detach().float()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
    return model


@torch.no_grad()
def quantize(bench: Bench, plan: Plan, quantizer: str) -> torch.nn.Module:
    """A fresh model with the plan applied on the CPU (RTN fake-quant, or the executor's
    sequential GPTQ ``apply_plan``), moved to the evaluation device."""
    model = bench.fresh_model("cpu")
    if quantizer == "gptq":
        from allocator.quant.apply import apply_plan

        model = apply_plan(model, plan, bench.calib_ids, method="gptq", progress=not bench.quiet)
        return densify(model).to(bench.device)
    from allocator.quant.compress import compress_weight

    for a in plan.assignments:
        module = model.get_submodule(a.unit)
        module.weight.data = compress_weight(module.weight.data, a.option).to(module.weight.dtype)
    return model.to(bench.device)
