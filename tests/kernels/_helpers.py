"""Random packed weights and the fp64 reference shared by the kernel tests."""

from __future__ import annotations

import torch
from allocator.kernels.reference import dequantize_planes

from allocator.quant.packing import pack_weight
from allocator.quant.rtn import quantize_rtn


def random_packed(k: int, n: int, bits: int, group: int, seed: int, device: str = "cpu"):
    """RTN-quantized random (n, k) weights packed with allocator.quant.packing."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=gen)
    q = quantize_rtn(weight, bits, group)
    packed = pack_weight(q.codes, q.scale, q.zero, bits, group)
    planes = [p.to(device) for p in packed.planes]
    return planes, packed.scales.to(device), packed.zeros.to(device)


def reference_out(x: torch.Tensor, planes, scales, zeros, bits, group, k) -> torch.Tensor:
    """``x @ W`` in fp64 on the dequantized weight."""
    weight = dequantize_planes(planes, scales, zeros, bits, group, k, torch.float64)
    return x.double() @ weight


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()
