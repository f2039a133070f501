"""llama.cpp itself, through ``llama-cpp-python``: its quantizer and its evaluation.

``quantize`` calls ``llama_model_quantize`` with a preset, per-tensor type overrides and an
importance matrix; ``perplexity`` scores token windows with llama.cpp's logits the way
``allocator eval`` does; ``tensor_types`` reads a written file back with gguf-py.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np

from allocator.errors import InputError, UnsupportedError

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
