"""The Python API a quantization library builds on: typed entry points, one error contract."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from typing import Any

import pytest

import allocator
from allocator import (
    AllocatorError,
    Constraints,
    InputError,
    Option,
    SchemaError,
    SensitivityTable,
    Unit,
)
from allocator.schema import io

SHAPES = {
    "model.layers.0.self_attn.q_proj": (64, 64),
    "model.layers.0.mlp.down_proj": (64, 128),
}


def _losses() -> dict[str, dict[Any, float]]:
    return {
        "model.layers.0.self_attn.q_proj": {(4, 64): 0.01, "b3-g64": 0.04, Option(bits=2): 0.2},
        "model.layers.0.mlp.down_proj": {(4, 64): 0.02, "b3-g64": 0.09, Option(bits=2): -1e-12},
    }


def test_entry_points_are_real_functions_with_signatures() -> None:
    for name in ("solve", "pareto", "check_plan", "export_plan", "size_model_for"):
        fn = getattr(allocator, name)
        assert inspect.isfunction(fn), name
        params = inspect.signature(fn).parameters
        assert "args" not in params and "kwargs" not in params, name
    assert list(inspect.signature(allocator.solve).parameters)[:2] == ["table", "constraints"]
    assert "__getattr__" not in vars(allocator)
    assert set(allocator.__all__) <= set(vars(allocator))


def test_import_allocator_does_not_import_torch() -> None:
    code = "import sys, allocator; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_from_losses_accepts_tuples_options_and_strings_and_clamps_noise() -> None:
    table = SensitivityTable.from_losses(_losses(), SHAPES)
    assert [o.key for o in table.options] == ["b4-g64", "b3-g64", "b2-g128"]
    assert table.losses["model.layers.0.mlp.down_proj"]["b2-g128"] == 0.0  # float noise
    assert table.unit("model.layers.0.mlp.down_proj").kind == "down_proj"
    assert table.unit("model.layers.0.mlp.down_proj").layer == 0
    pairs = {("a", (4, -1, True)): 0.5, ("a", "fp16"): 0.0}
    sym = SensitivityTable.from_losses(pairs, {"a": 4096})
    assert sym.losses == {"a": {"b4-gc-sym": 0.5, "fp16": 0.0}}
    gptq = SensitivityTable.from_losses({"a": {(4, 128): 0.1}}, {"a": (8, 128)}, target="gptqmodel")
    assert [o.key for o in gptq.options] == ["b4-g128-sym"]  # GPTQ libraries default to sym
    with pytest.raises(InputError, match="no shape"):
        SensitivityTable.from_losses(_losses(), {})


def test_per_channel_minus_one_as_gptq_libraries_write_it() -> None:
    assert Option(bits=4, group_size=-1).key == "b4-gc"
    assert Option.parse({"bits": 4, "group_size": -1, "symmetric": True}).key == "b4-gc-sym"
    c = Constraints.model_validate({"budget": {"avg_bits": 4}, "allowed": {"group_size": [-1]}})
    assert c.allowed is not None and c.allowed.group_size == [None]


@pytest.mark.parametrize(
    "build",
    [
        lambda: Option(bits=9),
        lambda: Unit(name="x", shape=(0, 4)),
        lambda: Constraints.model_validate({"budget": {"avg_bits": 3}, "budgett": 1}),
        lambda: SensitivityTable.from_losses({"a": {"b4-g128": -0.5}}, {"a": (4, 128)}),
        lambda: allocator.Plan.model_validate_json("{}"),
    ],
)
def test_every_schema_error_is_an_allocator_error_and_a_value_error(build: Any) -> None:
    with pytest.raises(SchemaError) as info:
        build()
    assert isinstance(info.value, AllocatorError) and isinstance(info.value, ValueError)
    assert info.value.errors and info.value.model


def test_dicts_are_accepted_wherever_a_schema_object_is() -> None:
    table = SensitivityTable.from_losses(_losses(), SHAPES)
    plan = allocator.solve(table.model_dump(), {"budget": {"avg_bits": 5.0}})
    assert plan.status == "optimal"
    assert allocator.check_plan(plan.model_dump(), table, {"budget": {"avg_bits": 5.0}}) == []
    points = allocator.pareto(table, {"budget": {"avg_bits": 4}}, budgets=[4.5, 6.0])
    assert [p.feasible for p in points] == [True, True]
    with pytest.raises(InputError, match="give a SensitivityTable, a dict"):
        allocator.solve(42, {"budget": {"avg_bits": 5.0}})  # type: ignore[arg-type]


def test_newer_format_version_is_refused_clearly(tmp_path: Any) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"format_version": 99, "budget": {"avg_bits": 3}}))
    with pytest.raises(InputError, match=r"format_version 99, newer than the 1.*upgrade"):
        io.load_constraints(path)


@pytest.mark.parametrize("name", ["constraints", "table", "plan"])
def test_json_schema_describes_every_field_with_examples(name: str) -> None:
    schema = io.json_schema(name)
    models = {"(top)": schema, **schema.get("$defs", {})}
    for model, body in models.items():
        assert body.get("description"), model
        for field, spec in body.get("properties", {}).items():
            assert spec.get("description"), f"{model}.{field}"
            assert "examples" in spec or "$ref" in spec or "items" in spec, f"{model}.{field}"
