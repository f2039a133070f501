"""The fused Triton kernels (interpreter on the CPU) against an fp64 reference."""

from __future__ import annotations

import pytest
import torch
from allocator.kernels.autotune import KernelConfig, candidates, next_pow2
from allocator.kernels.dequant import dequant_matmul, dequantize_triton
from allocator.kernels.matmul import launch_fused
from allocator.kernels.reference import dequantize_planes

from ._helpers import random_packed, reference_out, rel_err

K, N = 200, 40  # ragged: K not a multiple of 128 (a partial last group), N not of any tile
TOL = {torch.float32: 1e-5, torch.float16: 1e-3}


def _configs(m: int) -> list[KernelConfig]:
    """Configs covering each mode: tiles inside a group (split-K) and group edges inside tiles
    (BLOCK_K=128 with g64), one-load-per-code and word-once unpacking, GEMV reductions per tile
    and once at the end (acc3), tl.dot with rows padded to 16."""
    bm = next_pow2(m)
    dot = [
        KernelConfig(max(16, bm), 32, 32, use_dot=True, split_k=3),
        KernelConfig(max(16, bm), 64, 128, use_dot=True, split_k=1, reshape=True),
    ]
    if m > 8:
        return dot
    gemv = [
        KernelConfig(bm, 32, 64, split_k=2),
        KernelConfig(bm, 32, 128, split_k=1, reshape=True, acc3=True),
    ]
    return gemv + dot[:1] if m > 1 else gemv


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("group", [64, 128])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_fused_matches_fp64_reference(bits, group, m, dtype, device) -> None:
    seed = hash((bits, group, m, str(dtype))) % 2**31
    planes, scales, zeros = random_packed(K, N, bits, group, seed, device)
    for i, config in enumerate(_configs(m)):
        torch.manual_seed(seed + i)
        x = torch.randn(m, K, device=device).to(dtype)  # fresh inputs for each check
        out = torch.full((m, N), float("nan"), dtype=dtype, device=device)  # poisoned
        launch_fused(x, planes, scales, zeros, bits, group, K, config, out=out)
        assert not out.isnan().any(), f"unwritten outputs with {config}"
        err = rel_err(out, reference_out(x, planes, scales, zeros, bits, group, K))
        assert err < TOL[dtype], f"rel err {err:.2e} with {config}"


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_dequant_kernel_matches_reference(bits, device) -> None:
    planes, scales, zeros = random_packed(K, N, bits, 64, bits, device)
    dense = dequantize_triton(planes, scales, zeros, bits, 64, K, torch.float32)
    expected = dequantize_planes(planes, scales, zeros, bits, 64, K, torch.float64)
    torch.testing.assert_close(dense.double(), expected, rtol=1e-6, atol=1e-7)
    x = torch.randn(5, K, device=device)
    out = dequant_matmul(x, planes, scales, zeros, bits, 64, K)
    assert rel_err(out, reference_out(x, planes, scales, zeros, bits, 64, K)) < 1e-5


def test_split_k_counters_reset_between_calls(device) -> None:
    """The per-tile counters are reused: a second split-K call must be right too."""
    planes, scales, zeros = random_packed(256, 40, 4, 32, 7, device)
    config = KernelConfig(1, 32, 32, split_k=8)
    for _ in range(2):
        x = torch.randn(1, 256, device=device)
        out = launch_fused(x, planes, scales, zeros, 4, 32, 256, config)
        assert rel_err(out, reference_out(x, planes, scales, zeros, 4, 32, 256)) < 1e-5


def test_every_default_candidate_runs(device) -> None:
    """The first (untimed default) candidate of each M class is valid on a ragged shape."""
    planes, scales, zeros = random_packed(96, 50, 3, 32, 11, device)
    for m in (1, 2, 5, 8, 16, 40, 65):
        config = candidates(m, 50, 96, 32, sms=4)[0]
        x = torch.randn(m, 96, device=device)
        run = dequant_matmul if config.dequant else launch_fused
        out = run(x, planes, scales, zeros, 3, 32, 96, config)
        assert rel_err(out, reference_out(x, planes, scales, zeros, 3, 32, 96)) < 1e-5, config
