"""Quick autotuning: a few pruned configs per problem, timed once, cached in memory and on disk.

The cache key is (M bucket, N, K, bits, group size, dtype, device name), prefixed ``km|`` for
prepared weights (``kernels.prepare``: the K-major kernels, torch's int4/int8 kernels, dequant
+ cuBLAS). Set ``ALLOCATOR_KERNEL_CACHE=/path/file.json`` to keep choices across processes.
Without a GPU (the Triton interpreter) nothing is timed: the first candidate is used, which for
prepared weights is the statically cheapest kernel (``benchmarks/results/kernels_static.md``).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

GEMV_MAX_M = 8
FUSED_MAX_M = 64
MAX_TILE_ELEMENTS = 16384  # BLOCK_M * BLOCK_K * BLOCK_N of the GEMV broadcast product

_CACHE: dict[str, KernelConfig] = {}
_DISK_LOADED: set[str] = set()


@dataclass(frozen=True)
class KernelConfig:
    """Tile shape and launch parameters of one fused-kernel launch (or the dequant path)."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 2
    split_k: int = 1
    use_dot: bool = False
    reshape: bool = False
    dequant: bool = False
    acc3: bool = False
    kmajor: bool = False  # the K-major kernels of kernels.kmajor (use_dot: tensor cores)
    backend: str = "triton"  # or "int4pack" / "int8pack": torch's own kernels (block_* unused)


def next_pow2(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


def _block_k(block_k: int, group_size: int) -> int:
    """Shrink a K tile to the group size when that keeps tiles inside one group."""
    if 32 <= group_size < block_k and group_size == next_pow2(group_size):
        return group_size
    return block_k


def _split(n_tiles_mn: int, n_k_tiles: int, programs: int) -> int:
    """Split-K factor giving about ``programs`` programs in all, at most one per K tile."""
    return max(1, min(n_k_tiles, -(-programs // max(1, n_tiles_mn))))


def _gemv_candidates(m: int, n: int, k: int, group_size: int, sms: int) -> list[KernelConfig]:
    """Broadcast-reduce configs: (block_n, block_k, warps, reshape, acc3), two split factors."""
    out = []
    block_m = next_pow2(m)
    shapes = [
        (64, 128, 4, False, False),
        (128, 64, 4, False, False),
        (64, 128, 4, True, False),
        (32, 256, 4, False, False),
        (128, 128, 8, False, False),
        (256, 64, 8, True, False),
        (64, 64, 4, True, True),
        (128, 64, 8, True, True),
        (256, 32, 8, True, True),
    ]
    for block_n, block_k, warps, reshape, acc3 in shapes:
        block_k = _block_k(block_k, group_size)
        limit = MAX_TILE_ELEMENTS if not acc3 else 64 * 32 * warps  # 64 accumulators a thread
        while block_m * block_n * block_k > limit and block_k > 32:
            block_k //= 2
        while block_m * block_n * block_k > limit and block_n > 32:
            block_n //= 2
        for waves in (4, 8):
            split = _split(-(-n // block_n), -(-k // block_k), waves * sms)
            out.append(
                KernelConfig(block_m, block_n, block_k, warps, 2, split, False, reshape, acc3=acc3)
            )
    return out


def _gemm_candidates(m: int, n: int, k: int, group_size: int, sms: int) -> list[KernelConfig]:
    """tl.dot configs (M >= 2, rows padded to 16), and dequant + matmul above FUSED_MAX_M."""
    out = []
    block_m = min(max(16, next_pow2(m)), 64)
    shapes = [
        (block_m, 64, 64, 4, 3, False),
        (block_m, 128, 64, 4, 3, False),
        (block_m, 128, 32, 8, 4, False),
        (block_m, 64, 64, 4, 3, True),
        (block_m, 128, 64, 4, 3, True),
    ]
    if m > FUSED_MAX_M:
        shapes = [*shapes[1:2], *shapes[3:], (128, 128, 64, 8, 3, True)]
    for block_m, block_n, block_k, warps, stages, reshape in shapes:
        block_k = _block_k(block_k, group_size)
        tiles = -(-n // block_n) * -(-m // block_m)
        split = _split(tiles, -(-k // block_k), 2 * sms) if m <= FUSED_MAX_M else 1
        out.append(KernelConfig(block_m, block_n, block_k, warps, stages, split, True, reshape))
    if m > FUSED_MAX_M:
        out.append(KernelConfig(64, 64, 64, 4, 2, 1, dequant=True))
        out.append(KernelConfig(64, 128, 64, 4, 2, 1, reshape=True, dequant=True))
    return out


KMAJOR_MAX_M = 64  # above: dequantize once + cuBLAS, or torch's kernels
KMAJOR_GEMV_MAX_M = 1  # the CUDA-core GEMV is a candidate up to here (spills at M = 4)


def split_for(tiles_mn: int, n_k_tiles: int, sms: int, waves: int = 4, min_tiles: int = 2) -> int:
    """Split-K from the shape: about ``waves`` programs per SM in all, each at least
    ``min_tiles`` K tiles (the fixup of a split costs one extra pass over the output tile)."""
    want = -(-waves * sms // max(1, tiles_mn))
    return max(1, min(want, n_k_tiles // min_tiles))


def kmajor_block_k(group_size: int, in_features: int, want: int = 128) -> int | None:
    """The largest power-of-two K tile <= want that stays inside a group (None: none >= 32)."""
    block_k = want
    while block_k >= 32:
        if group_size % block_k == 0 or group_size >= in_features:
            return block_k
        block_k //= 2
    return None


def kmajor_candidates(
    m: int,
    n: int,
    k: int,
    group_size: int,
    sms: int,
    *,
    int4: bool = False,
    int8: bool = False,
) -> list[KernelConfig]:
    """Configs for a prepared weight; the first is the default (statically the cheapest).

    tl.dot on the dequantized tile for every M <= 64 (rows padded to 16: M = 1..16 share one
    tile), the CUDA-core GEMV for M = 1, torch's int4/int8 kernels where they apply, and
    dequantize + cuBLAS above 64 rows. Split-K comes from the shape (``split_for``); a half and
    a double of it are candidates too.
    """
    out: list[KernelConfig] = []
    block_k = kmajor_block_k(group_size, k)
    if block_k is not None and m <= KMAJOR_MAX_M:
        block_m = min(max(16, next_pow2(m)), 64)
        n_k = -(-k // block_k)
        shapes = [
            (block_m, 128, 4, 1),
            (block_m, 64, 4, 1),
            (block_m, 128, 8, 1),
            (block_m, 128, 4, 2),
        ]
        for bm, bn, warps, stages in shapes:
            split = split_for(-(-n // bn) * -(-m // bm), n_k, sms)
            for sk in dict.fromkeys([split, max(1, split // 2), min(n_k, split * 2)]):
                out.append(
                    KernelConfig(bm, bn, block_k, warps, stages, sk, use_dot=True, kmajor=True)
                )
        if m <= KMAJOR_GEMV_MAX_M:
            for bn in (128, 64):
                split = split_for(-(-n // bn), n_k, sms)
                out.append(KernelConfig(next_pow2(m), bn, block_k, 4, 1, split, kmajor=True))
    if int4:
        out.append(KernelConfig(0, 0, 0, backend="int4pack"))
    if int8:
        out.append(KernelConfig(0, 0, 0, backend="int8pack"))
    if m > KMAJOR_MAX_M or block_k is None:
        out.append(KernelConfig(64, 64, 64, 4, 2, 1, dequant=True))
        out.append(KernelConfig(64, 128, 64, 4, 2, 1, reshape=True, dequant=True))
    return list(dict.fromkeys(out))


def candidates(m: int, n: int, k: int, group_size: int, sms: int) -> list[KernelConfig]:
    """A small pruned config space for an (M, N, K) problem; the first is the default.

    GEMV configs for M <= 8, tl.dot configs for M >= 2 (so M = 2..8 may pick either), and the
    dequant + matmul path for M > FUSED_MAX_M; the timing decides.
    """
    out: list[KernelConfig] = []
    if m <= GEMV_MAX_M:
        out += _gemv_candidates(m, n, k, group_size, sms)
    if m >= 2:
        out += _gemm_candidates(m, n, k, group_size, sms)
    return list(dict.fromkeys(out))


def _key(x2d: torch.Tensor, n: int, k: int, bits: int, group_size: int) -> str:
    m = x2d.shape[0]
    bucket = next_pow2(m) if m <= 1024 else 1024 * -(-m // 1024)
    device = torch.cuda.get_device_name(x2d.device) if x2d.is_cuda else "cpu"
    return f"{bucket}|{n}|{k}|{bits}|{group_size}|{x2d.dtype}|{device}"


def _cache_path() -> Path | None:
    path = os.environ.get("ALLOCATOR_KERNEL_CACHE")
    return Path(path) if path else None


def _load_disk() -> None:
    path = _cache_path()
    if path is None or str(path) in _DISK_LOADED:
        return
    _DISK_LOADED.add(str(path))
    if path.exists():
        for key, value in json.loads(path.read_text()).items():
            _CACHE.setdefault(key, KernelConfig(**value))


def _save_disk() -> None:
    path = _cache_path()
    if path is None:
        return
    text = json.dumps({key: asdict(config) for key, config in sorted(_CACHE.items())}, indent=1)
    try:
        from allocator.schema.io import atomic_write_text
    except ImportError:  # the kernels alone (a GPU machine without the project's dependencies)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return
    atomic_write_text(path, text)


def rotating_copies(tensors: list[torch.Tensor], l2_bytes: int) -> list[list[torch.Tensor]]:
    """Enough copies of ``tensors`` (at most 64) that together they span 3x the L2 cache."""
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    count = max(1, min(64, -(-3 * l2_bytes // max(1, nbytes))))
    return [tensors] + [[t.clone() for t in tensors] for _ in range(count - 1)]


def gpu_time_ms(calls: list[Callable[[], object]], replays: int = 5) -> float:
    """Median GPU time of one call, launch overhead excluded.

    The calls (each on its own copy of the data, so none finds it in L2) are captured in one
    CUDA graph and replayed; the time of a replay over the number of calls.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:  # compile and allocate workspaces outside the capture
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    times = []
    for _ in range(replays):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(calls))
    return sorted(times)[len(times) // 2]


def _build_errors() -> tuple[type[BaseException], ...]:
    """Errors of a config that cannot be compiled or launched on this GPU."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    return (CompilationError, OutOfResources, RuntimeError)


def tune(
    key: str,
    pool: list[KernelConfig],
    timed: bool,
    calls_for: Callable[[KernelConfig], list[Callable[[], object]]],
) -> KernelConfig:
    """The cached choice for ``key``, else the fastest of ``pool`` (the first when not timed)."""
    _load_disk()
    if key in _CACHE:
        return _CACHE[key]
    best = pool[0]
    if timed and len(pool) > 1:
        timings = {}
        for config in pool:
            try:
                timings[config] = gpu_time_ms(calls_for(config))
            except _build_errors() as exc:  # a config this GPU cannot build is skipped
                warnings.warn(f"kernel config {config} skipped: {exc}", stacklevel=2)
        if not timings:
            raise RuntimeError(f"no kernel config could run for {key}")
        best = min(timings, key=timings.__getitem__)
    _CACHE[key] = best
    _save_disk()
    return best


def choose_config(
    x2d: torch.Tensor,
    planes: list[torch.Tensor],
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
    run: Callable[..., torch.Tensor],
    run_dequant: Callable[..., torch.Tensor],
) -> KernelConfig:
    """The cached best config for this problem, timing each candidate the first time."""
    _load_disk()
    n = scales.shape[1]
    key = _key(x2d, n, in_features, bits, group_size)
    sms = torch.cuda.get_device_properties(x2d.device).multi_processor_count if x2d.is_cuda else 4
    pool = candidates(x2d.shape[0], n, in_features, group_size, sms)
    copies: list[list[torch.Tensor]] = []
    if x2d.is_cuda and key not in _CACHE:
        l2_bytes = torch.cuda.get_device_properties(x2d.device).L2_cache_size
        copies = rotating_copies([*planes, scales, zeros], l2_bytes)

    def calls_for(config: KernelConfig) -> list[Callable[[], object]]:
        fn = run_dequant if config.dequant else run
        return [
            lambda c=c: fn(x2d, c[:-2], c[-2], c[-1], bits, group_size, in_features, config)
            for c in copies
        ]

    return tune(key, pool, x2d.is_cuda, calls_for)
