"""The worker's /health and /metrics: real HTTP against real workers, as a probe would ask."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from hewer import Context, Hewer, Worker
from hewer.errors import ConfigurationError
from hewer.testing import EngineThread
from tests.conftest import HEARTBEAT, INACTIVE_AFTER
from tests.helpers import wait_for
from tests.integration.conftest import WorkerFactory

LOOP_THRESHOLD = 0.5


class Nap(BaseModel):
    seconds: float = 0.0


def health(port: int) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    return response.status_code, response.json()


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def status_of(port: int) -> str:
    return str(health(port)[1]["status"])


@pytest.fixture
def run_worker() -> Iterator[Any]:
    started: list[tuple[Worker, threading.Thread]] = []

    def start(worker: Worker) -> Worker:
        thread = threading.Thread(target=worker.start, daemon=True)
        thread.start()
        started.append((worker, thread))
        wait_for(lambda: worker.health_port is not None, what="health server up")
        return worker

    yield start
    for worker, thread in started:
        worker.stop()
        thread.join(20)
        assert not thread.is_alive()


def test_health_follows_the_stream_heartbeats_loop_and_drain(
    tmp_path: Path, database_url: str, run_worker: Any
) -> None:
    first = EngineThread(tmp_path, database_url=database_url, inactive_after=INACTIVE_AFTER)
    first.start()
    port = first.engine.port
    hw = Hewer(
        settings=first.client_settings(
            heartbeat_interval=HEARTBEAT,
            grace_period=10,
            worker_healthcheck_loop_threshold=LOOP_THRESHOLD,
        )
    )
    gate = threading.Event()

    @hw.task(name="held")
    def held(input: Nap, ctx: Context) -> dict[str, bool]:
        gate.wait(30)
        return {"ok": True}

    @hw.task(name="hog", slot_requests={"default": 1, "gpu": 2})
    async def hog(input: Nap, ctx: Context) -> dict[str, bool]:
        time.sleep(input.seconds)  # blocks the event loop on purpose
        return {"ok": True}

    worker = hw.worker(
        "probed", slots=3, slot_config={"gpu": 2}, workflows=[held, hog], healthcheck_port=0
    )
    second: EngineThread | None = None
    try:
        run_worker(worker)
        assert worker.health_port is not None
        hp = worker.health_port
        wait_for(lambda: status_of(hp) == "HEALTHY", what="HEALTHY once listening")
        code, body = health(hp)
        assert code == 200
        assert body["slots"] == {
            "default": {"used": 0, "limit": 3},
            "gpu": {"used": 0, "limit": 2},
        }
        gauges = metrics(hp)
        assert gauges[("hatchet_worker_listener_health", ())] == 1.0
        assert gauges[("hatchet_worker_slot_limit", (("slot_pool", "gpu"),))] == 2.0

        # A task in flight holds its slots; the answer shows them.
        ref = held.run_no_wait(Nap())
        wait_for(lambda: health(hp)[1]["slots"]["default"]["used"] == 1, what="slot in use")
        assert metrics(hp)[("hatchet_worker_used_slots", (("slot_pool", "default"),))] == 1.0
        gate.set()
        assert ref.result() == {"ok": True}
        wait_for(lambda: health(hp)[1]["slots"]["default"]["used"] == 0, what="slot freed")
        done = metrics(hp)
        assert done[
            ("hewer_worker_tasks_total", (("action", "held:held"), ("outcome", "completed")))
        ]
        key = (
            "hewer_worker_task_duration_seconds_count",
            (("action", "held:held"), ("outcome", "completed")),
        )
        assert done[key] == 1.0

        # An async task that blocks the loop: the server still answers, and says why.
        hogged = hog.run_no_wait(Nap(seconds=4 * LOOP_THRESHOLD))
        wait_for(lambda: health(hp)[0] == 503, timeout=10, what="UNHEALTHY while blocked")
        code, body = health(hp)
        assert body["status"] == "UNHEALTHY"
        assert "event loop" in body["reason"]
        assert body["slots"]["gpu"]["used"] == 2
        lag = metrics(hp)[("hatchet_worker_event_loop_lag_seconds", ())]
        assert lag > LOOP_THRESHOLD
        assert hogged.result() == {"ok": True}
        wait_for(lambda: status_of(hp) == "HEALTHY", what="HEALTHY after the block")

        # The engine goes away: the stream and the heartbeats fail.
        first.stop()
        wait_for(lambda: health(hp)[0] == 503, timeout=10, what="UNHEALTHY without an engine")
        assert metrics(hp)[("hatchet_worker_listener_health", ())] == 0.0
        second = EngineThread(
            tmp_path, database_url=database_url, port=port, inactive_after=INACTIVE_AFTER
        ).start()
        wait_for(lambda: status_of(hp) == "HEALTHY", timeout=30, what="HEALTHY again")

        # Draining: a task still running, the worker asked to stop.
        gate.clear()
        ref = held.run_no_wait(Nap())
        wait_for(lambda: health(hp)[1]["slots"]["default"]["used"] == 1, what="running")
        worker.stop()
        wait_for(lambda: health(hp)[0] == 503, what="UNHEALTHY while draining")
        assert "shutting down" in health(hp)[1]["reason"]
        gate.set()
        assert ref.result() == {"ok": True}
    finally:
        gate.set()
        worker.stop()
        if second is not None:
            second.stop()
        first.stop()
        hw.close()


def test_starting_until_the_engine_answers(engine: EngineThread, run_worker: Any) -> None:
    # A valid token, but nothing listens on this port: the worker keeps trying to register.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    hw = Hewer(
        settings=engine.client_settings(
            heartbeat_interval=HEARTBEAT, grace_period=1, host_port=f"127.0.0.1:{dead}"
        )
    )

    @hw.task(name="never")
    def never(input: Nap, ctx: Context) -> None:
        return None

    worker = run_worker(hw.worker("early", workflows=[never], healthcheck_port=0))
    code, body = health(worker.health_port)
    assert (code, body["status"]) == (503, "STARTING")
    assert httpx.get(f"http://127.0.0.1:{worker.health_port}/nope", timeout=5).status_code == 404
    hw.close()


def test_a_busy_health_port_is_a_clear_error(client: Hewer) -> None:
    @client.task(name="unused")
    def unused(input: Nap, ctx: Context) -> None:
        return None

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        busy = s.getsockname()[1]
        worker = client.worker("clash", workflows=[unused], healthcheck_port=busy)
        with pytest.raises(ConfigurationError, match="cannot serve health checks"):
            worker.start()
    with pytest.raises(ConfigurationError, match="port number"):
        client.worker("bad", workflows=[unused], healthcheck_port=70000)


def test_worker_process_serves_health_from_the_environment(
    app: Any,
    spawn_worker: WorkerFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        hp = s.getsockname()[1]
    monkeypatch.setenv("HEWER_WORKER_HEALTHCHECK_PORT", str(hp))
    monkeypatch.setenv("HEWER_WORKER_HEALTHCHECK_HOST", "127.0.0.1")
    worker = spawn_worker("served", slots=2, grace_period=10)
    wait_for(lambda: status_of(hp) == "HEALTHY", what="process HEALTHY")
    assert app.noop.run(app.Item(n=1))
    wait_for(
        lambda: (
            metrics(hp).get(
                (
                    "hewer_worker_tasks_total",
                    (("action", "it-noop:it-noop"), ("outcome", "completed")),
                )
            )
            == 1.0
        ),
        what="the task counted",
    )
    ref = app.slow.run_no_wait(app.Sleep(seconds=1.5))
    executions = tmp_path / "executions"
    wait_for(lambda: list(executions.glob(f"started-{worker.pid}-*")), what="slow task started")
    worker.send_signal(signal.SIGTERM)
    wait_for(lambda: health(hp)[0] == 503, what="UNHEALTHY while draining")
    assert ref.result()["pid"] == worker.pid
    assert worker.wait(timeout=30) == 0
