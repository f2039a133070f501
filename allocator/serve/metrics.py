"""Prometheus metrics at /metrics: requests and latencies by route, jobs by state, solve times."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from allocator.serve.models import FINAL_STATES
from allocator.serve.store import JobStore, SqlJobStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _JobsCollector:
    def __init__(self, store: JobStore | SqlJobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("allocator_jobs", "jobs by state", labels=["state"])
        counts = self.store.counts()
        for state in ("queued", "running", *FINAL_STATES):
            gauge.add_metric([state], counts.get(state, 0))
        yield gauge


class Metrics:
    def __init__(self, store: JobStore | SqlJobStore) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "allocator_http_requests", "HTTP requests", ["method", "route", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "allocator_http_request_seconds", "HTTP request latency", ["route"],
            registry=self.registry,
        )  # fmt: skip
        self.solve_seconds = Histogram(
            "allocator_solve_seconds", "time in the solver per synchronous request", ["endpoint"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )  # fmt: skip
        self.registry.register(_JobsCollector(store))  # type: ignore[arg-type]

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route: Any = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], name, str(status)).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - began)
