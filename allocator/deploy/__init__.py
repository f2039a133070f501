"""Deployable checkpoints: a compressed model in a runtime's own format, checked by that runtime.

- ``compressed_tensors``: a Hugging Face folder (``config.json`` with a compressed-tensors
  ``quantization_config``, ``pack-quantized`` weights) holding allocator's own GPTQ/SparseGPT
  values, written with the compressed-tensors library; transformers and vLLM load it.
- ``gguf``: a GGUF file quantized by llama.cpp's own quantizer (through ``llama-cpp-python``) with
  the plan's per-tensor ggml types and allocator's importance matrix.

Layering: this package imports ``allocator.quant``, ``allocator.models``, ``allocator.export``
and ``allocator.schema``,
never the CLI. ``formats_for`` names the formats that can hold an option, for error messages.
"""

from __future__ import annotations

from allocator.schema.option import Option

FORMATS = ("allocator", "compressed-tensors", "gguf")


def formats_for(option: Option, in_features: int | None = None) -> list[str]:
    """The deploy formats that can hold ``option`` on a weight with ``in_features`` inputs."""
    from allocator.deploy.compressed_tensors import option_problem as ct_problem

    out = ["allocator"]
    if ct_problem(option, in_features) is None:
        out.append("compressed-tensors")
    if option.is_fp16 or 2 <= option.bits <= 8:
        out.append("gguf")
    return out


def check_format(fmt: str, target: str | None, dtype: str | None) -> str:
    """The ``apply --format`` value, after checking the options that go with it."""
    from allocator.errors import InputError

    name = fmt.strip().lower()
    if name not in FORMATS:
        raise InputError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if target is not None and name != "compressed-tensors":
        raise InputError(
            f"--target {target}: only --format compressed-tensors takes a target "
            "(a gguf file is for llama.cpp; an allocator checkpoint for allocator)"
        )
    if dtype is not None:
        from allocator.models.trust import DTYPES

        if name != "compressed-tensors":
            raise InputError(f"--dtype {dtype}: only --format compressed-tensors takes a dtype")
        if dtype not in DTYPES:
            raise InputError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return name


__all__ = ["FORMATS", "check_format", "formats_for"]
