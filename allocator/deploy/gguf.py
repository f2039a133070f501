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

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from allocator.deploy.gguf_source import gguf_to_f32, source_gguf, unit_weights, write_llama_gguf
from allocator.deploy.llamacpp_runtime import (
    BASE_PRESET,
    INSTALL,
    llama_cpp,
    perplexity,
    quantize,
    tensor_types,
)
from allocator.errors import InputError, UnsupportedError
from allocator.schema.plan import Plan

__all__ = [
    "BASE_PRESET",
    "INSTALL",
    "GGUFResult",
    "apply_gguf",
    "check_written",
    "gguf_to_f32",
    "importance_matrix",
    "llama_cpp",
    "perplexity",
    "plan_tensor_types",
    "quantize",
    "source_gguf",
    "tensor_types",
    "unit_weights",
    "write_llama_gguf",
]


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
