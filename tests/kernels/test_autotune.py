"""The pruned config space and the config cache (memory and disk)."""

from __future__ import annotations

import json

import pytest
import torch
from allocator.kernels import autotune
from allocator.kernels.autotune import KernelConfig, candidates, choose_config

from ._helpers import random_packed


@pytest.mark.parametrize("m", [1, 2, 3, 8, 9, 16, 64, 65, 512])
@pytest.mark.parametrize("group", [32, 64, 128, 100])
def test_candidates_are_small_and_valid(m: int, group: int) -> None:
    pool = candidates(m, 4096, 4096, group, sms=132)
    assert 1 <= len(pool) <= 32
    for config in pool:
        for block in (config.block_m, config.block_n, config.block_k):
            assert block & (block - 1) == 0
        assert config.dequant or config.block_m >= (16 if config.use_dot else m)
        assert config.block_k >= 32 and config.split_k >= 1
        if group in (32, 64, 128) and not config.dequant:
            assert group % config.block_k == 0  # tiles stay inside a group
        if not config.use_dot and not config.dequant:
            assert config.block_m * config.block_n * config.block_k <= autotune.MAX_TILE_ELEMENTS
    assert any(c.dequant for c in pool) == (m > autotune.FUSED_MAX_M)


def test_choice_is_cached_in_memory_and_on_disk(tmp_path, monkeypatch) -> None:
    path = tmp_path / "tune.json"
    monkeypatch.setenv("ALLOCATOR_KERNEL_CACHE", str(path))
    monkeypatch.setattr(autotune, "_CACHE", {})
    monkeypatch.setattr(autotune, "_DISK_LOADED", set())
    planes, scales, zeros = random_packed(96, 40, 4, 32, 5)
    x = torch.randn(3, 96)

    def never(*args):
        raise AssertionError("nothing is timed without a GPU")

    config = choose_config(x, planes, scales, zeros, 4, 32, 96, run=never, run_dequant=never)
    assert config == candidates(3, 40, 96, 32, sms=4)[0]
    saved = json.loads(path.read_text())
    assert list(saved.values()) == [config.__dict__]
    monkeypatch.setattr(autotune, "_CACHE", {})
    monkeypatch.setattr(autotune, "_DISK_LOADED", set())
    planted = KernelConfig(4, 32, 32, split_k=2)
    path.write_text(json.dumps({next(iter(saved)): planted.__dict__}))
    again = choose_config(x, planes, scales, zeros, 4, 32, 96, run=never, run_dequant=never)
    assert again == planted
