"""The tenant matrix (reliability reference S1), generated: tenant B's admin token calls
every gRPC method (found from the proto descriptors) and every REST route (found from the
engine's routes) naming tenant A's objects: its run, task, worker, workflow, event, cron,
scheduled run and filter ids, in every id-like field and path parameter. Nothing B is
answered names any of A's objects, and A's state is what it was. A method or route added
later is covered without a new test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from starlette.routing import Route

from hewer._proto import dispatcher_pb2 as d
from hewer._proto import events_pb2 as ev
from hewer._proto.v1 import workflows_pb2 as v1
from hewer.engine.grpc.relay import method_shapes
from hewer.testing import EngineThread
from tests.grpc_raw import input_type
from tests.integration.test_grpc_edge import Stubs, other_tenant_token
from tests.integration.test_rest import http

IDENTITY = (lambda b: b, lambda b: b)


class Victim:
    """Tenant A's objects, made with its own token."""

    def __init__(self, engine: EngineThread) -> None:
        self.tenant = engine.engine.default_tenant_id
        a = Stubs(engine, engine.token)
        a.admin.PutWorkflow(
            v1.CreateWorkflowVersionRequest(
                name="victim",
                tasks=[v1.CreateTaskOpts(readable_id="t", action="victim:t")],
                cron_triggers=["0 0 1 1 *"],
            ),
            metadata=a.md,
        )
        self.worker = str(
            a.dispatcher.Register(
                d.WorkerRegisterRequest(worker_name="victim-worker", actions=["victim:t"]),
                metadata=a.md,
            ).worker_id
        )
        self.run = a.trigger("victim", '{"secret": "a"}')
        core = engine.engine.core
        details = engine.call(core.run_details(self.tenant, self.run))
        self.task = details.tasks[0].task_id
        self.event = str(
            a.events.Push(
                ev.PushEventRequest(key="victim:event", payload="{}"), metadata=a.md
            ).event_id
        )
        store = engine.engine.store
        self.cron = engine.call(store.crons_list(self.tenant, None, 10, 0))[0].id
        scheduled = a.workflows.ScheduleWorkflow(_schedule_request("victim"), metadata=a.md)
        self.scheduled = str(scheduled.id)
        self.ids = {self.run, self.task, self.worker, self.event, self.cron, self.scheduled}
        # What of A's only A knows: B never sends these, so an answer holding one leaked it
        # (A's ids B sends itself, and "not found" may name them back).
        self.markers = ["secret", "victim-worker", "victim:event", "victim:t", "0 0 1 1 *"]

    def by_field(self, name: str) -> str:
        """Which of A's ids a field or path parameter of this name would carry."""
        name = name.lower()
        for words, value in (
            (("worker",), self.worker),
            (("event",), self.event),
            (("cron",), self.cron),
            (("schedul",), self.scheduled),
            (("task", "step"), self.task),
            (("run", "external", "parent", "id"), self.run),
            (("workflow", "name", "key", "filter"), "victim"),
            (("tenant",), self.tenant),
        ):
            if any(word in name for word in words):
                return value
        return self.run


def _schedule_request(name: str) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    from hewer._proto import workflows_pb2 as w0

    at = Timestamp()
    at.FromSeconds(4_000_000_000)
    return w0.ScheduleWorkflowRequest(name=name, schedules=[at], input="{}")


def _aimed(desc: Descriptor, victim: Victim, depth: int = 0) -> Any:
    """A message of ``desc`` whose every string field holds the A id its name suggests."""
    msg = message_factory.GetMessageClass(desc)()
    for field in desc.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            value = victim.by_field(field.name)
            if field.is_repeated:
                getattr(msg, field.name).extend([*sorted(victim.ids), value])
            else:
                setattr(msg, field.name, value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < 2:
            if field.message_type.GetOptions().map_entry:
                continue
            inner = _aimed(field.message_type, victim, depth + 1)
            if field.is_repeated:
                getattr(msg, field.name).append(inner)
            else:
                getattr(msg, field.name).CopyFrom(inner)
    return msg


def _answer(channel: grpc.Channel, method: str, payload: bytes, token: str) -> bytes:
    """The bytes of the answer (a stream's first message), or of the error's details."""
    client_streams, server_streams = method_shapes()[method]
    md = [("authorization", f"bearer {token}")]
    try:
        if not client_streams and not server_streams:
            return bytes(channel.unary_unary(method, *IDENTITY)(payload, metadata=md, timeout=5))
        if not client_streams:
            for first in channel.unary_stream(method, *IDENTITY)(payload, metadata=md, timeout=1):
                return bytes(first)
        elif not server_streams:
            return bytes(
                channel.stream_unary(method, *IDENTITY)(iter([payload]), metadata=md, timeout=5)
            )
        else:
            for first in channel.stream_stream(method, *IDENTITY)(
                iter([payload]), metadata=md, timeout=1
            ):
                return bytes(first)
    except grpc.RpcError as exc:
        return (exc.details() or "").encode()
    return b""


def _state(engine: EngineThread, tenant: str) -> Any:
    store = engine.engine.store
    runs = engine.call(store.runs_list(tenant))
    workers = engine.call(store.workers_list())
    return {
        "runs": sorted((r.id, str(r.status)) for r in runs),
        "tasks": sorted(
            (t.id, str(t.status), t.retry_count) for t in engine.call(store.tasks_list(tenant))
        ),
        "workers": sorted(
            (w.id, w.status, tuple(sorted(w.labels.items())))
            for w in workers
            if w.tenant_id == tenant
        ),
        "crons": sorted(c.id for c in engine.call(store.crons_list(tenant, None, 100, 0))),
    }


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineThread]:
    work: Path = tmp_path_factory.mktemp("matrix")
    with EngineThread(work) as running:
        yield running


def test_another_tenant_reaches_nothing_of_ours_over_grpc_and_rest(engine: EngineThread) -> None:
    victim = Victim(engine)
    before = _state(engine, victim.tenant)
    intruder = other_tenant_token(engine, "intruder")
    leaks: list[str] = []

    with grpc.insecure_channel(engine.address) as channel:
        methods = sorted(method_shapes())
        assert len(methods) > 30
        for method in methods:
            request = _aimed(input_type(method), victim)
            answer = _answer(channel, method, request.SerializeToString(), intruder)
            named = [m for m in victim.markers if m.encode() in answer]
            if named:
                leaks.append(f"{method}: {named} {answer[:200]!r}")

    app = engine.engine._api_switch.local
    assert app is not None
    routes = [r for r in app.routes if isinstance(r, Route)]
    assert len(routes) > 20
    for route in routes:
        params = list(route.param_convertors)
        for method in sorted(route.methods or ()):
            if method == "HEAD":
                continue
            path = route.path
            for name in params:
                path = path.replace(f"{{{name}}}", victim.by_field(name))
            body = {"externalIds": sorted(victim.ids), "name": "victim", "cronName": "x"}
            status, answer, _ = http(engine, method, path, body, token=intruder)
            text = json.dumps(answer)
            named = [m for m in victim.markers if m in text]
            # Every route names A's tenant or one of A's objects: each is refused.
            if status not in (403, 404) or named:
                leaks.append(f"{method} {path}: {status} {named} {text[:200]}")

    assert not leaks, "\n".join(leaks)
    assert _state(engine, victim.tenant) == before

    # The same calls with A's own token do find A's objects: the markers are there to see.
    with grpc.insecure_channel(engine.address) as channel:
        details = v1.GetRunDetailsRequest(external_id=victim.run).SerializeToString()
        own = _answer(channel, "/v1.AdminService/GetRunDetails", details, engine.token)
        assert b"secret" in own
    status, answer, _ = http(engine, "GET", f"/api/v1/tenants/{victim.tenant}/worker")
    assert status == 200 and "victim-worker" in json.dumps(answer)
