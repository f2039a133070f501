"""Finding a model's quantizable units and the groups a runtime fuses (q/k/v, gate/up, experts)."""

from __future__ import annotations

import re

from torch import nn

from allocator.schema.unit import Unit

_LAYER_RE = re.compile(r"\.(?:layers|h|blocks|block|decoder\.layers)\.(\d+)\.")
_FUSED_GROUPS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(self_attn|attention|attn)\.(q_proj|k_proj|v_proj)$"), r"\1.qkv"),
    (re.compile(r"(mlp|feed_forward)\.(gate_proj|up_proj|w1|w3)$"), r"\1.gate_up"),
)
_EXPERT_RE = re.compile(r"\.experts\.\d+\.")


def fused_group(name: str) -> str | None:
    """The tie key a fusing runtime would give this module, e.g. ``model.layers.3.self_attn.qkv``."""
    for pattern, replacement in _FUSED_GROUPS:
        if pattern.search(name):
            return pattern.sub(replacement, name)
    return None


def expert_group(name: str) -> str | None:
    """Tie key shared by the same projection of every MoE expert in a block."""
    return _EXPERT_RE.sub(".experts.*.", name) if _EXPERT_RE.search(name) else None


def layer_index(name: str) -> int | None:
    match = _LAYER_RE.search("." + name + ".")
    return int(match.group(1)) if match else None


def _is_unit(name: str, module: nn.Module, include_lm_head: bool, include_embeddings: bool) -> bool:
    if isinstance(module, nn.Embedding):
        return include_embeddings
    if not isinstance(module, nn.Linear):
        return False
    is_head = name.split(".")[-1] in ("lm_head", "output", "embed_out")
    return layer_index(name) is not None or (include_lm_head and is_head)


def find_units(
    model: nn.Module, *, include_lm_head: bool = False, include_embeddings: bool = False
) -> list[Unit]:
    """Every linear layer inside the model's blocks (plus lm_head/embeddings when asked).

    ``tie`` is set to the fused-group key (q/k/v, gate/up) where one exists.
    """
    units = []
    for name, module in model.named_modules():
        if not _is_unit(name, module, include_lm_head, include_embeddings):
            continue
        weight = module.weight
        units.append(
            Unit(
                name=name,
                shape=(int(weight.shape[0]), int(weight.shape[1])),
                kind=name.split(".")[-1],
                tie=fused_group(name),
                layer=layer_index(name),
            )
        )
    return units


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)
