"""``torch.library`` custom ops over the packed layout, dispatched by device and batch size.

The op the executor calls (``torch.ops.allocator.quant_matmul``)::

    quant_matmul(x: Tensor, planes: list[Tensor], scales: Tensor, zeros: Tensor,
                 bits: int, group_size: int, in_features: int) -> Tensor

- ``x``: (..., in_features) activations, fp16 / bf16 / fp32, any leading shape.
- ``planes``: the bit planes of ``allocator.quant.packing`` (int32, (K_pad / (32 / w), N) each,
  low bits first), i.e. ``PackedWeight.planes``.
- ``scales``, ``zeros``: (n_groups, N) fp16; ``W[k, n] = (code - zero) * scale`` of group
  ``k // group_size``.
- returns ``x @ W`` of shape (..., N) in ``x.dtype`` (fp32 accumulation). Bias is the caller's.

The op over a weight prepared once at load (``kernels.prepare``: K-major words, torch's int4 /
int8 layouts where they apply), which ``QuantLinear`` calls on CUDA::

    quant_matmul_prepared(x, planes, words, scales, zeros, int4, int4_sz, int8, int8_scale,
                          int8_bias, bits, group_size, in_features) -> Tensor

with the fields of ``PreparedWeight`` (the optional ones None where a layout does not apply).
Same contract as ``quant_matmul``; on CUDA it runs the autotuned backend (K-major Triton
kernels, torch's int4/int8 kernels, or dequantize + cuBLAS), elsewhere the reference.

The 2:4 sparse op (layout of ``allocator.quant.packing_sparse``, ``SparsePackedWeight``)::

    quant_matmul_24(x: Tensor, planes: list[Tensor], indices: Tensor, scales: Tensor,
                    zeros: Tensor, bits: int, group_size: int, in_features: int) -> Tensor

On CUDA it runs the Triton kernels: split-K GEMV for M <= 8, a ``tl.dot`` GEMM for M <= 64,
and a Triton dequantization plus ``torch.matmul`` above; elsewhere the PyTorch reference.
The fake implementation only computes the output shape, so ``torch.compile`` and CUDA graphs
capture the op (warm it up once before a capture: the first call compiles and autotunes).
"""

from __future__ import annotations

import torch

from allocator.errors import InputError
from allocator.quant.packing import WORD_BITS, padded_k, plane_widths

from .reference import reference_quant_matmul, reference_quant_matmul_24

GEMV_MAX_M = 8
GEMM_MAX_M = 64


def _check_planes(planes: list[torch.Tensor], bits: int, rows_k: int, n: int) -> None:
    widths = plane_widths(bits)
    if len(planes) != len(widths):
        raise InputError(f"bits={bits} needs {len(widths)} planes, got {len(planes)}")
    for plane, width in zip(planes, widths, strict=True):
        rows = padded_k(rows_k) // (WORD_BITS // width)
        if plane.dtype != torch.int32 or tuple(plane.shape) != (rows, n):
            raise InputError(
                f"a {width}-bit plane must be int32 of shape ({rows}, {n}), "
                f"got {plane.dtype} {tuple(plane.shape)}: repack with allocator.quant.packing"
            )


def _check_groups(
    x: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int, in_features: int
) -> None:
    if x.shape[-1] != in_features:
        raise InputError(f"x has {x.shape[-1]} features, weight expects in_features={in_features}")
    n_groups, n = -(-in_features // group_size), scales.shape[1]
    if tuple(scales.shape) != (n_groups, n) or tuple(zeros.shape) != (n_groups, n):
        raise InputError(
            f"scales/zeros must be ({n_groups}, {n}) for in_features={in_features}, "
            f"group_size={group_size}; got {tuple(scales.shape)} and {tuple(zeros.shape)}"
        )


def check_packed(
    x: torch.Tensor,
    planes: list[torch.Tensor],
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
) -> None:
    """Raise InputError unless the arguments describe one consistent packed weight."""
    _check_groups(x, scales, zeros, group_size, in_features)
    _check_planes(planes, bits, in_features, scales.shape[1])


def _triton_ready(x: torch.Tensor) -> bool:
    if not x.is_cuda:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@torch.library.custom_op("allocator::quant_matmul", mutates_args=())
def quant_matmul(
    x: torch.Tensor,
    planes: list[torch.Tensor],
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
) -> torch.Tensor:
    """``x @ W`` for a bit-plane packed W (see the module docstring for the contract)."""
    check_packed(x, planes, scales, zeros, bits, group_size, in_features)
    if not _triton_ready(x):
        return reference_quant_matmul(x, planes, scales, zeros, bits, group_size, in_features)
    from .matmul import triton_quant_matmul

    return triton_quant_matmul(x, planes, scales, zeros, bits, group_size, in_features)


@quant_matmul.register_fake
def _quant_matmul_fake(x, planes, scales, zeros, bits, group_size, in_features):
    return x.new_empty((*x.shape[:-1], scales.shape[1]))


def _check_words(words: list[torch.Tensor], bits: int, in_features: int, n: int) -> None:
    from .layout import kmajor_k

    widths = plane_widths(bits)
    if len(words) != len(widths):
        raise InputError(f"bits={bits} needs {len(widths)} K-major planes, got {len(words)}")
    for plane, width in zip(words, widths, strict=True):
        cols = kmajor_k(in_features) * width // WORD_BITS
        if plane.dtype != torch.int32 or tuple(plane.shape) != (n, cols):
            raise InputError(
                f"a {width}-bit K-major plane must be int32 of shape ({n}, {cols}), got "
                f"{plane.dtype} {tuple(plane.shape)}: prepare it with allocator.kernels.prepare"
            )


@torch.library.custom_op("allocator::quant_matmul_prepared", mutates_args=())
def quant_matmul_prepared(
    x: torch.Tensor,
    planes: list[torch.Tensor],
    words: list[torch.Tensor],
    scales: torch.Tensor,
    zeros: torch.Tensor,
    int4: torch.Tensor | None,
    int4_sz: torch.Tensor | None,
    int8: torch.Tensor | None,
    int8_scale: torch.Tensor | None,
    int8_bias: torch.Tensor | None,
    bits: int,
    group_size: int,
    in_features: int,
) -> torch.Tensor:
    """``x @ W`` for a prepared weight (see the module docstring)."""
    check_packed(x, planes, scales, zeros, bits, group_size, in_features)
    _check_words(words, bits, in_features, scales.shape[1])
    if not _triton_ready(x):
        return reference_quant_matmul(x, planes, scales, zeros, bits, group_size, in_features)
    from .prepare import PreparedWeight, triton_prepared_matmul

    weight = PreparedWeight(
        planes, words, scales, zeros, bits, group_size, in_features,
        int4, int4_sz, int8, int8_scale, int8_bias,
    )  # fmt: skip
    return triton_prepared_matmul(x, weight)


@quant_matmul_prepared.register_fake
def _quant_matmul_prepared_fake(x, planes, words, scales, zeros, *rest):
    return x.new_empty((*x.shape[:-1], scales.shape[1]))


def check_packed_24(
    x: torch.Tensor,
    planes: list[torch.Tensor],
    indices: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
) -> None:
    """Raise InputError unless the arguments describe one consistent 2:4 packed weight."""
    if group_size % 4:
        raise InputError(f"group_size={group_size}: 2:4 weights need a multiple of 4")
    _check_groups(x, scales, zeros, group_size, in_features)
    kept_rows, n = -(-in_features // 4) * 2, scales.shape[1]
    _check_planes(planes, bits, kept_rows, n)
    rows = padded_k(kept_rows) // 16
    if indices.dtype != torch.int32 or tuple(indices.shape) != (rows, n):
        raise InputError(
            f"indices must be int32 of shape ({rows}, {n}), got {indices.dtype} "
            f"{tuple(indices.shape)}: repack with allocator.quant.packing_sparse"
        )


@torch.library.custom_op("allocator::quant_matmul_24", mutates_args=())
def quant_matmul_24(
    x: torch.Tensor,
    planes: list[torch.Tensor],
    indices: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
) -> torch.Tensor:
    """``x @ W`` for a 2:4 sparse bit-plane packed W (see the module docstring)."""
    args = (planes, indices, scales, zeros, bits, group_size, in_features)
    check_packed_24(x, *args)
    if not _triton_ready(x):
        return reference_quant_matmul_24(x, *args)
    from .sparse24 import triton_quant_matmul_24

    return triton_quant_matmul_24(x, *args)


@quant_matmul_24.register_fake
def _quant_matmul_24_fake(x, planes, indices, scales, zeros, bits, group_size, in_features):
    return x.new_empty((*x.shape[:-1], scales.shape[1]))
