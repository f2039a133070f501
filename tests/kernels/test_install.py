"""The project never installs a top-level ``kernels`` package that transformers would probe."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROBE = textwrap.dedent(
    """
    import importlib.util, torch, transformers
    import allocator.kernels.ops
    spec = importlib.util.find_spec("kernels")
    assert spec is None or "allocator" not in (spec.origin or ""), spec
    from transformers.utils.import_utils import is_kernels_available
    assert not is_kernels_available() or spec is not None
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    model = LlamaForCausalLM(config).eval()
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 64) and torch.isfinite(logits).all()
    print("ok", allocator.kernels.__name__)
    """
)


def test_transformers_loads_a_model_with_the_project_installed(tmp_path) -> None:
    # run outside the checkout so only what is installed is importable
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok allocator.kernels" in result.stdout


CHECKOUT = Path(__file__).resolve().parents[2]


def test_this_test_session_imports_the_installed_kernels_package_not_the_checkouts() -> None:
    # pytest runs from the checkout, whose kernels/ folder must stay behind site-packages
    # (pyproject's --import-mode=append, tests/conftest.py)
    from transformers.utils.import_utils import is_kernels_available

    spec = importlib.util.find_spec("kernels")
    ours = CHECKOUT / "kernels"
    assert not is_kernels_available() or (
        spec is not None and not Path(spec.origin or "").is_relative_to(ours)
    ), spec


@pytest.mark.slow
def test_python_m_allocator_loads_a_model_when_run_from_the_checkout(tmp_path) -> None:
    from tests.helpers import save_tiny_model

    paths = save_tiny_model(tmp_path, layers=1)
    command = [sys.executable, "-m", "allocator", "eval", "--model", str(paths["model"]),
               "--text", str(paths["calib"]), "--windows", "1", "--seq-len", "16"]  # fmt: skip
    result = subprocess.run(command, cwd=CHECKOUT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CUDAProperties" not in result.stderr
