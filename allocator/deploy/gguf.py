"""A plan as a GGUF file quantized by llama.cpp itself (through ``llama-cpp-python``).

``apply_gguf`` (``allocator apply --format gguf``):

1. the original model as an F32 GGUF: a model that came as a GGUF (``smollm2``, ``gemma3-270m``,
   a ``.gguf`` path) is re-written with every tensor dequantized (gguf-py), metadata and tokenizer
   kept, so llama.cpp starts from exactly the weights allocator calls the original; a Hugging
   Face folder of the Llama family is written by ``write_llama_gguf`` (gguf-py, llama.cpp's
   tensor names and q/k row order), or by llama.cpp's own ``convert_hf_to_gguf.py`` when
   ``$LLAMA_CPP_CONVERT`` points at it;
2. allocator's importance matrix: the mean squared input of every linear layer over the
   calibration windows (what llama.cpp's imatrix holds), keyed by GGUF tensor name;
3. ``llama_model_quantize`` with the plan's per-tensor ggml types as tensor-type overrides (the
   ``llamacpp`` exporter's mapping and patterns) and the importance matrix, over a base preset
   whose rules place the tensors the plan does not cover (token embeddings, output);
4. the written file is read back: every unit must have its planned ggml type (llama.cpp falls
   back silently for rows its block size does not divide), and its bytes equal the plan's ggml
   prediction.

``perplexity`` evaluates a GGUF through llama.cpp (logits from ``llama_cpp.Llama``) on token
windows, scored like ``allocator eval`` (every next token of every window).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from allocator.errors import InputError, UnsupportedError
from allocator.schema.plan import Plan

INSTALL = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" pip install "llama-cpp-python==0.3.36" '
    "(builds llama.cpp from source: about 580 CPU-seconds, 5 minutes on 2 idle cores)"
)
# ggml type of the plan's most common type -> the llama.cpp preset used as the base ftype
BASE_PRESET = {
    "Q2_K": "Q2_K",
    "Q3_K": "Q3_K_M",
    "Q4_K": "Q4_K_M",
    "Q5_K": "Q5_K_M",
    "Q6_K": "Q6_K",
    "Q4_0": "Q4_0",
    "Q4_1": "Q4_1",
    "Q5_0": "Q5_0",
    "Q5_1": "Q5_1",
    "Q8_0": "Q8_0",
}


_LOG: list[str] = []  # llama.cpp's log lines of the current call (kept for error messages)
_LOG_CALLBACK: Any = None


def llama_cpp() -> Any:
    """The ``llama_cpp`` module (its log collected in ``_LOG``, not printed), or
    UnsupportedError saying how to install it."""
    global _LOG_CALLBACK
    try:
        import llama_cpp as module
    except ImportError:
        raise UnsupportedError(
            f"--format gguf quantizes with llama.cpp through llama-cpp-python: {INSTALL}"
        ) from None
    if _LOG_CALLBACK is None:

        def collect(_level: int, text: bytes, _user: Any) -> None:
            _LOG.append(text.decode(errors="replace"))
            del _LOG[:-200]

        _LOG_CALLBACK = module.llama_log_callback(collect)
        module.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    return module


def ftype_value(preset: str) -> int:
    """llama.cpp's ``llama_ftype`` of a preset name (Q4_K_M, Q8_0, F16, ...)."""
    import gguf

    name = preset.upper()
    key = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16"}.get(name, f"MOSTLY_{name}")
    try:
        return int(gguf.LlamaFileType[key].value)
    except KeyError:
        known = ", ".join(sorted({*BASE_PRESET.values(), "Q3_K_S", "Q4_K_S", "Q5_K_S", "F16"}))
        raise InputError(f"llama.cpp preset {preset!r} is unknown; choose one of {known}") from None


def ggml_type_value(name: str) -> int:
    import gguf

    return int(gguf.GGMLQuantizationType[name.upper()].value)


# --- the original model as an F32 GGUF -----------------------------------------------------------


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


# --- importance matrix, overrides, quantization ---------------------------------------------------


def importance_matrix(model: Any, windows: Any, model_type: str = "llama") -> dict[str, np.ndarray]:
    """GGUF tensor name -> mean squared input per column of every block linear layer (and the
    LM head), over ``windows`` (n, L) token ids: the values llama.cpp's imatrix holds."""
    import torch
    from torch import nn

    from allocator.models.gguf_names import hf_to_gguf
    from allocator.models.units import find_units

    names = [u.name for u in find_units(model)]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    modules = dict(model.named_modules())
    linears = {n: modules[n] for n in names if isinstance(modules.get(n), nn.Linear)}
    if isinstance(head, nn.Linear):
        linears.update({n: m for n, m in modules.items() if m is head})
    sums = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}
    counts = dict.fromkeys(linears, 0)

    def hook(name: str) -> Any:
        def fn(_module: nn.Module, args: tuple[Any, ...]) -> None:
            rows = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[name] += rows.pow(2).sum(0).cpu()
            counts[name] += rows.shape[0]

        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    try:
        with torch.no_grad():
            for row in windows:
                model(input_ids=row.unsqueeze(0))
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name in linears:
        try:
            key = hf_to_gguf(name, model_type)
        except UnsupportedError:
            continue
        out[key] = (sums[name] / max(counts[name], 1)).float().numpy()
    return out


def plan_tensor_types(plan: Plan, units: Any, model_type: str = "llama") -> tuple[list[tuple[str, str]], str]:  # fmt: skip
    """(pattern, ggml type) overrides and the most common ggml type, from the ``llamacpp``
    exporter (anchored exact-name patterns, disjoint)."""
    from allocator.export import export_plan

    result = export_plan(plan, "llamacpp", model_type=model_type, units=units)
    pairs = []
    for line in result.config["tensor_types"]:
        pattern, _, name = line.rpartition("=")
        pairs.append((pattern, name.upper()))
    return pairs, result.config["base_type"]


def quantize(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    preset: str,
    *,
    overrides: list[tuple[str, str]] | None = None,
    imatrix: dict[str, np.ndarray] | None = None,
    nthread: int = 0,
) -> Path:
    """``llama_model_quantize(source -> out)`` at a preset, with tensor-type overrides
    ``(regex, ggml type)`` and an importance matrix when given."""
    lc = llama_cpp()
    params = lc.llama_model_quantize_default_params()
    params.ftype = ftype_value(preset)
    params.nthread = nthread
    keep: list[Any] = []
    if overrides:
        table = (lc.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (pattern, name) in enumerate(overrides):
            encoded = pattern.encode()
            keep.append(encoded)
            table[i].pattern = encoded
            table[i].type = ggml_type_value(name)
        table[len(overrides)].pattern = None
        keep.append(table)
        params.tt_overrides = ctypes.cast(table, ctypes.POINTER(lc.llama_model_tensor_override))
    if imatrix:
        entries = (lc.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            data = np.ascontiguousarray(values, dtype=np.float32)
            encoded = name.encode()
            keep.extend([data, encoded])
            entries[i].name = encoded
            entries[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = data.size
        entries[len(imatrix)].name = None
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(lc.llama_model_imatrix_data))
    status = lc.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if status != 0:
        raise UnsupportedError(
            f"llama_model_quantize({source} -> {out}, {preset}) failed: {status}"
        )
    del keep
    return Path(out)


def tensor_types(path: str | os.PathLike[str]) -> dict[str, tuple[str, int]]:
    """Tensor name -> (ggml type name, bytes) of a GGUF file, read back with gguf-py."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, int(t.n_bytes)) for t in reader.tensors}


# --- evaluation --------------------------------------------------------------------------------


def perplexity(path: str | os.PathLike[str], windows: Any, *, n_threads: int | None = None) -> float:  # fmt: skip
    """Perplexity of a GGUF on ``windows`` (n, L) token ids through llama.cpp: each window is
    evaluated from an empty context and every next token is scored (as ``allocator eval``)."""
    lc = llama_cpp()
    ids = np.asarray(windows, dtype=np.int64)
    n_ctx = int(ids.shape[1])
    llm = lc.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        logits_all=True,
        verbose=False,
        n_threads=n_threads or max(1, os.cpu_count() or 1),
    )
    total, count = 0.0, 0
    try:
        for row in ids:
            llm.reset()
            llm.eval([int(t) for t in row])
            logits = np.asarray(llm.scores[: n_ctx - 1], dtype=np.float64)
            peak = logits.max(axis=1, keepdims=True)
            log_z = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
            target = row[1:]
            total += float((log_z - logits[np.arange(n_ctx - 1), target]).sum())
            count += n_ctx - 1
    finally:
        llm.close()
    return float(np.exp(total / count))


# --- apply --format gguf -------------------------------------------------------------------------


@dataclass
class GGUFResult:
    path: Path
    preset: str
    file_bytes: int
    unit_bytes: int
    predicted_unit_bytes: float
    types: dict[str, int] = field(default_factory=dict)  # ggml type -> tensors of the plan
    imatrix_entries: int = 0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(self.types.items()))
        return [
            f"gguf        {self.path} ({self.file_bytes / 2**20:.3f} MiB, base preset {self.preset})",
            f"plan types  {kinds} (each checked in the written file)",
            f"plan units  {self.unit_bytes / 2**20:.3f} MiB in the file, plan's ggml prediction "
            f"{self.predicted_unit_bytes / 2**20:.3f} MiB",
            f"imatrix     {self.imatrix_entries} tensors (mean squared inputs on the calibration text)",
            *(f"note        {n}" for n in self.notes),
        ]


def check_written(
    path: Path, plan: Plan, overrides: list[tuple[str, str]], model_type: str
) -> tuple[int, float, dict[str, int]]:
    """Check every plan unit has its planned ggml type in the written file; return (the units'
    bytes in the file, the plan's ggml prediction of them, tensors per ggml type)."""
    import re

    from allocator.export.llamacpp import GGML_TYPES
    from allocator.models.gguf_names import hf_to_gguf

    written = tensor_types(path)
    compiled = [(re.compile(p), t) for p, t in overrides]
    wrong: list[str] = []
    unit_bytes, predicted, counts = 0, 0.0, dict[str, int]()
    for a in plan.assignments:
        name = hf_to_gguf(a.unit, model_type)
        planned = next((t for p, t in compiled if p.search(name)), None)
        got, nbytes = written.get(name, ("missing", 0))
        if planned is None or got != planned:
            wrong.append(f"{name}: planned {planned}, written {got}")
            continue
        unit_bytes += nbytes
        predicted += a.numel * GGML_TYPES[planned][0] / 8
        counts[got] = counts.get(got, 0) + 1
    if wrong:
        shown = "\n  ".join(wrong[:20])
        raise UnsupportedError(
            f"{path}: llama.cpp did not follow the plan for {len(wrong)} tensor(s):\n  {shown}"
        )
    return unit_bytes, predicted, counts


def apply_gguf(
    spec: str,
    plan: Plan,
    out: str | os.PathLike[str],
    text: str,
    *,
    windows: int = 32,
    seq_len: int = 512,
    seed: int = 0,
    bos: bool | None = None,
    preset: str | None = None,
    progress: bool = True,
    work_dir: str | os.PathLike[str] | None = None,
) -> GGUFResult:
    """Quantize the original model ``spec`` with llama.cpp by ``plan`` into ``out`` (see the
    module docstring); ``preset`` is the base ftype (default: from the plan's commonest type)."""
    from allocator.models.loader import load_model
    from allocator.models.units import find_units
    from allocator.models.windows import token_windows
    from allocator.quant.apply import plan_options

    llama_cpp()
    target = Path(out)
    if target.suffix != ".gguf":
        raise InputError(f"--out {out}: --format gguf writes one file; name it *.gguf")
    loaded = load_model(spec)
    model = loaded.model
    model_type = getattr(getattr(model, "config", None), "model_type", "llama")
    plan_options(model, plan)  # the plan fits this model
    units = find_units(model)
    overrides, common = plan_tensor_types(plan, units, model_type)
    base = preset or BASE_PRESET.get(common, "Q8_0")
    ids = token_windows(
        loaded.tokenizer, text, seq_len=seq_len, n_windows=windows, seed=seed, bos=bos
    )
    imatrix = importance_matrix(model, ids, model_type)
    del model, loaded
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir or target.parent) as tmp:
        f32 = source_gguf(spec, Path(tmp) / "f32.gguf")
        partial = Path(tmp) / "out.gguf"
        quantize(f32, partial, base, overrides=overrides, imatrix=imatrix)
        unit_bytes, predicted, counts = check_written(partial, plan, overrides, model_type)
        os.replace(partial, target)
    return GGUFResult(
        path=target,
        preset=base,
        file_bytes=target.stat().st_size,
        unit_bytes=unit_bytes,
        predicted_unit_bytes=predicted,
        types=counts,
        imatrix_entries=len(imatrix),
    )
