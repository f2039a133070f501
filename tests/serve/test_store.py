"""The job store, on sqlite3 (the default), on SQLAlchemy with a SQLite URL, and on a throwaway
PostgreSQL cluster when the PostgreSQL server binaries are installed (skipped otherwise); the
whole app runs a job on PostgreSQL."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from allocator.serve.store import JobStore, SqlJobStore
from tests.serve.conftest import ALICE, make_client, wait

INITDB = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _as_postgres(command: list[str]) -> list[str]:
    if os.geteuid() == 0:  # initdb refuses root: run as the package's 'postgres' user
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]'")
    if not INITDB:
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql)")
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not _user_exists("postgres")):
        pytest.skip("running as root without runuser or a 'postgres' user to run initdb as")
    bindir = Path(INITDB[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="allocator-pg-"))  # pytest's tmp is root-only
    folder.chmod(0o777)
    data = folder / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    initdb = [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"),
             "-w", "start"]  # fmt: skip
    for command in (initdb, start):
        done = subprocess.run(_as_postgres(command), capture_output=True, text=True)
        if done.returncode != 0:  # an environment without a usable server: say why, skip
            shutil.rmtree(folder, ignore_errors=True)
            pytest.skip(f"could not start PostgreSQL ({command[0]}): {done.stderr[-300:]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                     "stop"]), capture_output=True)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def _exercise(store: Any) -> None:
    store.insert("a", "alice", "solve", {"x": 1})
    time.sleep(0.01)
    store.insert("b", "alice", "profile", {"model": "m"})
    store.insert("c", "bob", "run", {})
    assert store.get("a")["settings"] == {"x": 1} and store.get("a")["state"] == "queued"
    assert store.get("zzz") is None
    assert [j["id"] for j in store.list("alice")] == ["b", "a"]
    assert [j["id"] for j in store.list("alice", "queued", limit=1)] == ["b"]
    assert store.next_queued() == "a"
    assert store.transition("a", ("queued",), state="running", started_at=1.0, attempts=1)
    assert not store.transition("a", ("queued",), state="running")
    store.update("a", stage="profile", progress=0.5)
    job = store.get("a")
    assert (job["state"], job["stage"], job["progress"], job["attempts"]) == (
        "running", "profile", 0.5, 1)  # fmt: skip
    assert store.ids_in("running") == ["a"]
    assert store.counts() == {"running": 1, "queued": 2}
    store.delete("c")
    assert store.get("c") is None and store.list("bob") == []
    store.close()


def test_sqlite3_store(tmp_path: Path) -> None:
    _exercise(JobStore(tmp_path / "jobs.sqlite3"))


def test_sqlalchemy_store_on_sqlite(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy")
    _exercise(SqlJobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}"))


def test_sqlalchemy_store_on_postgres(postgres_url: str) -> None:
    _exercise(SqlJobStore(postgres_url))


def test_app_on_postgres(postgres_url: str, tmp_path: Path, example: dict[str, Any]) -> None:
    with make_client(tmp_path, database_url=postgres_url) as client:
        response = client.post("/v1/jobs", json={"kind": "solve", "settings": example},
                               headers=ALICE)  # fmt: skip
        assert response.status_code == 201
        assert wait(client, response.json()["id"], ALICE)["state"] == "succeeded"
        assert 'allocator_jobs{state="succeeded"} 1.0' in client.get("/metrics").text
