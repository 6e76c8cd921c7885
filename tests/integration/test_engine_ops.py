"""The engine's probes and metrics, asked as Kubernetes and Prometheus ask: real HTTP on
the API port, the standard gRPC health service on the gRPC port."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from hewer import Context, Hewer
from hewer.testing import EngineThread
from tests.helpers import wait_for

Sample = tuple[str, tuple[tuple[str, str], ...]]


class Nap(BaseModel):
    fail: bool = False


def scrape(engine: EngineThread) -> dict[Sample, float]:
    response = httpx.get(f"{engine.api_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_health_and_ready_need_no_token(engine: EngineThread) -> None:
    for path, status in (("/health", "ok"), ("/ready", "ready")):
        response = httpx.get(f"{engine.api_url}{path}", timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == status


def test_grpc_health_service_says_serving(engine: EngineThread) -> None:
    with grpc.insecure_channel(engine.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        try:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError("an unknown service must be NOT_FOUND")


def test_metrics_count_what_the_engine_did(
    engine: EngineThread, client: Hewer, in_process_worker: object
) -> None:
    tenant = engine.engine.default_tenant_id
    gate = threading.Event()

    @client.task(name="metered", retries=1)
    def metered(input: Nap, ctx: Context) -> dict[str, bool]:
        gate.wait(30)
        if input.fail and ctx.retry_count == 0:
            raise RuntimeError("first attempt fails")
        return {"ok": True}

    before = scrape(engine)
    try:
        _drive(engine, client, in_process_worker, metered, gate, before, tenant)
    finally:
        gate.set()


def _drive(
    engine: EngineThread,
    client: Hewer,
    in_process_worker: Any,
    metered: Any,
    gate: threading.Event,
    before: dict[Sample, float],
    tenant: str,
) -> None:
    in_process_worker(client, [metered], slots=2)
    # Two run (held at the gate), the third waits in its queue: the gauges see both.
    refs = [metered.run_no_wait(Nap(fail=i == 0)) for i in range(3)]
    slots = ("hatchet_tenant_worker_slots", (("slot_type", "default"), ("tenant_id", tenant)))
    used = ("hatchet_tenant_used_worker_slots", (("slot_type", "default"), ("tenant_id", tenant)))
    queue = (
        "hatchet_tenant_queue_size",
        (("queue", "metered:metered"), ("tenant_id", tenant), ("workflow_name", "metered")),
    )
    wait_for(lambda: scrape(engine).get(used) == 2.0, what="both slots in use")
    during = scrape(engine)
    assert during[slots] == 2.0
    assert during[queue] == 1.0
    assert (
        during[("hatchet_created_tasks_total", ())]
        - before.get(("hatchet_created_tasks_total", ()), 0.0)
        == 3.0
    )
    gate.set()
    for ref in refs:
        assert ref.result() == {"ok": True}

    def grew(name: str) -> float:
        key = (name, ())
        return scrape(engine).get(key, 0.0) - before.get(key, 0.0)

    wait_for(lambda: grew("hatchet_succeeded_tasks_total") == 3.0, what="3 succeeded")
    after = scrape(engine)
    assert grew("hatchet_retried_tasks_total") == 1.0
    assert grew("hatchet_failed_tasks_total") == 0.0
    assert grew("hatchet_assigned_tasks_total") == 4.0  # three tasks, one of them twice
    assert after[("hatchet_tenant_succeeded_tasks_total", (("tenant_id", tenant),))] >= 3.0
    assert after[("hatchet_queued_to_assigned_time_seconds_count", ())] >= 4.0
    assert after[("hewer_store_commit_seconds_count", ())] > 0
    assert after[("hewer_store_batch_ops_sum", ())] > 0
    assert after.get(queue, 0.0) == 0.0  # drained


def test_metrics_count_rate_limited_and_timed_out_tasks_and_label_slots(
    engine: EngineThread, client: Hewer
) -> None:
    from hewer import RateLimit, RateLimitDuration
    from hewer.domain import TaskDef
    from hewer.engine.core.ingest import TriggerSpec

    tenant = engine.engine.default_tenant_id
    twin = (("tenant_id", tenant),)
    client.rate_limits.put("metered-api", 1, RateLimitDuration.HOUR)
    gate = threading.Event()

    @client.task(name="limited", rate_limits=[RateLimit(static_key="metered-api", units=1)])
    def limited(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        gate.wait(30)
        return {}

    worker = client.worker("labelled", slots=3, workflows=[limited], labels={"gpu": "a100"})
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(20)
        label = (
            "hatchet_tenant_worker_label_slots",
            (("label_key", "gpu"), ("label_value", "a100"), ("slot_type", "default"), *twin),
        )
        used_label = ("hatchet_tenant_used_worker_label_slots", label[1])
        wait_for(lambda: scrape(engine).get(label) == 3.0, what="the worker's label slots")
        # One unit an hour: the first run takes it, the second is held back by the limit.
        refs = [limited.run_no_wait({}) for _ in range(2)]
        wait_for(
            lambda: scrape(engine).get(("hatchet_tenant_rate_limited_total", twin), 0) > 0,
            what="a task held back by its rate limit",
        )
        after = scrape(engine)
        assert after[("hatchet_rate_limited_total", ())] > 0
        assert after[used_label] == 1.0

        # A task no worker serves, with a short schedule timeout, is cancelled at it.
        late = TaskDef("unserved", "unserved:act", schedule_timeout_s=0.2)
        engine.call(engine.engine.core.put_workflow(tenant, "unserved", [late], None))
        engine.call(engine.engine.core.trigger(tenant, [TriggerSpec("unserved")]))
        wait_for(
            lambda: scrape(engine).get(("hatchet_tenant_scheduling_timed_out_total", twin)) == 1.0,
            what="one scheduling timeout",
        )
        assert scrape(engine)[("hatchet_scheduling_timed_out_total", ())] == 1.0
        gate.set()
        refs[0].result()
        for ref in refs[1:]:
            client.runs.cancel(ref.run_id)
    finally:
        gate.set()
        worker.stop()
        thread.join(20)
