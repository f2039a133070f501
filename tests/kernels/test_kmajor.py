"""The K-major layout and its kernels (interpreter on the CPU) against the fp64 reference."""

from __future__ import annotations

import pytest
import torch
from allocator.kernels import autotune
from allocator.kernels.autotune import KernelConfig, kmajor_block_k, kmajor_candidates, split_for
from allocator.kernels.kmajor import launch_kmajor, tiles_inside_groups
from allocator.kernels.layout import (
    KMAJOR_ALIGN,
    from_kmajor,
    kmajor_k,
    pair_order,
    to_kmajor,
)
from allocator.kernels.prepare import prepare, run_config

from allocator.quant.packing import pack_codes, plane_widths

from ._helpers import random_packed, reference_out, rel_err

K, N = 200, 40  # ragged: K not a multiple of any tile (zero-padded to 256), N not of BLOCK_N
TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("bits", range(1, 9))
def test_kmajor_round_trip_and_pair_order(bits: int) -> None:
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (K, 7), generator=gen, dtype=torch.int32)
    planes = pack_codes(codes, bits)
    words = to_kmajor(planes, bits, K)
    assert [tuple(w.shape) for w in words] == [
        (7, kmajor_k(K) * w // 32) for w in plane_widths(bits)
    ]
    assert all(torch.equal(a, b) for a, b in zip(from_kmajor(words, bits, K), planes, strict=True))
    # code k of column n: plane bits of word k // per at the pair-interleaved offset
    width = plane_widths(bits)[0]
    per, offsets = 32 // width, pair_order(width)
    word = words[0].to(torch.int64) & 0xFFFFFFFF
    for k in (0, 1, 2, per - 1, per, K - 1):
        got = (word[:, k // per] >> offsets[k % per]) & ((1 << width) - 1)
        assert torch.equal(got, (codes[k] & ((1 << width) - 1)).to(torch.int64))
    assert kmajor_k(K) % KMAJOR_ALIGN == 0 and (words[0][:, -1] == 0).all()  # zero padding


def _check(bits, group, m, dtype, dot, block_k, split, device, block_n=32):
    planes, scales, zeros = random_packed(K, N, bits, group, bits * 100 + m, device)
    words = to_kmajor(planes, bits, K)
    x = torch.randn(m, K, device=device).to(dtype)
    out = torch.full((m, N), float("nan"), dtype=dtype, device=device)  # poisoned
    block_m = 16 if dot else 1 << (m - 1).bit_length()
    launch_kmajor(x, words, scales, zeros, bits, group, K, dot=dot, block_m=block_m,
                  block_n=block_n, block_k=block_k, split_k=split, out=out)  # fmt: skip
    assert not out.isnan().any(), "unwritten outputs"
    err = rel_err(out, reference_out(x, planes, scales, zeros, bits, group, K))
    assert err < TOL[dtype], f"rel err {err:.2e}"


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize(("m", "dtype"), [(1, torch.float16), (3, torch.float32)])
def test_gemv_matches_fp64_reference(bits, m, dtype, device) -> None:
    """Split-K over 64-wide tiles, then one program per column tile over 128-wide tiles."""
    _check(bits, 64, m, dtype, False, 64, 3, device)
    _check(bits, 128, m, dtype, False, 128, 1, device)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize(
    ("m", "dtype"), [(1, torch.float32), (5, torch.float16), (17, torch.float16)]
)
def test_dot_matches_fp64_reference(bits, m, dtype, device) -> None:
    _check(bits, 64, m, dtype, True, 32, 3, device)
    _check(bits, 128, m, dtype, True, 128, 1, device, block_n=64)


def test_gemv_bf16(device) -> None:
    """(The interpreter's tl.dot mishandles bf16, so the bf16 dot is checked on the GPU only.)"""
    _check(4, 64, 2, torch.bfloat16, False, 64, 2, device)


def test_one_group_for_all_of_k(device) -> None:
    """group_size >= K (per-channel): any tile lies in the single group."""
    assert tiles_inside_groups(K, 128, K) and not tiles_inside_groups(96, 64, K)
    _check(4, K, 2, torch.float32, True, 128, 2, device)
    _check(8, K, 1, torch.float32, False, 64, 1, device)
    with pytest.raises(ValueError, match="crosses groups"):
        _check(4, 96, 1, torch.float32, False, 64, 1, device)


def test_split_and_block_k_from_the_shape() -> None:
    assert split_for(224, 64, 132) == 3  # 8192 x 28672, 128-wide tiles: 3 x 224 >= 4 x 132
    assert split_for(32, 32, 132) == 16  # 4096 x 4096: capped at 2 K tiles a split
    assert split_for(10_000, 64, 132) == 1
    assert kmajor_block_k(128, 4096) == 128 and kmajor_block_k(32, 4096) == 32
    assert kmajor_block_k(100, 4096) is None and kmajor_block_k(4096, 4096) == 128


@pytest.mark.parametrize("m", [1, 3, 16, 40, 65])
@pytest.mark.parametrize("group", [64, 100])
def test_default_candidates_run(m, group, device) -> None:
    """The untimed default of every M class, through a prepared weight, on a ragged shape
    (group 100 has no tile inside its groups: the dequantize path)."""
    planes, scales, zeros = random_packed(K, N, 3, group, m, device)
    weight = prepare(planes, scales, zeros, 3, group, K)
    pool = kmajor_candidates(m, N, K, group, sms=4)
    assert 1 <= len(pool) <= 20
    config = pool[0]
    assert config.kmajor == (group == 64 and m <= autotune.KMAJOR_MAX_M)
    x = torch.randn(m, K, device=device)
    out = run_config(x, weight, config)
    assert rel_err(out, reference_out(x, planes, scales, zeros, 3, group, K)) < 1e-5, config


def test_candidates_offer_torch_kernels_only_where_they_apply() -> None:
    pool = kmajor_candidates(1, 4096, 4096, 128, 132, int4=True, int8=False)
    assert [c.backend for c in pool].count("int4pack") == 1
    assert all(c.backend == "triton" for c in kmajor_candidates(1, 4096, 4096, 128, 132))
    assert pool[0] == KernelConfig(16, 128, 128, 4, 1, pool[0].split_k, use_dot=True, kmajor=True)
