"""A tiny Llama folder (BPE tokenizer, calibration text) shared by the deploy tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import save_tiny_model


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_tiny_model(tmp_path_factory.mktemp("deploy"))
