"""The real SmolLM2 checkpoint has exactly the module names the matching tests use."""

from __future__ import annotations

import pytest

from allocator.export import export_plan

from .conftest import random_plan


@pytest.mark.model
def test_real_smollm2_names_and_llamacpp_export(module_names, units):
    from allocator.models.loader import load_model
    from allocator.models.units import find_units

    real = load_model("smollm2").model
    assert [n for n, _ in real.named_modules()] == module_names
    real_units = find_units(real)
    assert [(u.name, u.shape, u.tie) for u in real_units] == [
        (u.name, u.shape, u.tie) for u in units
    ]
    result = export_plan(random_plan(real_units, "llamacpp", seed=3), "llamacpp", units=real_units)
    assert any(line.startswith("size: planned") for line in result.report)
