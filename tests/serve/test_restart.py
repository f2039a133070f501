"""A server killed with SIGKILL mid-job and started again finds the job and finishes it: a kl
profile of a tiny random Llama resumes from its journal (the units measured before the kill are
kept, not recomputed) and its table equals an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("httpx")

from allocator.client import Client
from allocator.data.example import load_example
from tests.serve.tiny import save_tiny_model

KEY = "restart-key-1"
SETTINGS = {"estimator": "kl", "options": "bits=2,4 group=32", "windows": 2, "seq_len": 16}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data: Path, root: Path, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "allocator", "serve", "--port", str(port), "--workers", "1",
               "--data-dir", str(data), "--data-root", str(root), "--quiet"]  # fmt: skip
    env = {**os.environ, "ALLOCATOR_API_KEYS": f"tester:{KEY}"}
    log = (data.parent / "server.log").open("ab")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = Client(f"http://127.0.0.1:{port}", KEY, timeout=10)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.health()
            return proc
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                tail = (data.parent / "server.log").read_text()[-2000:]
                raise AssertionError(f"server did not start: {tail}") from None
            time.sleep(0.1)


def _workers_of(job_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"allocator.serve.worker" in cmdline and str(job_dir).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def _lines(path: Path) -> list[str]:
    """The journal's complete lines (a line torn by the kill is not one)."""
    if not path.is_file():
        return []
    complete = []
    for line in path.read_text().splitlines():
        try:
            json.loads(line)
        except ValueError:
            break
        complete.append(line)
    return complete


def test_sigkilled_server_resumes_running_job(tmp_path: Path) -> None:
    began = time.monotonic()
    root, data = tmp_path / "root", tmp_path / "data"
    save_tiny_model(root, layers=2)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start(data, root, port)
    print(f"started at {time.monotonic() - began:.1f} s")
    try:
        client = Client(url, KEY)
        settings = {**SETTINGS, "model": "model", "text": ["calib.txt"]}
        job = client.submit("profile", settings)
        table_, constraints_ = load_example()
        queued = client.submit("solve", {"table": table_, "constraints": constraints_})
        journal = data / "jobs" / job["id"] / "out" / "table.journal.jsonl"
        deadline = time.monotonic() + 120
        while len(_lines(journal)) < 2:  # the header and a first measured unit
            assert time.monotonic() < deadline, client.job(job["id"])
            time.sleep(0.01)
        server.send_signal(signal.SIGKILL)
        server.wait()
        time.sleep(0.5)
        before_kill = _lines(journal)
        assert _workers_of(journal.parent.parent) == []  # the worker died with the server
        assert 1 <= len(before_kill) - 1 < 14, "kill mid-job: some units measured, not all"
        print(f"killed at {time.monotonic() - began:.1f} s")

        server = _start(data, root, port)
        client = Client(url, KEY)
        assert client.job(job["id"])["state"] in ("queued", "running")
        assert client.job(queued["id"])["state"] == "queued"  # queued ones stay queued
        print(f"restarted at {time.monotonic() - began:.1f} s")
        # meanwhile, the same profile uninterrupted in this process
        from allocator.profile.api import profile

        reference = profile(
            str(root / "model"), [str(root / "calib.txt")], "kl", SETTINGS["options"],
            windows=2, seq_len=16, progress=False, journal=tmp_path / "ref.jsonl", resume=True,
        )  # fmt: skip
        print(f"reference done at {time.monotonic() - began:.1f} s")
        done = client.wait(job["id"], progress=False, timeout=180)
        assert done["state"] == "succeeded", done
        assert done["attempts"] == 2
        print(f"job done at {time.monotonic() - began:.1f} s")
        assert client.wait(queued["id"], progress=False, timeout=60)["state"] == "succeeded"
        after = _lines(journal)
        assert after[: len(before_kill)] == before_kill  # journaled units kept, not redone
        assert len(after) == 15
        target = client.download(job["id"], "table.json", tmp_path / "table.json")
        table = json.loads(target.read_text())
        expected = reference.model_dump(mode="json")
        assert [u["name"] for u in table["units"]] == [u["name"] for u in expected["units"]]
        assert table["options"] == expected["options"]
        assert table["losses"] == expected["losses"]
        names = [a["path"] for a in client.artifacts(job["id"])]
        assert "table.json" in names and "table.journal.jsonl" in names
    finally:
        server.kill()
        server.wait()
