"""The Task Stats API and the metrics client's routes, over real HTTP against a real engine
with a real worker: what is queued and running per task name, queue and concurrency key,
as the queue fills and drains."""

from __future__ import annotations

import threading
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

from hewer import (
    ConcurrencyExpression,
    ConcurrencyLimitStrategy,
    Context,
    Hewer,
    NonRetryableError,
)
from hewer.engine.core.ingest import TriggerSpec
from hewer.testing import EngineThread
from tests.helpers import wait_for
from tests.integration.test_rest import error_text, http, other_tenant_token, park_workflow, tenant

RR = ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN


def stats(engine: EngineThread, query: str = "") -> dict[str, Any]:
    status, body, _ = http(engine, "GET", f"/api/v1/tenants/{tenant(engine)}/task-stats{query}")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def when_stats(engine: EngineThread, check: Any, query: str = "") -> dict[str, Any]:
    """The first stats answer ``check`` accepts (the scheduler assigns asynchronously)."""
    found: dict[str, Any] = {}

    def ready() -> bool:
        found.clear()
        found.update(stats(engine, query))
        return bool(check(found))

    wait_for(ready, what=f"task stats matching the check (last: {found})")
    return found


async def _trigger(engine: EngineThread, name: str) -> str:
    (run_id,) = await engine.engine.core.trigger(tenant(engine), [TriggerSpec(name, "{}")])
    return run_id


def _iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_queued_and_running_per_task_queue_and_concurrency_key(
    engine: EngineThread, client: Hewer, in_process_worker: Any
) -> None:
    release = threading.Event()

    @client.task(name="grouped", concurrency=ConcurrencyExpression("input.group", 1, RR))
    def grouped(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        release.wait(30)
        return {}

    in_process_worker(client, [grouped], slots=4, name="stats-worker")
    before = datetime.now(UTC) - timedelta(seconds=1)
    refs = [grouped.run_no_wait({"group": g}) for g in ("a", "a", "a", "b")]

    # One run per key at a time: a1 and b1 run, a2 and a3 wait on the key "a".
    body = when_stats(
        engine,
        lambda b: (
            b.get("grouped", {}).get("running", {}).get("total") == 2
            and b["grouped"]["queued"]["total"] == 2
        ),
    )
    queued, running = body["grouped"]["queued"], body["grouped"]["running"]
    assert queued["concurrency"] == [
        {"expression": "input.group", "type": "GROUP_ROUND_ROBIN", "keys": {"a": 2}}
    ]
    assert running["concurrency"] == [
        {"expression": "input.group", "type": "GROUP_ROUND_ROBIN", "keys": {"a": 1, "b": 1}}
    ]
    (queue,) = queued["queues"]
    assert queued["queues"] == {queue: 2} and "grouped" in queue
    assert "queues" not in running
    now = datetime.now(UTC) + timedelta(seconds=1)
    for stat in (queued, running):
        assert before <= _iso(stat["oldest"]) <= now
        assert stat["oldestExcludingRetries"] == stat["oldest"]

    release.set()
    for ref in refs:
        ref.result()
    # Drained: the name is gone from the full answer, and reads as zeros when asked for.
    when_stats(engine, lambda b: "grouped" not in b)
    assert stats(engine, "?taskNames=grouped") == {
        "grouped": {
            "queued": {"total": 0, "queues": {}, "concurrency": []},
            "running": {"total": 0, "concurrency": []},
        }
    }


def test_task_names_select_and_fill_in_zeros(engine: EngineThread) -> None:
    park_workflow(engine, "parked-one")
    park_workflow(engine, "parked-two")
    for _ in range(3):
        engine.call(_trigger(engine, "parked-one"))
    engine.call(_trigger(engine, "parked-two"))

    body = when_stats(engine, lambda b: b.get("parked-one", {}).get("queued", {}).get("total") == 3)
    assert body["parked-one"]["queued"]["queues"] == {"parked-one:act": 3}
    assert body["parked-two"]["queued"]["total"] == 1

    # Repeated or comma-separated; unknown names read as zeros, others are left out.
    for query in ("?taskNames=parked-one&taskNames=nobody", "?taskNames=parked-one,%20nobody"):
        picked = stats(engine, query)
        assert set(picked) == {"parked-one", "nobody"}
        assert picked["parked-one"]["queued"]["total"] == 3
        assert picked["nobody"]["queued"]["total"] == 0
        assert picked["nobody"]["running"]["total"] == 0

    path = f"/api/v1/tenants/{tenant(engine)}/task-stats"
    status, body, _ = http(engine, "GET", path + "?taskNames=")
    assert status == 400 and "taskNames" in error_text(body)
    status, body, _ = http(engine, "GET", path, token=None)
    assert status == 401
    other_id, other_token = other_tenant_token(engine)
    status, body, _ = http(engine, "GET", path, token=other_token)
    assert status == 403 and error_text(body)
    # The other tenant's own view has none of this tenant's tasks.
    status, body, _ = http(
        engine, "GET", f"/api/v1/tenants/{other_id}/task-stats", token=other_token
    )
    assert status == 200 and body == {}


def test_metrics_client_routes_count_queue_and_scrape_per_tenant(
    engine: EngineThread, client: Hewer, in_process_worker: Any
) -> None:
    @client.task(name="counted")
    def counted(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        if input.get("fail"):
            raise NonRetryableError("asked to fail")
        return {}

    in_process_worker(client, [counted], slots=2, name="metrics-worker")
    counted.run({})
    counted.run({})
    failed = counted.run_no_wait({"fail": True})
    wait_for(
        lambda: (
            str(engine.call(engine.engine.core.run_details(tenant(engine), failed.run_id)).status)
            == "failed"
        )
    )
    park_workflow(engine, "parked-metrics")
    engine.call(_trigger(engine, "parked-metrics"))

    base = f"/api/v1/stable/tenants/{tenant(engine)}/task-metrics"
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    status, body, _ = http(engine, "GET", f"{base}?since={urllib.request.quote(since)}")
    assert status == 200, body
    counts = {m["status"]: m["count"] for m in body}
    assert counts == {"QUEUED": 1, "RUNNING": 0, "COMPLETED": 2, "FAILED": 1, "CANCELLED": 0}
    # A window after everything, and a workflow filter, narrow it.
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, body, _ = http(engine, "GET", f"{base}?since={urllib.request.quote(later)}")
    assert status == 200 and all(m["count"] == 0 for m in body)
    status, body, _ = http(
        engine, "GET", f"{base}?since={urllib.request.quote(since)}&workflow_ids=parked-metrics"
    )
    assert {m["status"]: m["count"] for m in body}["QUEUED"] == 1
    assert sum(m["count"] for m in body) == 1
    status, body, _ = http(engine, "GET", f"{base}?since=yesterday")
    assert status == 400 and "since" in error_text(body)
    status, body, _ = http(engine, "GET", f"{base}?parent_task_external_id=abc")
    assert status == 501 and "parent" in error_text(body)

    status, body, _ = http(
        engine, "GET", f"/api/v1/tenants/{tenant(engine)}/step-run-queue-metrics"
    )
    assert status == 200 and body == {"queues": {"parked-metrics:act": 1}}

    text = _scrape(engine, f"/api/v1/tenants/{tenant(engine)}/prometheus-metrics", engine.token)
    assert f'hatchet_tenant_succeeded_tasks_total{{tenant_id="{tenant(engine)}"}} 2.0' in text
    assert f'hatchet_tenant_failed_tasks_total{{tenant_id="{tenant(engine)}"}} 1.0' in text
    assert "hatchet_tenant_queue_size{" in text
    # Engine-wide series are not a tenant's, and another tenant sees none of these.
    assert "\nhatchet_succeeded_tasks_total " not in text
    assert "hewer_store_commit_seconds" not in text
    other_id, other_token = other_tenant_token(engine)
    theirs = _scrape(engine, f"/api/v1/tenants/{other_id}/prometheus-metrics", other_token)
    assert tenant(engine) not in theirs
    assert "# TYPE hatchet_tenant_succeeded_tasks_total counter" in theirs


def _scrape(engine: EngineThread, path: str, token: str) -> str:
    request = urllib.request.Request(
        engine.api_url + path, headers={"Authorization": f"Bearer {token}"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return str(response.read().decode())
