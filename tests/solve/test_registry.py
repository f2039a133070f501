"""The solver registry owns its metadata: aliases, descriptions, installed dependencies."""

from __future__ import annotations

import importlib
import json

import pytest

from allocator.cli.main import main
from allocator.errors import UnsupportedError
from allocator.registry import Registry
from allocator.solve.registry import BACKENDS, installed_solvers, solver_table


class _Missing:
    """A backend whose library is not installed."""

    requires = ("allocator_no_such_module_anywhere",)


class _Present:
    description = "needs nothing"


def test_registry_resolves_aliases_and_filters_by_installed_dependencies() -> None:
    registry: Registry[type] = Registry("thing")
    registry.register("present", aliases=("here",))(_Present)
    registry.register("missing")(_Missing)
    assert registry.names() == ["missing", "present"]
    assert registry.get("here") is _Present and "here" in registry
    assert registry.installed() == ["present"]
    assert registry.description("missing") == "A backend whose library is not installed."
    assert registry.help() == "missing, present (here)"
    with pytest.raises(UnsupportedError, match="choose one of: here, missing, present"):
        registry.get("absent")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("here")(_Present)


def test_solver_table_lists_every_backend_with_its_metadata() -> None:
    rows = {row["name"]: row for row in solver_table()}
    assert set(rows) == set(BACKENDS.names())
    assert rows["ilp"]["installed"] and rows["ilp"]["exact"]
    assert "max_distinct" in rows["ilp"]["supports"]
    assert rows["pulp_cbc"]["aliases"] == ["pulp"] and BACKENDS.get("pulp") is BACKENDS.get(
        "pulp_cbc"
    )
    assert all(row["description"] for row in rows.values())
    installed = installed_solvers()
    assert installed == [n for n, row in rows.items() if row["installed"]]


def test_solvers_command_lists_only_installed_backends(capsys, monkeypatch) -> None:
    registry = importlib.import_module("allocator.solve.registry")
    real = registry.importable
    monkeypatch.setattr(registry, "importable", lambda mods: "pulp" not in mods and real(mods))
    assert main(["solvers", "--json"]) == 0
    listed = {row["name"] for row in json.loads(capsys.readouterr().out)}
    assert "ilp" in listed and not listed & {"pulp_cbc", "pulp_highs"}
    assert main(["solvers", "--all"]) == 0
    assert "pulp_cbc, pulp" in capsys.readouterr().out
