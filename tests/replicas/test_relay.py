"""Two and three engines over one PostgreSQL database: one schedules, the others relay.

In-process engines (real gRPC, HTTP and PostgreSQL); the kill -9 battery with engine
processes is in ``test_failover.py``.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import BaseModel

from hewer import Context, Hewer
from hewer.testing import EngineThread
from tests.conftest import HEARTBEAT, INACTIVE_AFTER
from tests.helpers import wait_for
from tests.pg import fresh_database_sync

LEASE_TTL = 1.0


class In(BaseModel):
    x: int


def replica(directory: Path, url: str, name: str) -> EngineThread:
    return EngineThread(
        directory / name,
        database_url=url,
        heartbeat_interval=HEARTBEAT,
        inactive_after=INACTIVE_AFTER,
        lease_ttl=LEASE_TTL,
        replica_id=name,
    ).start()


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database_sync() as url:
        yield url


@pytest.fixture
def pair(tmp_path: Path, database: str) -> Iterator[tuple[EngineThread, EngineThread]]:
    a = replica(tmp_path, database, "a")
    b = replica(tmp_path, database, "b")
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()


def test_one_replica_schedules_the_other_relays(
    pair: tuple[EngineThread, EngineThread],
) -> None:
    a, b = pair
    assert a.engine.scheduling and not b.engine.scheduling
    # Worker and client both on the replica that does not schedule.
    hw = Hewer(settings=b.client_settings(heartbeat_interval=HEARTBEAT))

    @hw.task(name="double")
    def double(input: In, ctx: Context) -> dict[str, int]:
        return {"y": input.x * 2}

    worker = hw.worker("w", slots=4, workflows=[double])
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(20)
        assert double.run(In(x=21)) == {"y": 42}
        assert double.run_many([In(x=i) for i in range(20)]) == [{"y": 2 * i} for i in range(20)]
        assert b.engine.relay is not None and b.engine.relay.relayed > 0
        # REST through the relay, /health answered by the relay itself.
        request = urllib.request.Request(
            f"{b.api_url}/api/v1/tenants/{b.engine.default_tenant_id}/worker",
            headers={"Authorization": f"Bearer {b.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert b'"w"' in response.read()
        with urllib.request.urlopen(f"{b.api_url}/health", timeout=10) as response:
            assert b'"scheduling":false' in response.read().replace(b" ", b"")
        # So are the readiness probe, the metrics and the gRPC health service.
        with urllib.request.urlopen(f"{b.api_url}/ready", timeout=10) as response:
            assert b'"status":"ready"' in response.read().replace(b" ", b"")
        with urllib.request.urlopen(f"{b.api_url}/metrics", timeout=10) as response:
            assert b"hatchet_tenant_queue_size" in response.read()
        with grpc.insecure_channel(b.address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            answer = check(health_pb2.HealthCheckRequest(), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        worker.stop()
        thread.join(timeout=20)
        hw.close()


def test_a_call_relayed_once_is_not_relayed_again(
    pair: tuple[EngineThread, EngineThread],
) -> None:
    """Two replicas each taking the other for the holder must not bounce a call forever."""

    from hewer.engine.core.lease import RELAYED_HEADER

    _, b = pair
    with grpc.insecure_channel(b.address) as channel:
        call = channel.unary_unary("/Dispatcher/Heartbeat")
        with pytest.raises(grpc.RpcError) as raised:
            call(b"", metadata=[(RELAYED_HEADER, "elsewhere")], timeout=10)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "does not schedule" in (raised.value.details() or "")
    request = urllib.request.Request(f"{b.api_url}/api/v1/x", headers={RELAYED_HEADER: "x"})
    with pytest.raises(urllib.error.HTTPError) as http_error:
        urllib.request.urlopen(request, timeout=10)
    assert http_error.value.code == 503


def test_clean_shutdown_hands_scheduling_over(tmp_path: Path, database: str) -> None:
    a = replica(tmp_path, database, "a")
    b = replica(tmp_path, database, "b")
    hw = Hewer(settings=b.client_settings(heartbeat_interval=HEARTBEAT))

    @hw.task(name="inc")
    def inc(input: In, ctx: Context) -> dict[str, int]:
        return {"y": input.x + 1}

    worker = hw.worker("w", slots=4, workflows=[inc])
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(20)
        assert inc.run(In(x=1)) == {"y": 2}
        began = time.monotonic()
        a.stop()
        wait_for(lambda: b.engine.scheduling, timeout=10, what="b took over")
        took = time.monotonic() - began
        assert took < LEASE_TTL, f"handover took {took:.2f}s: the lease was not released"
        assert inc.run(In(x=2)) == {"y": 3}
        # The worker is the same one: its stream moved, it was not declared lost.
        workers = b.call(b.engine.store.workers_list())
        assert [w.status for w in workers] == ["active"]
    finally:
        worker.stop()
        thread.join(timeout=20)
        hw.close()
        b.stop()
        a.stop()


def test_concurrency_and_rate_limits_hold_across_replicas(
    pair: tuple[EngineThread, EngineThread],
) -> None:
    """Workers on both replicas, triggers through both: one scheduler counts for all."""
    from hewer import RateLimit, RateLimitDuration
    from tests.integration.test_flow_control import ExecutionLog, _min_span, peak

    log = ExecutionLog()
    clients = [Hewer(settings=e.client_settings(heartbeat_interval=HEARTBEAT)) for e in pair]
    b_client = clients[1]
    b_client.rate_limits.put("api", 4, RateLimitDuration.SECOND)  # through the relay
    tasks = []
    for hw in clients:

        @hw.task(name="capped", concurrency=2)
        def capped(input: In, ctx: Context) -> None:
            with log.record(ctx, "capped"):
                time.sleep(0.1)

        @hw.task(name="calls-api", rate_limits=[RateLimit(static_key="api", units=1)])
        def calls_api(input: In, ctx: Context) -> None:
            with log.record(ctx, "api"):
                pass

        tasks.append((capped, calls_api))
    workers = [
        hw.worker(f"w-{i}", slots=10, workflows=list(t))
        for i, (hw, t) in enumerate(zip(clients, tasks, strict=True))
    ]
    threads = [threading.Thread(target=w.start, daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        for w in workers:
            assert w.ready.wait(20)
        inputs = [In(x=i) for i in range(8)]
        refs = [ref for capped, _ in tasks for ref in capped.run_many_no_wait(inputs)]
        for ref in refs:
            ref.result()
        ran = log.of(key="capped")
        assert len(ran) == 16 and len({r.worker for r in ran}) == 2
        assert peak(ran) == 2, "at most 2 at once over both replicas' workers"
        api_refs = [ref for _, api in tasks for ref in api.run_many_no_wait(inputs[:5])]
        for ref in api_refs:
            ref.result()
        starts = [r.start for r in log.of(key="api")]
        assert len(starts) == 10
        assert _min_span(starts, 5) >= 0.85, "at most 4 starts per second over both replicas"
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(timeout=20)
        for hw in clients:
            hw.close()
