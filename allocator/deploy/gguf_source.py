"""The original model as an F32 GGUF, so llama.cpp starts from exactly allocator's weights.

A model that came as a GGUF is re-written dequantized (gguf-py; metadata and tokenizer kept); a
Hugging Face folder of the Llama family is written with llama.cpp's tensor names and q/k row
order (``write_llama_gguf``), or converted by llama.cpp's own ``convert_hf_to_gguf.py`` when
``$LLAMA_CPP_CONVERT`` points at it. ``unit_weights`` reads quantized tensors back as allocator's
weights.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from allocator.errors import UnsupportedError


def gguf_to_f32(source: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Re-write a GGUF with every tensor dequantized to F32 (metadata and tokenizer kept)."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(out), arch=arch)
    for fld in reader.fields.values():
        if fld.name == gguf.Keys.General.ARCHITECTURE or fld.name.startswith("GGUF."):
            continue
        kind = fld.types[0]
        sub = fld.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = fld.contents()
        if fld.name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType.ALL_F32)
        writer.add_key_value(fld.name, value, kind, sub_type=sub)
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out)


def _permute(weight: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """Hugging Face q/k rows (rotate-half RoPE) -> llama.cpp's interleaved order, as llama.cpp's
    ``convert_hf_to_gguf.py`` (``LlamaModel.permute``) does."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _unpermute(weight: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """Inverse of ``_permute``: llama.cpp's q/k rows back to the Hugging Face order."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weight.reshape(n_head, weight.shape[0] // n_head // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def unit_weights(
    path: str | os.PathLike[str], units: list[str], config: Any, model_type: str = "llama"
) -> dict[str, np.ndarray]:
    """The (out, in) float32 weights of ``units`` as a GGUF holds them, dequantized by gguf-py
    and with q/k rows back in the Hugging Face order (what allocator's model holds)."""
    import gguf

    from allocator.models.gguf_names import hf_to_gguf

    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    out = {}
    for unit in units:
        name = hf_to_gguf(unit, model_type)
        tensor = tensors[name]
        weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if ".attn_q." in name:
            weight = _unpermute(weight, n_head, n_head)
        elif ".attn_k." in name:
            weight = _unpermute(weight, n_head, n_kv)
        out[unit] = weight
    return out


def write_llama_gguf(folder: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """An F32 GGUF of a Llama-family Hugging Face folder with a BPE ``tokenizer.json``."""
    import json

    import gguf
    from transformers import AutoConfig

    from allocator.models.gguf_names import LLAMA_BLOCK_TENSORS
    from allocator.models.loader import load_model

    path = Path(folder)
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in ("llama", "mistral"):
        raise UnsupportedError(
            f"{path}: model type {config.model_type!r}: the built-in GGUF writer covers Llama "
            "and Mistral; set LLAMA_CPP_CONVERT to llama.cpp's convert_hf_to_gguf.py for others"
        )
    tok_file = path / "tokenizer.json"
    tok = json.loads(tok_file.read_text()) if tok_file.is_file() else {}
    if tok.get("model", {}).get("type") != "BPE":
        raise UnsupportedError(
            f"{path}: the built-in GGUF writer needs a BPE tokenizer.json; set LLAMA_CPP_CONVERT "
            "to llama.cpp's convert_hf_to_gguf.py"
        )
    model = load_model(str(path)).model
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    writer = gguf.GGUFWriter(str(out), arch="llama")
    writer.add_name(path.name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 1e4))))
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    vocab = tok["model"]["vocab"]
    added = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    size = max([*vocab.values(), *added.values()]) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [int(gguf.TokenType.UNUSED)] * size
    for text, i in vocab.items():
        tokens[i], types[i] = text, int(gguf.TokenType.NORMAL)
    for text, i in added.items():
        tokens[i], types[i] = text, int(gguf.TokenType.CONTROL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, setter in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id)):  # fmt: skip
        value = getattr(config, key, None)
        if isinstance(value, int) and value < size:
            setter(value)
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(config.num_hidden_layers):
        pre = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", state[pre + "input_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", state[pre + "post_attention_layernorm.weight"])  # fmt: skip
        for suffix, stem in LLAMA_BLOCK_TENSORS.items():
            weight = state[f"{pre}{suffix}.weight"]
            if stem == "attn_q":
                weight = _permute(weight, n_head, n_head)
            elif stem == "attn_k":
                weight = _permute(weight, n_head, n_kv)
            writer.add_tensor(f"blk.{i}.{stem}.weight", np.ascontiguousarray(weight))
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    if not getattr(config, "tie_word_embeddings", False):
        writer.add_tensor("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out)


def source_gguf(spec: str, out: str | os.PathLike[str]) -> Path:
    """The original model ``spec`` (a loader spec) as an F32 GGUF at ``out``."""
    from allocator.models.loader import resolve_model_source

    folder, gguf_name = resolve_model_source(spec)
    if gguf_name is not None:
        return gguf_to_f32(folder / gguf_name, out)
    converter = os.environ.get("LLAMA_CPP_CONVERT")
    if converter:
        cmd = [sys.executable, converter, str(folder), "--outtype", "f32", "--outfile", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise UnsupportedError(f"{converter} failed on {folder}: {done.stderr[-2000:]}")
        return Path(out)
    return write_llama_gguf(folder, out)
