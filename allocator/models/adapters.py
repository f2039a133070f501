"""Put a model's weights in the one form the quantization code handles: ``nn.Linear`` (out, in).

Two layouts in transformers models are not ``nn.Linear``:

- GPT-2's ``Conv1D`` (also OpenAI GPT, GPT-2 derivatives): ``y = x W + b`` with W stored
  transposed, (in, out). ``prepare_model`` replaces each by an ``nn.Linear`` holding ``W^T``,
  the same function, so GPTQ, packing, QuantLinear and checkpoints all see (out, in);
- fused MoE experts (transformers 5 stores every expert of a block as one 3-D parameter per
  projection: ``gate_up_proj`` (E, 2I, H) and ``down_proj`` (E, H, I), e.g. Mixtral, Qwen-MoE):
  replaced by ``LinearExperts``, one ``nn.Linear`` pair per expert
  (``...mlp.experts.{e}.gate_up_proj`` and ``...mlp.experts.{e}.down_proj``) computing what the
  eager fused forward computes. Each expert projection is then a unit, and the ``moe_experts``
  tie preset (same projection of every expert in one block) applies to them. Routers
  (``mlp.gate``) are never units. Fused layouts other than the concatenated, non-transposed,
  bias-free gate/up one are refused with the layout found.

The replacements keep module paths (Conv1D) or add the expert index under the experts module,
so ``find_units`` reports the same names before and after; it reads the layouts without
changing the model. Checkpoints rebuild a model from its config and prepare it the same way.

Limit: exports name units as allocator sees them. For GPT-2 these are the checkpoint's own
module names; for fused experts they are ``...mlp.experts.{e}.gate_up_proj``/``down_proj``, not
the on-disk names of a Mixtral checkpoint (``block_sparse_moe.experts.{e}.w1``/``w3``/``w2``,
gate and up separate), so an expert plan exported to a runtime needs that renaming.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from allocator.errors import UnsupportedError


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    """``module.<name>`` as a tensor (``nn.Module.__getattr__`` is typed tensor-or-module)."""
    value = getattr(module, name, None)
    if not isinstance(value, torch.Tensor):
        raise UnsupportedError(f"{type(module).__name__}.{name} is not a tensor ({value!r})")
    return value


def is_conv1d(module: nn.Module) -> bool:
    """A transformers ``Conv1D`` (weight (in, out)), without importing transformers eagerly."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def is_fused_experts(module: nn.Module) -> bool:
    """Experts stored as 3-D parameters (transformers 5 MoE layout)."""
    weight = getattr(module, "down_proj", None)
    return isinstance(weight, nn.Parameter) and weight.dim() == 3


def _check_fused_layout(name: str, module: nn.Module) -> None:
    """Raise unless the fused experts are the layout LinearExperts reproduces."""
    found = []
    gate_up = getattr(module, "gate_up_proj", None)
    if not (isinstance(gate_up, nn.Parameter) and gate_up.dim() == 3):
        found.append("no 3-D gate_up_proj parameter")
    for flag, wanted in (
        ("is_transposed", False),
        ("is_concatenated", True),
        ("has_bias", False),
        ("has_gate", True),
        ("has_post_expert_norm", False),
    ):
        value = getattr(module, flag, wanted)
        if value != wanted:
            found.append(f"{flag}={value}")
    if any("bias" in n for n, _ in module.named_parameters(recurse=False)):
        found.append("expert biases")
    try:
        from transformers.integrations import moe

        default_gate = getattr(moe, "_default_apply_gate", None)
    except ImportError:
        default_gate = None
    own_gate = getattr(type(module), "_apply_gate", default_gate)
    if own_gate is not default_gate:
        found.append(f"a custom gate function ({type(module).__name__}._apply_gate)")
    if not hasattr(module, "act_fn"):
        found.append("no act_fn")
    if found:
        raise UnsupportedError(
            f"{name} ({type(module).__name__}): fused MoE experts with {', '.join(found)}; "
            "allocator handles fused experts only as concatenated [gate; up] (E, 2I, H) and "
            "down (E, H, I) weights without biases (Mixtral, Qwen-MoE layout)"
        )
    shapes = (
        tuple(_tensor(module, "gate_up_proj").shape),
        tuple(_tensor(module, "down_proj").shape),
    )
    (e1, two_i, h1), (e2, h2, i2) = shapes
    if e1 != e2 or h1 != h2 or two_i != 2 * i2:
        raise UnsupportedError(
            f"{name} ({type(module).__name__}): expert shapes gate_up {shapes[0]} and down "
            f"{shapes[1]} are not (E, 2I, H) and (E, H, I)"
        )


def fused_expert_shapes(module: nn.Module) -> list[tuple[str, tuple[int, int]]]:
    """(relative unit name, (out, in)) of every expert projection a fused module will become."""
    n_experts, two_i, hidden = _tensor(module, "gate_up_proj").shape
    inter = _tensor(module, "down_proj").shape[2]
    out = []
    for e in range(int(n_experts)):
        out.append((f"{e}.gate_up_proj", (int(two_i), int(hidden))))
        out.append((f"{e}.down_proj", (int(hidden), int(inter))))
    return out


class ExpertMLP(nn.Module):
    """One expert: ``down(act(gate) * up)`` with gate and up fused in one linear layer."""

    def __init__(
        self,
        hidden: int,
        inter: int,
        act_fn: Callable[[torch.Tensor], torch.Tensor],
        *,
        dtype: Any,
        device: Any,
    ):
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden, 2 * inter, bias=False, dtype=dtype, device=device)
        self.down_proj = nn.Linear(inter, hidden, bias=False, dtype=dtype, device=device)
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


class LinearExperts(nn.ModuleList):
    """Fused 3-D experts as a list of ExpertMLP; ``forward`` is the eager fused forward."""

    @classmethod
    def from_fused(cls, module: nn.Module) -> LinearExperts:
        gate_up, down = _tensor(module, "gate_up_proj"), _tensor(module, "down_proj")
        n_experts, two_i, hidden = gate_up.shape
        act_fn = getattr(module, "act_fn", None)
        if not callable(act_fn):
            raise UnsupportedError(f"{type(module).__name__}: fused experts without an act_fn")
        experts = cls()
        for e in range(n_experts):
            expert = ExpertMLP(
                hidden, two_i // 2, act_fn, dtype=gate_up.dtype, device=gate_up.device
            )
            with torch.no_grad():
                expert.gate_up_proj.weight.copy_(gate_up[e])
                expert.down_proj.weight.copy_(down[e])
            experts.append(expert)
        return experts

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        final = torch.zeros_like(hidden_states)
        n_experts = len(self)
        with torch.no_grad():
            mask = nn.functional.one_hot(top_k_index, num_classes=n_experts + 1).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for index in hit:
            e = int(index[0])
            if e == n_experts:
                continue
            top_k_pos, token_idx = torch.where(mask[e])
            out = self[e](hidden_states[token_idx])
            out = out * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, out.to(final.dtype))
        return final


def conv1d_to_linear(conv: nn.Module) -> nn.Linear:
    weight = _tensor(conv, "weight")  # (in, out)
    bias = getattr(conv, "bias", None)
    linear = nn.Linear(
        weight.shape[0], weight.shape[1], bias=bias is not None, dtype=weight.dtype,
        device=weight.device,
    )  # fmt: skip
    with torch.no_grad():
        linear.weight.copy_(weight.detach().T)
        if bias is not None:
            linear.bias.copy_(bias.detach())
    return linear


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def needs_preparing(model: nn.Module) -> list[str]:
    """Names of the modules ``prepare_model`` would replace."""
    return [n for n, m in model.named_modules() if is_conv1d(m) or is_fused_experts(m)]


def prepare_model(model: nn.Module) -> nn.Module:
    """Replace Conv1D and fused-expert modules in place by nn.Linear equivalents; idempotent."""
    for name, module in list(model.named_modules()):
        if is_conv1d(module):
            _set(model, name, conv1d_to_linear(module))
        elif is_fused_experts(module):
            _check_fused_layout(name, module)
            _set(model, name, LinearExperts.from_fused(module))
    return model
