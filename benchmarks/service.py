"""Bounded load test of the allocation service against the old stdlib server (same requests).

    .venv/bin/python benchmarks/service.py [--clients 50] [--solves 20] [--workers 2]
        [--big-units 1000000] [--out benchmarks/results/service.md]

Starts ``allocator serve`` (FastAPI, process pool of ``--workers``) and ``allocator serve
--legacy`` (threads) on free loopback ports. For each: ``--clients`` concurrent clients each send
``--solves`` solves of the real SmolLM2 table (210 units x 60 options, Fisher, dense/2:4/50%
sparse) at 3.5 bits: throughput, p50/p99 latency, errors. Then one big synthetic solve
(``--big-units`` units x 4 options, ``lagrange``) runs while /health is polled every 20 ms:
/health p50/p99/max during the solve (target p99 < 50 ms on the FastAPI server).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "benchmarks/results/tables/smollm2_fisher_sparse.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "allocator", "serve", "--port", str(port), "--quiet", *args]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    for path in ("/v1/health", "/health"):
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
            if path == "/v1/health" and "--legacy" in args:
                break
    proc.kill()
    raise RuntimeError(f"server {command} did not start")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def load(url: str, body: bytes, clients: int, solves: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def client(_: int) -> None:
        nonlocal errors
        with httpx.Client(timeout=600) as http:
            for _ in range(solves):
                began = time.perf_counter()
                try:
                    response = http.post(url, content=body,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    latencies.append(time.perf_counter() - began)
                    errors += not ok

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - began
    return {"requests": len(latencies), "errors": errors, "wall_s": wall,
            "throughput": len(latencies) / wall, "p50_ms": 1000 * pct(latencies, 50),
            "p99_ms": 1000 * pct(latencies, 99)}  # fmt: skip


def big_table(n_units: int) -> bytes:
    rng = np.random.default_rng(0)
    bits = [2, 3, 4, 8]
    options = [{"bits": b, "group_size": 128} for b in bits]
    keys = [f"b{b}-g128" for b in bits]
    scale = rng.lognormal(0, 1.5, n_units)
    units = ",".join(f'{{"name":"u{i}","numel":16384}}' for i in range(n_units))
    losses = ",".join(
        f'"u{i}":{{' + ",".join(f'"{k}":{scale[i] * 4.0**-b:.6g}' for k, b in zip(keys, bits, strict=True))
        + "}" for i in range(n_units)
    )  # fmt: skip
    table = f'{{"units":[{units}],"options":{json.dumps(options)},"losses":{{{losses}}}}}'
    return (f'{{"table":{table},"constraints":{{"budget":{{"avg_bits":3.5}}}},'
            f'"solver":"lagrange"}}').encode()  # fmt: skip


def health_during(health_url: str, solve_url: str, body: bytes) -> dict[str, float]:
    latencies: list[float] = []
    outcome: dict[str, float] = {}

    def big() -> None:
        began = time.perf_counter()
        response = httpx.post(solve_url, content=body, timeout=1800,
                              headers={"Content-Type": "application/json"})  # fmt: skip
        outcome["status"] = response.status_code
        outcome["solve_s"] = time.perf_counter() - began

    thread = threading.Thread(target=big)
    thread.start()
    with httpx.Client(timeout=60) as http:
        while thread.is_alive():
            began = time.perf_counter()
            http.get(health_url)
            latencies.append(time.perf_counter() - began)
            time.sleep(0.02)
    thread.join()
    return {**outcome, "health_n": len(latencies), "health_p50_ms": 1000 * pct(latencies, 50),
            "health_p99_ms": 1000 * pct(latencies, 99),
            "health_max_ms": 1000 * max(latencies, default=float("nan"))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--solves", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--big-units", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/service.md")
    args = parser.parse_args()
    table = json.loads(TABLE.read_text())
    body = json.dumps({"table": table, "constraints": {"budget": {"avg_bits": 3.5}}}).encode()
    big = big_table(args.big_units)
    print(f"table {len(table['units'])} units x {len(table['options'])} options "
          f"({len(body) / 1e6:.2f} MB body); big solve {args.big_units} units "
          f"({len(big) / 1e6:.1f} MB body)", flush=True)  # fmt: skip
    rows = {}
    with tempfile.TemporaryDirectory() as data:
        for name, extra, prefix in (
            ("fastapi", ["--workers", str(args.workers), "--data-dir", data,
                         "--max-body-bytes", str(max(len(big) * 2, 64 << 20)),
                         "--max-table-cells", str(args.big_units * 4 + 1)], "/v1"),
            ("stdlib (legacy)", ["--legacy"], ""),
        ):  # fmt: skip
            port = free_port()
            env_keys = os.environ.pop("ALLOCATOR_API_KEYS", None)
            proc = start(extra, port)
            try:
                base = f"http://127.0.0.1:{port}{prefix}"
                httpx.post(f"{base}/solve", content=body, timeout=600)  # warm the pool
                result = load(f"{base}/solve", body, args.clients, args.solves)
                print(name, "load", result, flush=True)
                result.update(health_during(f"{base}/health", f"{base}/solve", big))
                print(name, "health during big solve", result, flush=True)
                rows[name] = result
            finally:
                proc.kill()
                proc.wait()
                if env_keys is not None:
                    os.environ["ALLOCATOR_API_KEYS"] = env_keys
    lines = [
        f"# Service load test ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs)",
        "",
        f"`python benchmarks/service.py --clients {args.clients} --solves {args.solves} "
        f"--workers {args.workers} --big-units {args.big_units}`: SmolLM2 Fisher table "
        f"(210 x 60) at 3.5 bits; /health polled every 20 ms during one {args.big_units}-unit "
        "lagrange solve.",
        "",
        "| server | requests | errors | throughput (solves/s) | p50 ms | p99 ms | big solve s "
        "| /health p50 ms | /health p99 ms | /health max ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['requests']} | {r['errors']} | {r['throughput']:.1f} | "
            f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r.get('solve_s', float('nan')):.1f} "
            f"(HTTP {r.get('status')}) | {r['health_p50_ms']:.1f} | {r['health_p99_ms']:.1f} | "
            f"{r['health_max_ms']:.1f} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
