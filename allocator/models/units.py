"""Finding a model's quantizable units and the groups a runtime fuses (q/k/v, gate/up, experts).

Units are the linear layers inside the model's blocks (the block list ``find_backbone``
locates: ``model.layers``, ``transformer.h``, ``gpt_neox.layers``, ``encoder.layer``...), so
every unit is one the block-wise capture, GPTQ and the estimators reach. Besides ``nn.Linear``
they include GPT-2 ``Conv1D`` layers (shape reported as (out, in), the layout quantization
uses) and every projection of fused MoE experts (``...experts.{e}.gate_up_proj``/``down_proj``),
under the names ``allocator.models.adapters.prepare_model`` gives them. MoE routers
(``mlp.gate``, ``block_sparse_moe.gate``, ``router``, ``shared_expert_gate``) are never units:
they stay in full precision. Fused projections (Phi-3 ``qkv_proj``/``gate_up_proj``, NeoX
``query_key_value``, GPT-2 ``c_attn``) are single units with their fused shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from torch import nn

from allocator.models.adapters import fused_expert_shapes, is_conv1d, is_fused_experts
from allocator.schema.unit import Unit

_LAYER_RE = re.compile(r"\.(?:layers|layer|h|blocks|block|decoder\.layers)\.(\d+)\.")
_FUSED_GROUPS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(self_attn|attention|attn)\.(q_proj|k_proj|v_proj)$"), r"\1.qkv"),
    (re.compile(r"(attention\.self)\.(query|key|value)$"), r"\1.qkv"),  # BERT-style
    (re.compile(r"(mlp|feed_forward|shared_expert)\.(gate_proj|up_proj|w1|w3)$"), r"\1.gate_up"),
)
_EXPERT_RE = re.compile(r"\.experts\.\d+\.")
_ROUTERS = ("gate", "router", "shared_expert_gate")
# module names that recur inside one block (BERT's three ``dense``, GPT-2's two ``c_proj``):
# their kind is the path inside the block instead
_AMBIGUOUS_KINDS = ("dense", "c_proj")


def fused_group(name: str) -> str | None:
    """The tie key a fusing runtime would give this module, e.g. ``model.layers.3.self_attn.qkv``."""
    for pattern, replacement in _FUSED_GROUPS:
        if pattern.search(name):
            return pattern.sub(replacement, name)
    return None


def expert_group(name: str) -> str | None:
    """Tie key shared by the same projection of every MoE expert in a block."""
    return _EXPERT_RE.sub(".experts.*.", name) if _EXPERT_RE.search(name) else None


def is_expert(name: str) -> bool:
    """A projection of one MoE expert (``...experts.{e}....``)."""
    return _EXPERT_RE.search(name) is not None


def layer_index(name: str) -> int | None:
    match = _LAYER_RE.search("." + name + ".")
    return int(match.group(1)) if match else None


def is_router(name: str) -> bool:
    """MoE routing layers (kept in full precision, never units)."""
    last = name.rsplit(".", 1)[-1]
    return last in _ROUTERS or last.endswith("router")


def block_units(block: nn.Module) -> Iterator[tuple[str, tuple[int, int], nn.Module | None]]:
    """(name inside the block, (out, in), the nn.Linear or None) for every unit of one block.

    The module is None for layouts ``prepare_model`` has not converted yet (Conv1D, fused
    experts); their names and shapes are already the converted ones.
    """
    for rel, module in block.named_modules():
        if not rel or is_router(rel):
            continue
        if isinstance(module, nn.Linear):
            yield rel, (int(module.out_features), int(module.in_features)), module
        elif is_conv1d(module):
            yield rel, (int(module.nf), int(module.nx)), None
        elif is_fused_experts(module):
            for sub, shape in fused_expert_shapes(module):
                yield f"{rel}.{sub}", shape, None


def _kind(rel: str) -> str:
    last = rel.rsplit(".", 1)[-1]
    return _EXPERT_RE.sub(".", "." + rel + ".").strip(".") if last in _AMBIGUOUS_KINDS else last


def find_units(
    model: nn.Module, *, include_lm_head: bool = False, include_embeddings: bool = False
) -> list[Unit]:
    """Every linear layer inside the model's blocks (plus lm_head/embeddings when asked).

    ``tie`` is set to the fused-group key (q/k/v, gate/up) where one exists. Raises
    UnsupportedError naming the module lists found when the model has no block list.
    """
    from allocator.models.blocks import find_backbone

    backbone = find_backbone(model)
    units = []
    if include_embeddings:
        for name, module in model.named_modules():
            if isinstance(module, nn.Embedding):
                units.append(_unit(name, tuple(module.weight.shape), name.rsplit(".", 1)[-1], None))
    for index, block in enumerate(backbone.layers):
        for rel, shape, _module in block_units(block):
            name = f"{backbone.prefix}.{index}.{rel}"
            units.append(_unit(name, shape, _kind(rel), index))
    if include_lm_head and backbone.head is not None:
        head_name = next(n for n, m in model.named_modules() if m is backbone.head)
        if isinstance(backbone.head, nn.Linear):
            out_features, in_features = backbone.head.weight.shape
            units.append(
                _unit(head_name, (out_features, in_features), head_name.rsplit(".", 1)[-1], None)
            )
    return units


def unhandled_weights(model: nn.Module) -> list[str]:
    """Matrices in the first block that are neither units nor routers, with their module type.

    A model whose blocks hold such weights (a custom projection type, a quantized layer from
    another library, a convolution) would be only partly quantized: callers warn about them.
    """
    from allocator.models.blocks import find_backbone

    backbone = find_backbone(model)
    block = backbone.layers[0]
    owners = {
        rel.rsplit(".", 2)[0] if ".experts." in f".{rel}" else rel
        for rel, _s, _m in block_units(block)
    }
    found = []
    for name, param in block.named_parameters():
        owner = name.rpartition(".")[0]
        if param.dim() < 2 or owner in owners or is_router(owner):
            continue
        if any(owner == o or owner.startswith(o + ".") for o in owners):
            continue
        module = block.get_submodule(owner) if owner else block
        found.append(f"{backbone.prefix}.0.{name} {tuple(param.shape)} ({type(module).__name__})")
    return found


def _unit(name: str, shape: tuple[int, ...], kind: str, layer: int | None) -> Unit:
    return Unit(
        name=name,
        shape=(int(shape[0]), int(shape[1])),
        kind=kind,
        tie=fused_group(name),
        layer=layer,
    )


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


__all__ = [
    "block_units",
    "expert_group",
    "find_units",
    "fused_group",
    "get_module",
    "is_expert",
    "is_router",
    "layer_index",
    "unhandled_weights",
]
