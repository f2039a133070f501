"""Shared fixtures and markers: ``gpu`` tests skip without CUDA.

Without a GPU the Triton kernels run through Triton's interpreter. ``TRITON_INTERPRET`` is set
here, before any test module is collected: Triton reads it when a kernel is decorated, and a
module collected earlier than ``tests/kernels`` may import Triton (torch.compile, torchao), so
setting it later left some helpers compiled and others interpreted. CPU layers never call the
kernels (``QuantLinear`` uses them for CUDA inputs only), so the other tests are unaffected.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

if importlib.util.find_spec("torch") is not None:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
