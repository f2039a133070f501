"""Hugging Face module names <-> llama.cpp GGUF tensor names (export and imatrix import).

GGUF names follow llama.cpp's ``gguf-py/gguf/tensor_mapping.py`` for the Llama family
(Llama, Mistral, Qwen2, SmolLM2...): ``model.layers.3.self_attn.q_proj`` is
``blk.3.attn_q.weight``, ``model.layers.3.mlp.down_proj`` is ``blk.3.ffn_down.weight``,
``lm_head`` is ``output.weight`` and ``model.embed_tokens`` is ``token_embd.weight``.
"""

from __future__ import annotations

import re

from allocator.errors import UnsupportedError

# Projection suffix (after ``model.layers.{i}.``) -> GGUF tensor stem (after ``blk.{i}.``).
LLAMA_BLOCK_TENSORS: dict[str, str] = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
LLAMA_GLOBAL_TENSORS: dict[str, str] = {
    "model.embed_tokens": "token_embd.weight",
    "lm_head": "output.weight",
}
# model types whose GGUF conversion uses the Llama tensor names above
MODEL_TYPES: dict[str, dict[str, str]] = {
    "llama": LLAMA_BLOCK_TENSORS,
    "mistral": LLAMA_BLOCK_TENSORS,
    "qwen2": LLAMA_BLOCK_TENSORS,
    "qwen3": LLAMA_BLOCK_TENSORS,
}

_HF_BLOCK_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_GGUF_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)\.weight$")


def _block_map(model_type: str) -> dict[str, str]:
    if model_type not in MODEL_TYPES:
        known = ", ".join(sorted(MODEL_TYPES))
        raise UnsupportedError(
            f"--model-type {model_type!r}: no GGUF tensor-name map; choose one of: {known}"
        )
    return MODEL_TYPES[model_type]


def hf_to_gguf(name: str, model_type: str = "llama") -> str:
    """GGUF tensor name of a Hugging Face module (its ``.weight``)."""
    block_map = _block_map(model_type)
    if name in LLAMA_GLOBAL_TENSORS:
        return LLAMA_GLOBAL_TENSORS[name]
    match = _HF_BLOCK_RE.match(name)
    if match and match.group(2) in block_map:
        return f"blk.{match.group(1)}.{block_map[match.group(2)]}.weight"
    raise UnsupportedError(
        f"unit {name!r}: no GGUF tensor name for it under model type {model_type!r}; "
        "llama.cpp export supports model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj}"
    )


def gguf_to_hf(tensor: str, model_type: str = "llama") -> str | None:
    """Hugging Face module name of a GGUF tensor, or None when it has no linear counterpart."""
    block_map = _block_map(model_type)
    for hf, gguf in LLAMA_GLOBAL_TENSORS.items():
        if tensor == gguf:
            return hf
    match = _GGUF_BLOCK_RE.match(tensor)
    if not match:
        return None
    reverse = {stem: suffix for suffix, stem in block_map.items()}
    suffix = reverse.get(match.group(2))
    return None if suffix is None else f"model.layers.{match.group(1)}.{suffix}"
