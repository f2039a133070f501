"""Kernel tests run the Triton kernels on the CPU through the interpreter when there is no GPU.

TRITON_INTERPRET must be set before ``allocator.kernels.matmul`` decorates its kernels.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
