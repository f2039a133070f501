"""Golden files: each target's exported text for a fixed seeded plan must not drift.

Regenerate after an intended change with ``ALLOCATOR_UPDATE_GOLDEN=1 pytest tests/export``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from allocator.export import export_plan

from .conftest import TARGETS

GOLDEN = Path(__file__).parent / "golden"
EXTENSIONS = {
    "gptqmodel": ".json",
    "autoround": ".json",
    "compressed-tensors": ".recipe.yaml",
    "vllm": ".recipe.yaml",
    "llamacpp": ".tensor-types.txt",
    "torchao": ".json",
    "modelopt": ".yaml",
    "hqq": ".json",
}


@pytest.mark.parametrize("target", TARGETS)
def test_golden(target, target_plans, units, tmp_path):
    result = export_plan(target_plans[target], target, units=units)
    out = tmp_path / f"{target}{EXTENSIONS[target]}"
    written = result.write(out)
    written.append(out.with_name(f"{target}.report.txt"))
    written[-1].write_text("\n".join(result.report) + "\n")
    for path in written:
        golden = GOLDEN / path.name
        if os.environ.get("ALLOCATOR_UPDATE_GOLDEN"):
            golden.write_text(path.read_text())
        assert golden.exists(), f"missing golden {golden}; run with ALLOCATOR_UPDATE_GOLDEN=1"
        assert path.read_text() == golden.read_text(), f"{path.name} differs from its golden file"
