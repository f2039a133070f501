"""Sensitivity tables the quality benchmark measures itself, on any device.

- ``kl``: mean KL(clean || model) per token when only one unit is compressed (RTN), running
  blocks l..end from cached clean hidden states (Hubara et al.'s calibration-loss table);
- ``fisher``: ``1/2 sum F_ij dW_ij^2`` with F the empirical Fisher diagonal;
- ``hutchinson`` (HAWQ-V3): ``Tr(H_u) / n_u * ||dW||^2``, the trace of the loss Hessian block of
  unit u estimated with Rademacher vectors and Hessian-vector products from central
  differences of gradients;
- ``block_error`` (ExLlamaV2-style): relative error of the block's update
  ``||out_q - out|| / ||out - in||`` when only that unit is compressed;
- LIM scores: mean ``1 - cos(block input, block output)``.
Compressed weights come from ``allocator.quant.compress.compress_weight`` on the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from tqdm.auto import tqdm

from allocator.profile.capture import embed_inputs, find_backbone, run_block
from allocator.quant.compress import compress_weight
from allocator.schema import Option, SensitivityTable, Unit


def compressed(weight: torch.Tensor, option: Option) -> torch.Tensor:
    return compress_weight(weight.detach().cpu(), option).to(weight.device, weight.dtype)


class CleanStates:
    """Clean hidden states entering every block (and the final one) plus clean log-probs."""

    @torch.no_grad()
    def __init__(self, model: torch.nn.Module, ids: torch.Tensor, batch_size: int = 4) -> None:
        self.model = model
        self.backbone = find_backbone(model)
        self.states = [embed_inputs(self.backbone, ids, batch_size)]
        for block in self.backbone.layers:
            self.states.append(run_block(block, self.states[-1]))
        self.clean = [self.log_probs(h) for h in self.states[-1].hidden]
        self.n_tokens = sum(h.shape[0] * h.shape[1] for h in self.states[-1].hidden)

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.backbone.head(self.backbone.norm(hidden)).float(), -1)

    @torch.no_grad()
    def kl_from(self, first: int) -> float:
        """Mean KL per token of the current weights, recomputing blocks ``first``..end."""
        hidden = self.states[first]
        for block in self.backbone.layers[first:]:
            hidden = run_block(block, hidden)
        total = 0.0
        for h, clean in zip(hidden.hidden, self.clean, strict=True):
            total += float((clean.exp() * (clean - self.log_probs(h))).sum())
        return max(total / self.n_tokens, 0.0)

    @torch.no_grad()
    def measure_choice(self, units: Mapping[str, Unit], choice: Mapping[str, Option]) -> float:
        """KL with every unit of ``choice`` compressed at once (for closed-loop refinement)."""
        saved = {}
        try:
            for name, option in choice.items():
                module = self.model.get_submodule(name)
                saved[name] = module.weight.data
                module.weight.data = compressed(saved[name], option)
            first = min((units[n].layer or 0) for n in choice) if choice else 0
            return self.kl_from(first)
        finally:
            for name, weight in saved.items():
                self.model.get_submodule(name).weight.data = weight

    def lim(self) -> dict[int, float]:
        out = {}
        for index in range(len(self.backbone.layers)):
            gaps = [
                (1 - torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)).mean()
                for x, y in zip(
                    self.states[index].hidden, self.states[index + 1].hidden, strict=True
                )
            ]
            out[index] = float(torch.stack(gaps).mean())
        return out


def _table(units: list[Unit], options: list[Option], losses: dict, estimator: str, **settings):
    clipped = {u: {k: max(float(v), 0.0) for k, v in row.items()} for u, row in losses.items()}
    return SensitivityTable(units=units, options=options, losses=clipped,
                            provenance={"estimator": estimator, "settings": settings})  # fmt: skip


@torch.no_grad()
def kl_table(states: CleanStates, units: list[Unit], options: list[Option], quiet: bool):
    losses = {}
    for unit in tqdm(units, desc="kl table", disable=quiet):
        module = states.model.get_submodule(unit.name)
        original = module.weight.data
        row = {}
        try:
            for option in options:
                module.weight.data = compressed(original, option)
                row[option.key] = states.kl_from(unit.layer or 0)
        finally:
            module.weight.data = original
        losses[unit.name] = row
    return _table(units, options, losses, "kl(benchmark)", n_tokens=states.n_tokens)


@torch.no_grad()
def block_error_table(states: CleanStates, units: list[Unit], options: list[Option], quiet: bool):
    losses = {}
    layers = states.backbone.layers
    for unit in tqdm(units, desc="block_error table", disable=quiet):
        index = unit.layer or 0
        inputs, clean = states.states[index], states.states[index + 1]
        update = sum(
            float((y - x).square().sum()) for x, y in zip(inputs.hidden, clean.hidden, strict=True)
        )
        module = states.model.get_submodule(unit.name)
        original = module.weight.data
        row = {}
        try:
            for option in options:
                module.weight.data = compressed(original, option)
                out = run_block(layers[index], inputs)
                err = sum(
                    float((a - b).square().sum())
                    for a, b in zip(out.hidden, clean.hidden, strict=True)
                )
                row[option.key] = (err / max(update, 1e-20)) ** 0.5
        finally:
            module.weight.data = original
        losses[unit.name] = row
    return _table(units, options, losses, "block_error(benchmark)")


def _gradients(model: torch.nn.Module, ids: torch.Tensor, params: dict) -> dict:
    model.zero_grad(set_to_none=True)
    for i in range(ids.shape[0]):
        loss = model(ids[i : i + 1], labels=ids[i : i + 1]).loss / ids.shape[0]
        loss.backward()
    return {n: p.grad.detach().clone() for n, p in params.items()}


def _params(model: torch.nn.Module, units: list[Unit]) -> dict:
    model.requires_grad_(False)
    params = {u.name: model.get_submodule(u.name).weight for u in units}
    for p in params.values():
        p.requires_grad_(True)
    return params


def fisher_table(model, ids, units: list[Unit], options: list[Option], quiet: bool):
    params = _params(model, units)
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in tqdm(range(ids.shape[0]), desc="fisher", disable=quiet):
        grads = _gradients(model, ids[i : i + 1], params)
        for n in fisher:
            fisher[n] += grads[n].square() / ids.shape[0]
    model.requires_grad_(False)
    losses = {}
    with torch.no_grad():
        for u in units:
            w = params[u.name].detach()
            losses[u.name] = {
                o.key: 0.5 * float((fisher[u.name] * (compressed(w, o) - w).square()).sum())
                for o in options
            }
    return _table(units, options, losses, "fisher(benchmark)", windows=int(ids.shape[0]))


def hutchinson_table(model, ids, units: list[Unit], options: list[Option], quiet: bool,
                     samples: int = 8, eps: float = 5e-4, seed: int = 0):  # fmt: skip
    params = _params(model, units)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    trace = {n: 0.0 for n in params}
    for _ in tqdm(range(samples), desc="hutchinson", disable=quiet):
        vs = {
            n: (torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p)
            for n, p in params.items()
        }
        with torch.no_grad():
            for n, p in params.items():
                p.add_(vs[n], alpha=eps)
        plus = _gradients(model, ids, params)
        with torch.no_grad():
            for n, p in params.items():
                p.add_(vs[n], alpha=-2 * eps)
        minus = _gradients(model, ids, params)
        with torch.no_grad():
            for n, p in params.items():
                p.add_(vs[n], alpha=eps)
                trace[n] += float((vs[n] * (plus[n] - minus[n])).sum()) / (2 * eps * samples)
    model.requires_grad_(False)
    losses = {}
    with torch.no_grad():
        for u in units:
            w = params[u.name].detach()
            mean_trace = max(trace[u.name], 0.0) / u.numel
            losses[u.name] = {
                o.key: mean_trace * float((compressed(w, o) - w).square().sum()) for o in options
            }
    return _table(units, options, losses, "hutchinson(benchmark)", samples=samples, eps=eps,
                  traces=trace)  # fmt: skip
