"""Third-party import noise (torchao's optional extensions, torch pytree deprecations) is
dropped at its source loggers; ALLOCATOR_LIBRARY_LOGS=1 shows it again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = "import allocator.models, transformers.quantizers"
NOISE = ("Failed to load", "is an Enum subclass")


def _stderr(**env: str) -> str:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300,
        env={**os.environ, **env},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stderr


@pytest.mark.slow
def test_known_library_noise_is_dropped() -> None:
    pytest.importorskip("transformers")
    loud = _stderr(ALLOCATOR_LIBRARY_LOGS="1")
    if not any(text in loud for text in NOISE):
        pytest.skip("this install prints none of the known noise")
    quiet = _stderr()
    assert not any(text in quiet for text in NOISE), quiet
