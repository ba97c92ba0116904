"""GET /metrics: request counts and latencies per route, and jobs per status, in Prometheus
text format (a registry per app, so several apps in one process do not collide)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _JobsCollector(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "instructray_jobs", "Jobs in the database by status.", labels=["status"]
        )
        for status, n in self.counts().items():
            family.add_metric([status], n)
        yield family


class Telemetry:
    def __init__(self, job_counts: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "instructray_api_requests",
            "HTTP requests served.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "instructray_api_request_duration_seconds",
            "Time to serve an HTTP request (to the end of the response headers for streams).",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_JobsCollector(job_counts))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request by method, route template and status."""

    def __init__(self, app: Any, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    def _record(self, scope: dict, status: int, start: float) -> None:
        # Route templates (not raw paths) keep the label set small.
        route = getattr(scope.get("route"), "path", "<unmatched>")
        self.telemetry.latency.labels(scope["method"], route).observe(time.perf_counter() - start)
        self.telemetry.requests.labels(scope["method"], route, str(status)).inc()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        recorded = False

        async def observing_send(message: dict) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start":
                self._record(scope, message["status"], start)
                recorded = True
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        except Exception:
            if not recorded:
                self._record(scope, 500, start)
            raise
