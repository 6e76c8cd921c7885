"""The worker's health server: ``GET /health`` for probes, ``GET /metrics`` for Prometheus.

It runs on a thread of its own with its own HTTP server, so it keeps answering while task
code blocks the event loop; that is exactly when a probe must hear UNHEALTHY. Everything it
reports is read at request time from the worker's parts (the listener's stream, the
heartbeat thread's last answer, the runner's slots), so there is no state to keep in step.
The event loop is watched by a probe coroutine that ticks a timestamp: the age of the last
tick, less the tick period, is the loop's lag, and it keeps growing while the loop is stuck.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

PROBE_SECONDS = 0.25
DEFAULT_LOOP_THRESHOLD_SECONDS = 5.0
DEFAULT_STARTING_LIMIT_SECONDS = 10.0
# Task durations from a few ms (the engine's own overhead) to long batch jobs.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

STARTING = "STARTING"
HEALTHY = "HEALTHY"
UNHEALTHY = "UNHEALTHY"


@dataclass(frozen=True, slots=True)
class WorkerProbes:
    """How the health server reads the worker; each callable is safe from any thread."""

    listening: Callable[[], bool]
    """An action stream is open."""
    heartbeats: Callable[[], tuple[int, bool | None]]
    """(heartbeats accepted so far, whether the last one succeeded; None before any)."""
    draining: Callable[[], bool]
    """The worker is stopping."""
    used_slots: Callable[[], Mapping[str, int]]
    """Units in use per slot pool."""


class WorkerHealth:
    """Judges the worker's health and keeps its task metrics."""

    def __init__(
        self,
        pools: Mapping[str, int],
        probes: WorkerProbes,
        *,
        loop_threshold: float = DEFAULT_LOOP_THRESHOLD_SECONDS,
        starting_limit: float = DEFAULT_STARTING_LIMIT_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pools = dict(pools)
        self.probes = probes
        self.loop_threshold = loop_threshold
        self.starting_limit = starting_limit
        self._monotonic = monotonic
        self._born = monotonic()
        self._tick: float | None = None
        self.registry = CollectorRegistry()
        self.registry.register(_Gauges(self))
        self._tasks = Counter(
            "hewer_worker_tasks",
            "Task attempts this worker finished, by action and outcome",
            ["action", "outcome"],
            registry=self.registry,
        )
        self._durations = Histogram(
            "hewer_worker_task_duration_seconds",
            "Time from an attempt's start on this worker to its outcome",
            ["action", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )

    # --- fed by the worker ---------------------------------------------------------------

    async def watch_loop(self) -> None:
        """Tick until cancelled (run it as a task on the worker's loop)."""
        while True:
            self._tick = self._monotonic()
            await asyncio.sleep(PROBE_SECONDS)

    def finished(self, action: str, outcome: str, seconds: float) -> None:
        """One attempt ended here (``outcome``: completed, failed, cancelled)."""
        self._tasks.labels(action, outcome).inc()
        self._durations.labels(action, outcome).observe(seconds)

    # --- read by the server --------------------------------------------------------------

    def loop_lag(self) -> float:
        """Seconds the event loop is late, now (0 before the probe's first tick)."""
        tick = self._tick
        if tick is None:
            return 0.0
        return max(0.0, self._monotonic() - tick - PROBE_SECONDS)

    def status(self) -> tuple[str, str | None]:
        """(STARTING/HEALTHY/UNHEALTHY, why not healthy)."""
        if self.probes.draining():
            return UNHEALTHY, "the worker is shutting down"
        lag = self.loop_lag()
        if lag > self.loop_threshold:
            return UNHEALTHY, f"the event loop has been blocked for {lag:.1f}s"
        listening = self.probes.listening()
        sent, last_ok = self.probes.heartbeats()
        if listening and sent > 0 and last_ok:
            return HEALTHY, None
        if sent == 0 or self._tick is None:
            waited = self._monotonic() - self._born
            if waited <= self.starting_limit:
                return STARTING, "waiting for the action stream and a first heartbeat"
            return UNHEALTHY, f"still not connected after {waited:.0f}s"
        if not listening:
            return UNHEALTHY, "no action stream to the engine"
        return UNHEALTHY, "the last heartbeat failed"

    def slots(self) -> dict[str, dict[str, int]]:
        used = self.probes.used_slots()
        return {
            pool: {"used": int(used.get(pool, 0)), "limit": limit}
            for pool, limit in self.pools.items()
        }

    def health_body(self) -> tuple[int, dict[str, Any]]:
        status, reason = self.status()
        body: dict[str, Any] = {"status": status, "slots": self.slots()}
        if reason is not None:
            body["reason"] = reason
        return (200 if status == HEALTHY else 503), body


class _Gauges(Collector):
    """The gauges, computed at scrape time."""

    def __init__(self, health: WorkerHealth) -> None:
        self._health = health

    def collect(self) -> Iterator[Metric]:
        health = self._health
        status, _ = health.status()
        listener = GaugeMetricFamily(
            "hatchet_worker_listener_health",
            "1 when the worker is healthy (action stream up, last heartbeat accepted), else 0",
        )
        listener.add_metric([], 1.0 if status == HEALTHY else 0.0)
        yield listener
        lag = GaugeMetricFamily(
            "hatchet_worker_event_loop_lag_seconds", "How late the worker's event loop is"
        )
        lag.add_metric([], health.loop_lag())
        yield lag
        used = GaugeMetricFamily(
            "hatchet_worker_used_slots", "Slot units in use, per pool", labels=["slot_pool"]
        )
        limit = GaugeMetricFamily(
            "hatchet_worker_slot_limit", "Slot units of each pool", labels=["slot_pool"]
        )
        for pool, numbers in health.slots().items():
            used.add_metric([pool], numbers["used"])
            limit.add_metric([pool], numbers["limit"])
        yield used
        yield limit


class HealthServer:
    """Serves a ``WorkerHealth`` over HTTP on a daemon thread."""

    def __init__(self, health: WorkerHealth, host: str, port: int) -> None:
        self.health = health
        handler = _handler_for(health)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="hewer-health",
            daemon=True,
        )
        self._thread.start()
        host = self._server.server_address[0]
        logger.info("worker health checks on http://%s:%d/health", host, self.port)

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()


def _handler_for(health: WorkerHealth) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "hewer-worker"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/health":
                code, body = health.health_body()
                self._send(code, "application/json", json.dumps(body).encode())
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(health.registry))
            else:
                message = {"error": f"no such path {path!r}; try /health or /metrics"}
                self._send(404, "application/json", json.dumps(message).encode())

        def _send(self, code: int, content_type: str, data: bytes) -> None:
            self.send_response(HTTPStatus(code))
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes every few seconds would flood the worker's log.
            logger.debug("health %s", format % args)

    return Handler
