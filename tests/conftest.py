"""Shared fixtures and markers: ``gpu`` tests skip without CUDA.

Without a GPU the Triton kernels run through Triton's interpreter. ``TRITON_INTERPRET`` is set
here, before any test module is collected: Triton reads it when a kernel is decorated, and a
module collected earlier than ``tests/kernels`` may import Triton (torch.compile, torchao), so
setting it later left some helpers compiled and others interpreted. CPU layers never call the
kernels (``QuantLinear`` uses them for CUDA inputs only), so the other tests are unaffected.

The checkout's top-level ``kernels/`` folder (installed as ``allocator.kernels``) would shadow
the Hugging Face ``kernels`` package that transformers imports whenever the checkout is on
``sys.path`` ahead of site-packages, as ``python -m pytest`` and pytest's rootdir insertion
put it; the checkout is moved behind the installed packages before anything imports them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]


def _checkout_behind_installed_packages() -> None:
    here = [p for p in sys.path if Path(p or os.curdir).resolve() == CHECKOUT]
    for entry in here:
        sys.path.remove(entry)
    sys.path.append(str(CHECKOUT))  # tests and benchmarks still import from the checkout


_checkout_behind_installed_packages()

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
