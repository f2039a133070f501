"""``--server URL`` on solve and pareto goes through a live service (uvicorn on a thread) and
writes the same files as a local run; ``allocator serve`` refuses a public address without keys."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from allocator.cli.main import main
from tests.serve.conftest import live_server

KEY = "alice-secret-1"


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("remote")) as url:
        yield url


def test_solve_and_pareto_on_a_server(server_url: str, tmp_path: Path, capsys) -> None:
    remote, local = tmp_path / "remote.json", tmp_path / "local.json"
    assert main(["solve", "--server", server_url, "--api-key", KEY, "--out", str(remote),
                 "--solver", "mckp", "--quiet"]) == 0  # fmt: skip
    assert main(["solve", "--out", str(local), "--solver", "mckp", "--quiet"]) == 0
    a, b = json.loads(remote.read_text()), json.loads(local.read_text())
    assert a["assignments"] == b["assignments"] and a["avg_bits"] == b["avg_bits"]
    assert main(["check", "--plan", str(remote)]) == 0
    front = tmp_path / "front.csv"
    code = main(["pareto", "--server", server_url, "--api-key", KEY, "--out", str(front),
                 "--budgets", "3,4", "--quiet"])  # fmt: skip
    assert code == 0 and len(front.read_text().splitlines()) == 3
    capsys.readouterr()
    code = main(["solve", "--server", server_url, "--api-key", "wrong-key-1", "--out",
                 str(tmp_path / "x.json")])  # fmt: skip
    assert code == 6 and "401" in capsys.readouterr().err


def test_serve_refuses_public_address_without_keys(monkeypatch, capsys) -> None:
    monkeypatch.delenv("ALLOCATOR_API_KEYS", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "API keys" in capsys.readouterr().err
