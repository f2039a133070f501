"""Roofline of the low-bit matmul ``x (M x K) @ W (K x N)``: the bytes a call must move and the
time floor they imply at a copy bandwidth (and, for large M, at a tensor-core peak).

Bytes that must move (each read or written once, nothing else): the packed codes
``ceil(K / 32) * 32 * bits / 8 * N`` (the bit planes pad K to 32), fp16 scales and (asymmetric)
zeros ``2 * ceil(K / group) * N`` bytes each, the activations ``M * K * 2`` and the output
``M * N * 2``. fp16 cuBLAS moves ``(K * N + M * K + M * N) * 2``. The floor is bytes over the
bandwidth; the measured device-to-device copy bandwidth (bytes read + written over time) is the
achievable rate it is compared to. ``pct_roofline`` = floor / measured time.
"""

from __future__ import annotations

H100_COPY_GBPS = 3021.0  # measured copy bandwidth in results/kernels_h100.md (H100 80GB HBM3)
H100_FP16_TFLOPS = 989.0  # dense fp16 tensor-core peak of an H100 SXM (spec sheet, not measured)


def quant_bytes(
    k: int, n: int, m: int, bits: int, group: int, *, symmetric: bool = False, act: int = 2
) -> int:
    """Bytes a low-bit call must move: codes, scales (and zeros), activations, output."""
    k_pad = -(-k // 32) * 32
    groups = -(-k // group)
    return k_pad * bits // 8 * n + (1 if symmetric else 2) * 2 * groups * n + (m * k + m * n) * act


def fp16_bytes(k: int, n: int, m: int) -> int:
    return (k * n + m * k + m * n) * 2


def floor_us(nbytes: int, gbps: float) -> float:
    """Memory time floor in microseconds at ``gbps`` GB/s."""
    return nbytes / (gbps * 1e9) * 1e6


def compute_floor_us(k: int, n: int, m: int, tflops: float | None) -> float:
    """Tensor-core time floor of the 2 M N K flops (0 when no peak is given)."""
    return 2 * m * n * k / (tflops * 1e12) * 1e6 if tflops else 0.0


def roofline(
    k: int,
    n: int,
    m: int,
    bits: int,
    group: int,
    gbps: float,
    tflops: float | None = None,
) -> dict:
    """Floors of one (shape, width, group, M) cell for ours and for fp16 cuBLAS."""
    ours = quant_bytes(k, n, m, bits, group)
    fp16 = fp16_bytes(k, n, m)
    compute = compute_floor_us(k, n, m, tflops)
    return {
        "bytes": ours,
        "floor_us": max(floor_us(ours, gbps), compute),
        "fp16_bytes": fp16,
        "fp16_floor_us": max(floor_us(fp16, gbps), compute),
    }
