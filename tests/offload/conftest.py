"""Tiny models of several families saved as safetensors folders, for offloaded vs in-memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_ids, tiny_model

FAMILIES = ["llama", "gemma3", "gpt2", "qwen2", "phi3", "gpt_neox"]


@pytest.fixture(scope="session")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """family -> a folder written by save_pretrained (safetensors; GPT-NeoX with its old
    ``embed_out`` name, GPT-2 with Conv1D weights and a tied head)."""
    root = tmp_path_factory.mktemp("offload-models")
    out = {}
    for family in [*FAMILIES, "gemma2", "bert"]:
        folder = root / family
        tiny_model(family).save_pretrained(folder)
        out[family] = folder
    return out


@pytest.fixture
def ids() -> torch.Tensor:
    return tiny_ids(4, 24)


def in_memory(folder: Path) -> torch.nn.Module:
    from allocator.models.loader import _from_pretrained

    return _from_pretrained(folder, torch.float32).eval()


def offloaded(folder: Path, **kwargs: object) -> torch.nn.Module:
    from allocator.models.offload import load_offloaded

    return load_offloaded(folder, **kwargs)  # type: ignore[arg-type]


def max_relative_gap(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for unit, row in a.items():
        assert row.keys() == b[unit].keys()
        for key, value in row.items():
            worst = max(worst, abs(value - b[unit][key]) / max(abs(value), 1e-30))
    return worst


def same_folders(a: Path, b: Path) -> list[str]:
    """Names of the files that differ (or exist in one folder only)."""
    names = sorted({p.name for p in a.iterdir()} | {p.name for p in b.iterdir()})
    return [
        n for n in names
        if not ((a / n).is_file() and (b / n).is_file() and (a / n).read_bytes() == (b / n).read_bytes())
    ]  # fmt: skip
