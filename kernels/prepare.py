"""Weights converted once at load for the GPU kernels, and the op that multiplies by them.

``prepare`` turns the bit planes of ``allocator.quant.packing`` into a ``PreparedWeight``: the
K-major words of ``kernels.layout`` (read by ``kernels.kmajor``), plus torch's int4 layout
(``torch._weight_int4pack_mm``, 4-bit, groups 32-256) or int8 layout
(``torch._weight_int8pack_mm``, 8-bit, one group) where those apply. The planes are kept by
reference (for the dequantize + cuBLAS path above 64 rows), not copied.

``torch.ops.allocator.quant_matmul_prepared`` runs whichever backend the autotuner timed fastest
for the (M bucket, N, K, bits, group, dtype, GPU) key; without a GPU nothing is timed and the
first candidate (the K-major tensor-core kernel) is used. torch's int4 kernel reads bf16
activations only, so it is a candidate for bf16 inputs only. On the CPU the op is the PyTorch
reference.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import torch

from .layout import (
    int4pack_applies,
    int4pack_inner_k_tiles,
    int8pack_applies,
    to_int4pack,
    to_int8pack,
    to_kmajor,
)


@dataclass
class PreparedWeight:
    """One packed weight in every layout a GPU kernel reads; see the module docstring."""

    planes: list[torch.Tensor]
    words: list[torch.Tensor]
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int
    in_features: int
    int4: torch.Tensor | None = None  # torch's tiled int4 layout (CUDA only)
    int4_sz: torch.Tensor | None = None  # (n_groups, N, 2) bf16 scale and zero
    int8: torch.Tensor | None = None  # (N, K) int8, q - 128
    int8_scale: torch.Tensor | None = None  # (N,)
    int8_bias: torch.Tensor | None = None  # (N,) multiplies sum_k x

    @property
    def out_features(self) -> int:
        return self.scales.shape[1]

    def op_args(self) -> tuple:
        """The arguments of ``quant_matmul_prepared`` after x."""
        return (
            self.planes, self.words, self.scales, self.zeros, self.int4, self.int4_sz,
            self.int8, self.int8_scale, self.int8_bias, self.bits, self.group_size,
            self.in_features,
        )  # fmt: skip

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor, lists flattened, Nones skipped (the order ``_with_tensors`` reads)."""
        out: list[torch.Tensor] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                out += value
            elif f.name not in _SCALARS and value is not None:
                out.append(value)
        return out

    def nbytes(self) -> int:
        """Bytes of the layouts this adds to the planes (what preparing costs in memory)."""
        extra = [*self.words, self.int4, self.int4_sz, self.int8, self.int8_scale, self.int8_bias]
        return sum(t.numel() * t.element_size() for t in extra if t is not None)


_SCALARS = {"bits", "group_size", "in_features"}


def prepare(
    planes: list[torch.Tensor],
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
    *,
    torch_kernels: bool = True,
) -> PreparedWeight:
    """Convert once (on the planes' device); torch's layouts only on CUDA and where they apply."""
    n = scales.shape[1]
    weight = PreparedWeight(
        planes=list(planes),
        words=to_kmajor(planes, bits, in_features),
        scales=scales,
        zeros=zeros,
        bits=bits,
        group_size=group_size,
        in_features=in_features,
    )
    if not (torch_kernels and scales.is_cuda):
        return weight
    if int4pack_applies(bits, group_size, in_features, n):
        packed, sz = to_int4pack(planes, scales, zeros, in_features)
        tiles = int4pack_inner_k_tiles(in_features)
        try:
            weight.int4 = torch.ops.aten._convert_weight_to_int4pack(packed.contiguous(), tiles)
            weight.int4_sz = sz.to(torch.bfloat16)
        except (RuntimeError, NotImplementedError) as exc:  # a build without torch's int4 kernel
            warnings.warn(f"torch int4 kernel unavailable, not a candidate: {exc}", stacklevel=2)
    if int8pack_applies(bits, group_size, in_features):
        weight.int8, weight.int8_scale, weight.int8_bias = to_int8pack(
            planes, scales, zeros, in_features
        )
    return weight


def run_config(x2d: torch.Tensor, weight: PreparedWeight, config) -> torch.Tensor:
    """``x2d @ W`` with one config of ``autotune.kmajor_candidates`` (x2d (M, K) contiguous)."""
    if config.backend == "int4pack":
        return torch.ops.aten._weight_int4pack_mm(
            x2d, weight.int4, weight.group_size, weight.int4_sz
        )
    if config.backend == "int8pack":
        scale = weight.int8_scale.to(x2d.dtype)
        out = torch.ops.aten._weight_int8pack_mm(x2d, weight.int8, scale)
        bias = weight.int8_bias
        return (out.float() + x2d.float().sum(1, keepdim=True) * bias).to(x2d.dtype)
    if config.dequant:
        from .dequant import dequant_matmul

        args = (weight.planes, weight.scales, weight.zeros, weight.bits, weight.group_size)
        return dequant_matmul(x2d, *args, weight.in_features, config)
    from .kmajor import launch_kmajor

    return launch_kmajor(
        x2d, weight.words, weight.scales, weight.zeros, weight.bits, weight.group_size,
        weight.in_features, dot=config.use_dot, block_m=config.block_m, block_n=config.block_n,
        block_k=config.block_k, split_k=config.split_k, num_warps=config.num_warps,
        num_stages=config.num_stages,
    )  # fmt: skip


def pool_for(x2d: torch.Tensor, weight: PreparedWeight, sms: int) -> list:
    """The candidate configs of this input and weight."""
    from .autotune import kmajor_candidates

    m, n, k = x2d.shape[0], weight.out_features, weight.in_features
    int4 = weight.int4 is not None and x2d.dtype == torch.bfloat16
    int8 = weight.int8 is not None and x2d.dtype in (torch.float16, torch.bfloat16, torch.float32)
    return kmajor_candidates(m, n, k, weight.group_size, sms, int4=int4, int8=int8)


def choose(x2d: torch.Tensor, weight: PreparedWeight):
    """The autotuned config for x2d and weight (timed on the GPU, cached)."""
    from . import autotune

    autotune._load_disk()
    n, k = weight.out_features, weight.in_features
    key = "km|" + autotune._key(x2d, n, k, weight.bits, weight.group_size)
    cuda = x2d.is_cuda
    sms = torch.cuda.get_device_properties(x2d.device).multi_processor_count if cuda else 4
    pool = pool_for(x2d, weight, sms)
    copies: list[PreparedWeight] = []
    if cuda and key not in autotune._CACHE:
        l2_bytes = torch.cuda.get_device_properties(x2d.device).L2_cache_size
        for tensors in autotune.rotating_copies(weight.tensors(), l2_bytes):
            copies.append(_with_tensors(weight, tensors))

    def calls_for(config):
        return [lambda w=w: run_config(x2d, w, config) for w in copies]

    return autotune.tune(key, pool, cuda, calls_for)


def _with_tensors(weight: PreparedWeight, tensors: list[torch.Tensor]) -> PreparedWeight:
    """A copy of weight whose tensors (in ``tensors()`` order, Nones skipped) are replaced."""
    it = iter(tensors)
    values = {}
    for f in fields(weight):
        value = getattr(weight, f.name)
        if f.name in _SCALARS or value is None:
            values[f.name] = value
        elif isinstance(value, list):
            values[f.name] = [next(it) for _ in value]
        else:
            values[f.name] = next(it)
    return PreparedWeight(**values)


def prepared_matmul(x: torch.Tensor, weight: PreparedWeight) -> torch.Tensor:
    """``x @ W`` through the custom op (any leading shape)."""
    from . import ops  # noqa: F401  (registers the op)

    return torch.ops.allocator.quant_matmul_prepared(x, *weight.op_args())


def triton_prepared_matmul(x: torch.Tensor, weight: PreparedWeight) -> torch.Tensor:
    """The GPU implementation behind the op: autotuned backend for this input."""
    x2d = x.reshape(-1, weight.in_features).contiguous()
    out = run_config(x2d, weight, choose(x2d, weight))
    return out.reshape(*x.shape[:-1], weight.out_features)
