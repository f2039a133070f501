"""The 2:4 sparse part of benchmarks/kernels_bench.py: correctness, then GPU time vs fp16.

Imported by benchmarks/kernels_bench.py (which makes ``allocator.kernels`` importable first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _packed(k: int, n: int, bits: int, group: int, seed: int):
    """Random min-max codes under a random 2:4 mask, packed by allocator.quant.packing_sparse."""
    from allocator.quant.packing_sparse import pack_weight_24

    gen = torch.Generator().manual_seed(seed)
    n_groups = -(-k // group)
    codes = torch.randint(0, 2**bits, (n, k), generator=gen, dtype=torch.uint8)
    scale = torch.rand(n, n_groups, generator=gen) * 0.02 + 1e-3
    zero = torch.randint(0, 2**bits, (n, n_groups), generator=gen).float()
    mask = torch.rand(n, k, generator=gen) > 0.5
    return pack_weight_24(codes, mask, scale, zero, bits, group)


def _cuda_args(packed):
    return (
        [p.cuda() for p in packed.planes],
        packed.indices.cuda(),
        packed.scales.cuda(),
        packed.zeros.cuda(),
        packed.bits,
        packed.group_size,
        packed.in_features,
    )


def check_sparse(shape: tuple[int, int] = (1088, 1040)) -> list[dict]:
    """The op on the GPU against fp64 on the densified weight, outputs poisoned first."""
    from allocator.kernels.sparse24 import launch_sparse24, triton_quant_matmul_24

    k, n = shape
    rows = []
    for bits in (2, 3, 4, 8):
        packed = _packed(k, n, bits, 128, bits)
        args = _cuda_args(packed)
        weight = packed.dequantize(torch.float64).t().cuda()
        for m in (1, 3, 8, 40):
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            if m <= 8:
                out = torch.full((m, n), float("nan"), dtype=x.dtype, device="cuda")
                launch_sparse24(x, *args, split_k=4, out=out)
            else:
                out = triton_quant_matmul_24(x, *args)
            ref = x.double() @ weight
            err = ((out.double() - ref).norm() / ref.norm()).item()
            rows.append(
                {
                    "bits": bits,
                    "m": m,
                    "rel_err": err,
                    "nan": bool(out.isnan().any()),
                    "dtype": "float16",
                    "group": 128,
                    "config": "sparse24",
                }
            )
    return rows


def time_sparse(shapes, bandwidth: float) -> list[dict]:
    """4-bit g128 2:4 at M = 1 and 8: GPU time by graph replay over rotated copies, vs fp16."""
    from allocator.kernels.autotune import gpu_time_ms, rotating_copies
    from allocator.kernels.sparse24 import triton_quant_matmul_24

    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    rows = []
    for k, n in shapes:
        args = _cuda_args(_packed(k, n, 4, 128, 0))
        tensors = [*args[0], *args[1:4]]
        copies = rotating_copies(tensors, l2)
        w16 = rotating_copies([torch.randn(n, k, device="cuda", dtype=torch.float16)], l2)
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        for m in (1, 8):
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            ours = gpu_time_ms(
                [
                    lambda c=c, x=x, meta=args[4:]: triton_quant_matmul_24(x, c[:1], *c[1:], *meta)
                    for c in copies
                ]
            )
            fp16 = gpu_time_ms([lambda w=w, x=x: F.linear(x, w[0]) for w in w16])
            gbps = (nbytes + (m * k + m * n) * 2) / (ours * 1e-3) / 1e9
            rows.append(
                {
                    "k": k,
                    "n": n,
                    "m": m,
                    "bits": 4,
                    "group": 128,
                    "sparse24": True,
                    "ours_us": ours * 1e3,
                    "fp16_us": fp16 * 1e3,
                    "speedup": fp16 / ours,
                    "gbps": gbps,
                    "pct_bw": 100 * gbps / bandwidth,
                }
            )
            print(
                f"2:4 {k}x{n} M={m} b4 g128: {ours * 1e3:.1f} us  fp16 {fp16 * 1e3:.1f} us  "
                f"x{fp16 / ours:.2f}  {100 * gbps / bandwidth:.0f}% bw",
                flush=True,
            )
        del copies, w16
    return rows
