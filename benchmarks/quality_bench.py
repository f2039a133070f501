"""Evaluation machinery of the quality benchmark: the shared state, fresh models, the cached
reference log-probs, perplexity + KL in one pass, and applying a plan (RTN or sequential GPTQ)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import quality_tables as qt
import torch
from tqdm.auto import tqdm

from allocator.models.corpus import default_calibration_text
from allocator.models.loader import load_model
from allocator.models.windows import token_windows
from allocator.schema import Constraints, Plan, Unit

CONFIG = {"model": "smollm2", "device": "cpu"}


@dataclass
class Bench:
    """Shared state: units, windows, the reference (a model on the device, or cached log-probs)."""

    units: list[Unit]
    eval_ids: torch.Tensor
    calib_ids: torch.Tensor
    quiet: bool
    ref_path: Path | None = None
    ref_model: torch.nn.Module | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    def constraints(self, budget: float) -> Constraints:
        return Constraints.simple(budget)


def fresh_model(device: str = "cpu") -> torch.nn.Module:
    model = load_model(CONFIG["model"]).model
    return model.eval().to(device)


@torch.no_grad()
def reference_logprobs(model: torch.nn.Module, ids: torch.Tensor, path: Path, quiet: bool) -> None:
    """Write the unmodified model's log-probs (n, seq, vocab) as fp16 .npy (once)."""
    if path.is_file():
        return
    tmp = path.with_suffix(".tmp.npy")
    vocab = model.config.vocab_size
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(*ids.shape, vocab))
    for i in tqdm(range(ids.shape[0]), desc="reference", disable=quiet):
        logits = model(ids[i : i + 1]).logits[0].float()
        out[i] = torch.log_softmax(logits, -1).to(torch.float16).numpy()
    out.flush()
    del out
    tmp.rename(path)


def _reference(bench: Bench, i: int, ids: torch.Tensor) -> torch.Tensor:
    if bench.ref_model is not None:
        return torch.log_softmax(bench.ref_model(ids).logits[0].float(), -1)
    ref = bench.cache.setdefault("ref", np.load(bench.ref_path, mmap_mode="r"))
    return torch.from_numpy(np.asarray(ref[i])).float().log_softmax(-1)


@torch.no_grad()
def evaluate(model: torch.nn.Module, bench: Bench) -> tuple[float, float]:
    """(perplexity, mean KL(reference || model) per token in nats) in one pass over eval windows."""
    device = next(model.parameters()).device
    nll, kl, count = 0.0, 0.0, 0
    for i in tqdm(range(bench.eval_ids.shape[0]), desc="eval", disable=bench.quiet):
        ids = bench.eval_ids[i : i + 1].to(device)
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        nll -= float(logp[:-1].gather(1, ids[0, 1:, None]).sum())
        ref_logp = _reference(bench, i, ids).to(device)
        kl += float((ref_logp.exp() * (ref_logp - logp)).sum())
        count += ids.shape[1]
    n_pred = bench.eval_ids.shape[0] * (bench.eval_ids.shape[1] - 1)
    return float(np.exp(nll / n_pred)), kl / count


@torch.no_grad()
def reference_perplexity(bench: Bench) -> float:
    """The unmodified model's perplexity from the reference (cached log-probs or the model)."""
    nll = 0.0
    for i in range(bench.eval_ids.shape[0]):
        ids = bench.eval_ids[i : i + 1]
        if bench.ref_model is not None:
            ids = ids.to(next(bench.ref_model.parameters()).device)
        logp = _reference(bench, i, ids)
        nll -= float(logp[:-1].gather(1, ids[0, 1:, None].to(logp.device)).sum())
    return float(np.exp(nll / (bench.eval_ids.shape[0] * (bench.eval_ids.shape[1] - 1))))


def states(bench: Bench) -> qt.CleanStates:
    """Clean hidden states on 8 calibration windows x 256 tokens (for kl/block_error/LIM)."""
    if "states" not in bench.cache:
        model = fresh_model(CONFIG["device"])
        ids = token_windows(load_model(CONFIG["model"]).tokenizer, default_calibration_text(),
                            seq_len=256, n_windows=8, seed=0)  # fmt: skip
        bench.cache["states"] = qt.CleanStates(model, ids)
    return bench.cache["states"]


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
    model = fresh_model("cpu")
    if quantizer == "gptq":
        from allocator.quant.apply import apply_plan

        model = apply_plan(model, plan, bench.calib_ids, method="gptq", progress=not bench.quiet)
        return densify(model).to(CONFIG["device"])
    from allocator.quant.compress import compress_weight

    for a in plan.assignments:
        module = model.get_submodule(a.unit)
        module.weight.data = compress_weight(module.weight.data, a.option).to(module.weight.dtype)
    return model.to(CONFIG["device"])
