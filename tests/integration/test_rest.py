"""The engine's HTTP API over real loopback HTTP, plus the SDK admin calls built on it and on
gRPC ``CancelTasks``: auth, worker pause/resume, cancel by ids and by filter, bad bodies."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from hewer import Context, Hewer, InvalidInput, NotFound, RunFilter, TaskRunError, WorkerState
from hewer._proto.v1 import workflows_pb2 as v1_pb
from hewer.domain import TaskDef
from hewer.engine.core.auth import unverified_claims
from hewer.errors import HewerError
from hewer.sdk import _wire
from hewer.testing import EngineThread
from tests.helpers import wait_for

_OWN = object()


def http(
    engine: EngineThread,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: Any = _OWN,
    raw: bytes | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """One request; returns (status, parsed JSON body, headers)."""
    headers: dict[str, str] = {}
    if token is _OWN:
        token = engine.token
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(
        engine.api_url + path, data=data, method=method, headers=headers
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null"), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), dict(exc.headers)


def error_text(body: Any) -> str:
    assert isinstance(body, dict) and isinstance(body.get("errors"), list), body
    return " ".join(e["description"] for e in body["errors"])


def tenant(engine: EngineThread) -> str:
    return engine.engine.default_tenant_id


def park_workflow(engine: EngineThread, name: str) -> None:
    """Register a workflow no worker serves, so its runs stay QUEUED."""
    engine.call(
        engine.engine.core.put_workflow(tenant(engine), name, [TaskDef(name, f"{name}:act")], None)
    )


def run_status(engine: EngineThread, run_id: str) -> str:
    return str(engine.call(engine.engine.core.run_details(tenant(engine), run_id)).status)


def other_tenant_token(engine: EngineThread) -> tuple[str, str]:
    other = engine.call(engine.engine.store.tenant_ensure("other", time.time()))
    token = engine.call(
        engine.engine.auth.mint(
            other.id, "other", 3600, server_url=engine.api_url, grpc_address=engine.address
        )
    )
    return other.id, token


# --------------------------------------------------------------------------- basics


def test_health_answers_without_a_token(engine: EngineThread) -> None:
    status, body, _ = http(engine, "GET", "/health", token=None)
    assert status == 200 and body["status"] == "ok"
    if engine.engine.keeper is not None:  # PostgreSQL: a replica, which says its role
        assert body["scheduling"] is True and body["scheduler"] == body["replica"]


def test_tokens_name_the_bound_http_port(engine: EngineThread) -> None:
    assert not engine.api_url.endswith(":0")
    assert unverified_claims(engine.token)["server_url"] == engine.api_url
    assert engine.engine.settings.server_url == engine.api_url


def test_missing_or_invalid_tokens_are_refused(engine: EngineThread) -> None:
    path = f"/api/v1/tenants/{tenant(engine)}/worker"
    for token in (None, "not-a-jwt", engine.token[:-4] + "AAAA"):
        status, body, headers = http(engine, "GET", path, token=token)
        assert status == 401, (token, body)
        assert error_text(body)
        assert headers.get("www-authenticate", headers.get("WWW-Authenticate")) == "Bearer"
    request = urllib.request.Request(
        engine.api_url + path, headers={"Authorization": f"Basic {engine.token}"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10)
    assert caught.value.code == 401


def test_unknown_paths_and_methods_answer_json_errors(engine: EngineThread) -> None:
    status, body, _ = http(engine, "GET", "/api/v1/nothing-here")
    assert status == 404 and error_text(body)
    status, body, _ = http(engine, "DELETE", "/api/v1/workers/abc")
    assert status == 405 and error_text(body)


def test_other_tenants_see_neither_workers_nor_runs(
    engine: EngineThread, client: Hewer, in_process_worker: Any
) -> None:
    @client.task(name="mine")
    def mine(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {}

    worker = in_process_worker(client, [mine], name="mine-worker")
    park_workflow(engine, "parked-mine")
    run_id = client.runs.trigger("parked-mine").run_id
    other_id, other_token = other_tenant_token(engine)

    status, body, _ = http(engine, "GET", f"/api/v1/workers/{worker.id}", token=other_token)
    assert status == 404, body
    status, body, _ = http(
        engine, "PATCH", f"/api/v1/workers/{worker.id}", {"isPaused": True}, token=other_token
    )
    assert status == 404, body
    status, body, _ = http(
        engine, "GET", f"/api/v1/tenants/{tenant(engine)}/worker", token=other_token
    )
    assert status == 403 and "tenant" in error_text(body)
    status, body, _ = http(engine, "GET", f"/api/v1/tenants/{other_id}/worker", token=other_token)
    assert (status, body["rows"]) == (200, [])
    status, body, _ = http(
        engine,
        "POST",
        f"/api/v1/stable/tenants/{other_id}/tasks/cancel",
        {"externalIds": [run_id]},
        token=other_token,
    )
    assert (status, body) == (200, {"ids": []})
    status, body, _ = http(
        engine,
        "POST",
        f"/api/v1/stable/tenants/{tenant(engine)}/tasks/cancel",
        {"externalIds": [run_id]},
        token=other_token,
    )
    assert status == 403
    assert run_status(engine, run_id) == "queued"
    assert http(engine, "GET", f"/api/v1/workers/{worker.id}")[0] == 200


# --------------------------------------------------------------------------- workers


def test_pause_keeps_the_running_task_takes_no_new_ones_and_resume_brings_work_back(
    engine: EngineThread, client: Hewer, in_process_worker: Any
) -> None:
    started = threading.Event()
    release = threading.Event()

    @client.task(name="hold")
    def hold(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        started.set()
        release.wait(30)
        return {"held": True}

    @client.task(name="quick")
    def quick(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"ok": True}

    worker = in_process_worker(client, [hold, quick], slots=2, name="pausable")
    first = hold.run_no_wait({})
    assert started.wait(20)

    status, body, _ = http(engine, "PATCH", f"/api/v1/workers/{worker.id}", {"isPaused": True})
    assert status == 200, body
    assert (body["status"], body["state"], body["name"]) == ("PAUSED", "PAUSED", "pausable")
    assert body["metadata"]["id"] == worker.id
    assert body["slotConfig"] == {"default": {"available": 1, "limit": 2}}
    assert body["statusReason"] == "paused by request"

    info = client.workers.get(worker.id)
    assert info.status is WorkerState.PAUSED
    assert (info.slots_used, info.slots_total) == (1, 2)
    assert info.status_changed_at is not None and info.status_changed_at.tzinfo is not None
    assert abs((datetime.now(UTC) - info.status_changed_at).total_seconds()) < 60

    second = quick.run_no_wait({})
    release.set()
    assert first.result() == {"held": True}  # the paused worker finished its running task
    wait_for(lambda: client.workers.get(worker.id).slots_used == 0, what="slot given back")
    # A slot is free and the task is queued, yet the paused worker did not take it.
    assert run_status(engine, second.run_id) == "queued"

    resumed = client.workers.resume(worker.id)
    assert resumed.status is WorkerState.ACTIVE
    assert resumed.status_reason == "resumed by request"
    assert second.result() == {"ok": True}

    # pause/resume through the SDK, and an empty PATCH changes nothing.
    assert client.workers.pause(worker.id).status is WorkerState.PAUSED
    status, body, _ = http(engine, "PATCH", f"/api/v1/workers/{worker.id}", {})
    assert (status, body["status"]) == (200, "PAUSED")
    assert asyncio.run(client.workers.aio_resume(worker.id)).status is WorkerState.ACTIVE
    assert quick.run({}) == {"ok": True}


def test_worker_reads_list_and_json_shape(
    engine: EngineThread, client: Hewer, in_process_worker: Any
) -> None:
    @client.task(name="noop")
    def noop(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {}

    worker = client.worker("labelled", slots=3, workflows=[noop], labels={"gpu": "a100", "n": 2})
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(20)
        # "ready" can come a moment before the engine has the worker's stream.
        wait_for(lambda: client.workers.get(worker.id).connected, what="stream open")
        status, body, _ = http(engine, "GET", f"/api/v1/tenants/{tenant(engine)}/worker")
        assert status == 200
        assert body["pagination"] == {"current_page": 1, "num_pages": 1}
        (row,) = [r for r in body["rows"] if r["metadata"]["id"] == worker.id]
        assert row["type"] == "SELFHOSTED"
        assert row["status"] == row["state"] == "ACTIVE"
        assert row["connected"] is True
        assert row["actions"] == ["labelled:noop"] or row["actions"] == worker.actions
        assert {(label["key"], label["value"]) for label in row["labels"]} == {
            ("gpu", "a100"),
            ("n", "2"),
        }
        assert row["slotConfig"] == {"default": {"available": 3, "limit": 3}}
        assert row["runtimeInfo"]["language"] == "PYTHON"
        for key in ("lastHeartbeatAt", "statusChangedAt"):
            assert row[key].endswith("Z")

        (info,) = [w for w in client.workers.list() if w.id == worker.id]
        assert (info.name, info.status, info.slots_total) == ("labelled", "active", 3)
        assert info.labels == {"gpu": "a100", "n": "2"}
        assert info.last_heartbeat_at is not None
        assert asyncio.run(client.workers.aio_get(worker.id)).id == worker.id
        assert [w.id for w in asyncio.run(client.workers.aio_list())] == [
            w.id for w in client.workers.list()
        ]
    finally:
        worker.stop()
        thread.join(20)

    def stopped() -> bool:
        return client.workers.get(worker.id).status is WorkerState.STOPPED

    wait_for(stopped, what="worker STOPPED")
    status, body, _ = http(engine, "GET", f"/api/v1/workers/{worker.id}")
    # Hatchet's enum has no STOPPED: its status says INACTIVE, Hewer's state says STOPPED.
    assert (body["status"], body["state"], body["connected"]) == ("INACTIVE", "STOPPED", False)
    status, body, _ = http(engine, "PATCH", f"/api/v1/workers/{worker.id}", {"isPaused": True})
    assert status == 409 and "stopped" in error_text(body)
    with pytest.raises(HewerError, match="HTTP 409"):
        client.workers.resume(worker.id)


def test_unknown_workers_are_404(engine: EngineThread, client: Hewer) -> None:
    for method, body in (("GET", None), ("PATCH", {"isPaused": True})):
        status, answer, _ = http(engine, method, "/api/v1/workers/no-such-worker", body)
        assert status == 404 and "not found" in error_text(answer)
    with pytest.raises(NotFound):
        client.workers.get("no-such-worker")
    with pytest.raises(NotFound):
        client.workers.pause("no-such-worker")
    with pytest.raises(InvalidInput):
        client.workers.get(" ")


def test_bad_worker_bodies_are_400(engine: EngineThread) -> None:
    path = "/api/v1/workers/whatever"
    for raw in (b"{", b"", b"[]", b'"x"', b'{"isPaused": "yes"}', b'{"isPaused": 1}'):
        status, body, _ = http(engine, "PATCH", path, raw=raw)
        assert status == 400, (raw, body)
        assert error_text(body)


# --------------------------------------------------------------------------- cancel


def test_cancel_a_running_task_by_id_over_rest(
    engine: EngineThread, client: Hewer, in_process_worker: Any
) -> None:
    started = threading.Event()
    saw_cancel = threading.Event()

    @client.task(name="stubborn")
    def stubborn(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        started.set()
        if ctx.cancelled.wait(30):
            saw_cancel.set()
        return {}

    worker = in_process_worker(client, [stubborn], slots=1, name="cancel-rest")
    ref = stubborn.run_no_wait({})
    assert started.wait(20)
    status, body, _ = http(
        engine,
        "POST",
        f"/api/v1/stable/tenants/{tenant(engine)}/tasks/cancel",
        {"externalIds": [ref.run_id]},
    )
    assert (status, body) == (200, {"ids": [ref.run_id]})  # a one-task run shares its id
    assert saw_cancel.wait(20), "the worker was not told to cancel"
    with pytest.raises(TaskRunError) as failed:
        ref.result()
    assert failed.value.status == "CANCELLED"
    wait_for(lambda: client.workers.get(worker.id).slots_used == 0, what="slot freed")
    # Again: already cancelled, nothing more to cancel.
    status, body, _ = http(
        engine,
        "POST",
        f"/api/v1/stable/tenants/{tenant(engine)}/tasks/cancel",
        {"externalIds": [ref.run_id]},
    )
    assert (status, body) == (200, {"ids": []})


def test_cancel_by_filter_over_rest(engine: EngineThread, client: Hewer) -> None:
    park_workflow(engine, "parked-a")
    park_workflow(engine, "parked-b")
    before = datetime.now(UTC) - timedelta(seconds=5)
    hit = [
        client.runs.trigger("parked-a", additional_metadata={"batch": "1"}).run_id for _ in range(2)
    ]
    other_batch = client.runs.trigger("parked-a", additional_metadata={"batch": "2"}).run_id
    other_workflow = client.runs.trigger("parked-b", additional_metadata={"batch": "1"}).run_id
    path = f"/api/v1/stable/tenants/{tenant(engine)}/tasks/cancel"

    status, body, _ = http(
        engine,
        "POST",
        path,
        {
            "filter": {
                "since": before.isoformat(),
                "statuses": ["QUEUED"],
                "workflowIds": ["parked-a"],
                "additionalMetadata": ["batch:1"],
            }
        },
    )
    assert status == 200, body
    assert sorted(body["ids"]) == sorted(hit)
    assert [run_status(engine, r) for r in hit] == ["cancelled", "cancelled"]
    assert run_status(engine, other_batch) == run_status(engine, other_workflow) == "queued"

    # A window that ends before these runs were created matches nothing.
    status, body, _ = http(
        engine,
        "POST",
        path,
        {"filter": {"since": "2000-01-01T00:00:00Z", "until": before.isoformat()}},
    )
    assert (status, body) == (200, {"ids": []})
    # Only the status filter: the remaining queued runs go.
    status, body, _ = http(
        engine, "POST", path, {"filter": {"since": before.isoformat(), "statuses": ["QUEUED"]}}
    )
    assert sorted(body["ids"]) == sorted([other_batch, other_workflow])


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"externalIds": []},
        {"externalIds": "abc"},
        {"externalIds": [1, 2]},
        {"externalIds": [""]},
        {"filter": {}},
        {"filter": "yesterday"},
        {"filter": {"since": "not a time"}},
        {"filter": {"since": "2024-01-01T00:00:00Z", "until": 5}},
        {"filter": {"since": "2024-01-02T00:00:00Z", "until": "2024-01-01T00:00:00Z"}},
        {"filter": {"since": "2024-01-01T00:00:00Z", "statuses": ["BOGUS"]}},
        {"filter": {"since": "2024-01-01T00:00:00Z", "statuses": "QUEUED"}},
        {"filter": {"since": "2024-01-01T00:00:00Z", "additionalMetadata": ["nocolon"]}},
        {"externalIds": ["x"], "filter": {"since": "2024-01-01T00:00:00Z"}},
        [],
    ],
)
def test_bad_cancel_bodies_are_400(engine: EngineThread, body: Any) -> None:
    status, answer, _ = http(
        engine, "POST", f"/api/v1/stable/tenants/{tenant(engine)}/tasks/cancel", body
    )
    assert status == 400, answer
    assert error_text(answer)


def test_cancel_over_grpc_by_ids_and_by_filter(engine: EngineThread, client: Hewer) -> None:
    park_workflow(engine, "parked-g")
    since = datetime.now(UTC) - timedelta(seconds=5)
    one, two, three, four = (
        client.runs.trigger("parked-g", additional_metadata={"k": str(i)}).run_id for i in range(4)
    )
    assert client.runs.cancel(one) == [one]
    assert client.runs.cancel([one, "unknown-id"]) == []
    assert asyncio.run(client.runs.aio_cancel([two])) == [two]
    matched = client.runs.cancel(
        filter=RunFilter(
            since=since,
            statuses=["queued"],
            workflows=["parked-g"],
            additional_metadata={"k": "2"},
        )
    )
    assert matched == [three]
    everything = asyncio.run(client.runs.aio_cancel(filter=RunFilter(since=since)))
    assert everything == [four]
    assert {run_status(engine, r) for r in (one, two, three, four)} == {"cancelled"}

    with pytest.raises(InvalidInput):
        client.runs.cancel()
    with pytest.raises(InvalidInput):
        client.runs.cancel([one], filter=RunFilter(since=since))
    with pytest.raises(InvalidInput):
        client.runs.cancel(filter=RunFilter(since=since, statuses=["bogus"]))


def test_grpc_cancel_refuses_bad_filters(engine: EngineThread, client: Hewer) -> None:
    stub = _wire.admin_stub(client._pool.sync())
    metadata = client._pool.metadata
    bad = [
        v1_pb.CancelTasksRequest(filter=v1_pb.TasksFilter(statuses=["BOGUS"])),
        v1_pb.CancelTasksRequest(filter=v1_pb.TasksFilter(additional_metadata=["nocolon"])),
        v1_pb.CancelTasksRequest(external_ids=["x"], filter=v1_pb.TasksFilter()),
        v1_pb.CancelTasksRequest(),
    ]
    for request in bad:
        with pytest.raises(grpc.RpcError) as caught:
            stub.CancelTasks(request, metadata=metadata, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request


# --------------------------------------------------------------------------- hatchet shapes

VALIDATE = """
import json, sys
from hatchet_sdk.clients.rest.models.api_errors import APIErrors
from hatchet_sdk.clients.rest.models.v1_cancelled_tasks import V1CancelledTasks
from hatchet_sdk.clients.rest.models.worker import Worker
from hatchet_sdk.clients.rest.models.worker_list import WorkerList

models = {"Worker": Worker, "WorkerList": WorkerList, "V1CancelledTasks": V1CancelledTasks,
          "APIErrors": APIErrors}
out = []
for name, payload in json.load(sys.stdin):
    parsed = models[name].from_dict(payload)
    out.append([name, parsed.to_dict()])
print(json.dumps(out, default=str))
"""


def _hatchet_installed() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", "import hatchet_sdk"], capture_output=True, check=False
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _hatchet_installed(), reason="hatchet-sdk not installed")
def test_responses_parse_with_hatchet_sdk_models(
    engine: EngineThread, client: Hewer, in_process_worker: Any
) -> None:
    @client.task(name="shape")
    def shape(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {}

    worker = in_process_worker(client, [shape], name="shape-worker")
    park_workflow(engine, "parked-shape")
    run_id = client.runs.trigger("parked-shape").run_id
    cancel_path = f"/api/v1/stable/tenants/{tenant(engine)}/tasks/cancel"
    payloads = [
        ["Worker", http(engine, "PATCH", f"/api/v1/workers/{worker.id}", {"isPaused": True})[1]],
        ["Worker", http(engine, "GET", f"/api/v1/workers/{worker.id}")[1]],
        ["WorkerList", http(engine, "GET", f"/api/v1/tenants/{tenant(engine)}/worker")[1]],
        ["V1CancelledTasks", http(engine, "POST", cancel_path, {"externalIds": [run_id]})[1]],
        ["APIErrors", http(engine, "GET", "/api/v1/workers/nope")[1]],
    ]
    result = subprocess.run(
        [sys.executable, "-c", VALIDATE],
        input=json.dumps(payloads),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    parsed = json.loads(result.stdout)
    assert parsed[0][1]["status"] == "PAUSED"
    assert parsed[0][1]["type"] == "SELFHOSTED"
    assert parsed[2][1]["rows"][0]["metadata"]["id"] == worker.id
    assert parsed[3][1]["ids"] == [run_id]
