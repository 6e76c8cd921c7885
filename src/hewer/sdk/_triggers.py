"""What starts runs besides a direct trigger: ``hw.events`` (push events that workflows
listen to with ``on_events``), ``hw.scheduled`` (runs at a time) and ``hw.crons`` (runs at
every tick of a cron expression). Event keys and workflow names are namespaced as the
client's workflows are."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from hewer._proto import events_pb2, workflows_pb2
from hewer.errors import ConfigurationError
from hewer.sdk import _serde, _wire
from hewer.sdk._admin import RestClient, _time
from hewer.sdk._core import ClientCore
from hewer.sdk._options import check_priority
from hewer.sdk._retry import aio_call_with_retry, call_with_retry, translate

CALL_TIMEOUT_SECONDS = 30.0
MAX_BULK_PUSH = 1000

T = TypeVar("T")


def _timestamp(at: datetime) -> timestamp_pb2.Timestamp:
    if at.tzinfo is None:
        raise ConfigurationError(f"give an aware datetime (with a time zone), got {at!r}")
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(at.timestamp() * 1e9))
    return ts


def _json_object(value: Mapping[str, Any] | None, what: str) -> str:
    if value is None:
        return "{}"
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{what} must be a mapping, got {type(value).__name__}")
    return _serde.dumps(dict(value))


# ---------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Event:
    """An event as the engine stored it."""

    id: str
    key: str
    payload: dict[str, Any]
    additional_metadata: dict[str, Any]
    created_at: datetime
    scope: str | None = None

    @classmethod
    def from_proto(cls, msg: Any) -> Event:
        meta = msg.additional_metadata if msg.HasField("additional_metadata") else ""
        return cls(
            id=msg.event_id,
            key=msg.key,
            payload=json.loads(msg.payload) if msg.payload else {},
            additional_metadata=json.loads(meta) if meta else {},
            created_at=msg.event_timestamp.ToDatetime(tzinfo=UTC),
            scope=msg.scope if msg.HasField("scope") else None,
        )


@dataclass(frozen=True, slots=True)
class EventPush:
    """One event of ``hw.events.bulk_push``."""

    key: str
    payload: Mapping[str, Any] | None = None
    additional_metadata: Mapping[str, Any] | None = None
    priority: int | None = None
    scope: str | None = None


class Events:
    """``hw.events``: push events; every workflow whose ``on_events`` holds the key gets a
    run with the payload as its input (stored with the event, in one transaction)."""

    def __init__(self, client: ClientCore) -> None:
        self._client = client

    def _request(self, event: EventPush) -> Any:
        if not isinstance(event.key, str) or not event.key.strip():
            raise ConfigurationError("an event needs a non-empty key")
        request = events_pb2.PushEventRequest(
            key=self._client.namespaced(event.key),
            payload=_json_object(event.payload, "payload"),
            additional_metadata=_json_object(event.additional_metadata, "additional_metadata"),
        )
        request.event_timestamp.GetCurrentTime()
        priority = check_priority(event.priority)
        if priority is not None:
            request.priority = priority
        if event.scope is not None:
            request.scope = event.scope
        return request

    def push(
        self,
        key: str,
        payload: Mapping[str, Any] | None = None,
        *,
        additional_metadata: Mapping[str, Any] | None = None,
        priority: int | None = None,
        scope: str | None = None,
    ) -> Event:
        """Push one event; returns it once it (and the runs it starts) are stored."""
        request = self._request(EventPush(key, payload, additional_metadata, priority, scope))
        pool = self._client._pool
        stub = _wire.events_stub(pool.sync())
        return Event.from_proto(
            _call(
                lambda: stub.Push(request, metadata=pool.metadata, timeout=CALL_TIMEOUT_SECONDS),
                f"push event {key!r}",
            )
        )

    async def aio_push(
        self,
        key: str,
        payload: Mapping[str, Any] | None = None,
        *,
        additional_metadata: Mapping[str, Any] | None = None,
        priority: int | None = None,
        scope: str | None = None,
    ) -> Event:
        """Push one event; returns it once it (and the runs it starts) are stored."""
        request = self._request(EventPush(key, payload, additional_metadata, priority, scope))
        pool = self._client._pool
        stub = _wire.events_stub(pool.aio())
        response = await _aio_call(
            lambda: stub.Push(request, metadata=pool.metadata, timeout=CALL_TIMEOUT_SECONDS),
            f"push event {key!r}",
        )
        return Event.from_proto(response)

    def _bulk(self, events: Sequence[EventPush]) -> Any:
        if not events:
            raise ConfigurationError("bulk_push needs at least one event")
        if len(events) > MAX_BULK_PUSH:
            raise ConfigurationError(f"at most {MAX_BULK_PUSH} events per bulk_push")
        return events_pb2.BulkPushEventRequest(events=[self._request(e) for e in events])

    def bulk_push(self, events: Sequence[EventPush]) -> list[Event]:
        """Push up to 1,000 events in one call (all stored, or none)."""
        request = self._bulk(events)
        pool = self._client._pool
        stub = _wire.events_stub(pool.sync())
        response = _call(
            lambda: stub.BulkPush(request, metadata=pool.metadata, timeout=CALL_TIMEOUT_SECONDS),
            f"bulk push of {len(events)} events",
        )
        return [Event.from_proto(e) for e in response.events]

    async def aio_bulk_push(self, events: Sequence[EventPush]) -> list[Event]:
        """Push up to 1,000 events in one call (all stored, or none)."""
        request = self._bulk(events)
        pool = self._client._pool
        stub = _wire.events_stub(pool.aio())
        response = await _aio_call(
            lambda: stub.BulkPush(request, metadata=pool.metadata, timeout=CALL_TIMEOUT_SECONDS),
            f"bulk push of {len(events)} events",
        )
        return [Event.from_proto(e) for e in response.events]


def _call(fn: Callable[[], T], what: str) -> T:
    try:
        return call_with_retry(fn, what=what)
    except grpc.RpcError as exc:
        raise translate(exc, what) from exc


async def _aio_call(fn: Callable[[], Any], what: str) -> Any:
    try:
        return await aio_call_with_retry(fn, what=what)
    except grpc.RpcError as exc:
        raise translate(exc, what) from exc


# ---------------------------------------------------------------------- scheduled runs


@dataclass(frozen=True, slots=True)
class ScheduledRun:
    """A run to start once at ``trigger_at``; ``run_id`` is set once it started."""

    id: str
    workflow_name: str
    trigger_at: datetime
    input: dict[str, Any]
    additional_metadata: dict[str, Any]
    run_id: str | None = None
    run_status: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScheduledRun:
        at = _time(data.get("triggerAt"))
        assert at is not None
        return cls(
            id=str(data["metadata"]["id"]),
            workflow_name=str(data.get("workflowName", "")),
            trigger_at=at,
            input=dict(data.get("input") or {}),
            additional_metadata=dict(data.get("additionalMetadata") or {}),
            run_id=data.get("workflowRunId"),
            run_status=data.get("workflowRunStatus"),
        )


def schedule_request(
    name: str,
    times: Sequence[datetime],
    input_json: str,
    additional_metadata: Mapping[str, Any] | None,
    priority: int | None,
) -> Any:
    """``ScheduleWorkflowRequest`` for runs of ``name`` (namespaced) at ``times``."""
    request = workflows_pb2.ScheduleWorkflowRequest(
        name=name, schedules=[_timestamp(t) for t in times], input=input_json
    )
    if additional_metadata:
        request.additional_metadata = _serde.dumps(dict(additional_metadata))
    priority = check_priority(priority)
    if priority is not None:
        request.priority = priority
    return request


def schedule(client: ClientCore, request: Any) -> list[ScheduledRun]:
    pool = client._pool
    stub = _wire.workflow_stub(pool.sync())
    response = _call(
        lambda: stub.ScheduleWorkflow(
            request, metadata=pool.metadata, timeout=CALL_TIMEOUT_SECONDS
        ),
        f"schedule {request.name!r}",
    )
    return _scheduled(request, response)


async def aio_schedule(client: ClientCore, request: Any) -> list[ScheduledRun]:
    pool = client._pool
    stub = _wire.workflow_stub(pool.aio())
    response = await _aio_call(
        lambda: stub.ScheduleWorkflow(
            request, metadata=pool.metadata, timeout=CALL_TIMEOUT_SECONDS
        ),
        f"schedule {request.name!r}",
    )
    return _scheduled(request, response)


def _scheduled(request: Any, response: Any) -> list[ScheduledRun]:
    input_value = json.loads(request.input) if request.input else {}
    meta = (
        json.loads(request.additional_metadata) if request.HasField("additional_metadata") else {}
    )
    return [
        ScheduledRun(
            id=s.id,
            workflow_name=request.name,
            trigger_at=s.trigger_at.ToDatetime(tzinfo=UTC),
            input=input_value,
            additional_metadata=meta,
        )
        for s in response.scheduled_workflows
    ]


_ScheduledRuns = list[ScheduledRun]


def _id_path(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{what} must be a non-empty id")
    return urllib.parse.quote(value, safe="")


class Scheduled:
    """``hw.scheduled``: runs to start once at a given time (create with
    ``workflow.schedule(at, input)`` or ``hw.scheduled.create``)."""

    def __init__(self, client: ClientCore) -> None:
        self._client = client
        self._rest = RestClient(client)

    def _base(self) -> str:
        return f"/api/v1/tenants/{self._rest.tenant_id}/workflows"

    def create(
        self,
        workflow_name: str,
        trigger_at: datetime,
        input: Mapping[str, Any] | None = None,
        *,
        additional_metadata: Mapping[str, Any] | None = None,
        priority: int | None = None,
    ) -> ScheduledRun:
        """A run of ``workflow_name`` at ``trigger_at`` (an aware datetime)."""
        request = schedule_request(
            self._client.namespaced(workflow_name),
            [trigger_at],
            _json_object(input, "input"),
            additional_metadata,
            priority,
        )
        return schedule(self._client, request)[0]

    def list(self, workflow_name: str | None = None, *, limit: int = 100) -> list[ScheduledRun]:
        """Scheduled runs (fired or not), by trigger time."""
        query = {"limit": str(limit)}
        if workflow_name is not None:
            query["workflowName"] = self._client.namespaced(workflow_name)
        path = f"{self._base()}/scheduled?{urllib.parse.urlencode(query)}"
        data = self._rest.call("GET", path, what="list scheduled runs")
        return [ScheduledRun.from_json(r) for r in (data or {}).get("rows", [])]

    def get(self, scheduled_id: str) -> ScheduledRun:
        path = f"{self._base()}/scheduled/{_id_path(scheduled_id, 'scheduled_id')}"
        return ScheduledRun.from_json(
            self._rest.call("GET", path, what=f"get scheduled run {scheduled_id!r}")
        )

    def update(self, scheduled_id: str, trigger_at: datetime) -> ScheduledRun:
        """A new time for a scheduled run that has not fired yet."""
        path = f"{self._base()}/scheduled/{_id_path(scheduled_id, 'scheduled_id')}"
        body = {"triggerAt": _timestamp(trigger_at).ToJsonString()}
        return ScheduledRun.from_json(
            self._rest.call("PATCH", path, body, what=f"move scheduled run {scheduled_id!r}")
        )

    def delete(self, scheduled_id: str) -> None:
        """Delete a scheduled run; one that has not fired yet never will."""
        path = f"{self._base()}/scheduled/{_id_path(scheduled_id, 'scheduled_id')}"
        self._rest.call("DELETE", path, what=f"delete scheduled run {scheduled_id!r}")

    async def aio_list(self, workflow_name: str | None = None) -> _ScheduledRuns:
        return await asyncio.to_thread(self.list, workflow_name)

    async def aio_get(self, scheduled_id: str) -> ScheduledRun:
        return await asyncio.to_thread(self.get, scheduled_id)

    async def aio_delete(self, scheduled_id: str) -> None:
        await asyncio.to_thread(self.delete, scheduled_id)


# ---------------------------------------------------------------------- crons


@dataclass(frozen=True, slots=True)
class Cron:
    """A cron trigger: a run of ``workflow_name`` at every tick of ``expression`` (UTC).
    ``declared`` ones come with a workflow's ``on_crons``."""

    id: str
    workflow_name: str
    name: str
    expression: str
    input: dict[str, Any]
    additional_metadata: dict[str, Any]
    enabled: bool
    declared: bool
    next_run_at: datetime | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cron:
        return cls(
            id=str(data["metadata"]["id"]),
            workflow_name=str(data.get("workflowName", "")),
            name=str(data.get("name") or ""),
            expression=str(data.get("cron", "")),
            input=dict(data.get("input") or {}),
            additional_metadata=dict(data.get("additionalMetadata") or {}),
            enabled=bool(data.get("enabled", True)),
            declared=data.get("method") == "DEFAULT",
            next_run_at=_time(data.get("nextRunAt")),
        )


_Crons = list[Cron]


class Crons:
    """``hw.crons``: cron triggers created at run time (besides those a workflow declares
    with ``on_crons``). Each tick starts one run, once, even with several engines; after a
    time no engine ran, a cron fires once for the ticks it missed."""

    def __init__(self, client: ClientCore) -> None:
        self._client = client
        self._rest = RestClient(client)

    def _base(self) -> str:
        return f"/api/v1/tenants/{self._rest.tenant_id}/workflows"

    def create(
        self,
        workflow_name: str,
        name: str,
        expression: str,
        input: Mapping[str, Any] | None = None,
        *,
        additional_metadata: Mapping[str, Any] | None = None,
        priority: int | None = None,
    ) -> Cron:
        """A cron named ``name`` starting runs of ``workflow_name`` (5 fields, or 6 with
        seconds first; UTC)."""
        body: dict[str, Any] = {
            "cronName": name,
            "cronExpression": expression,
            "input": dict(input or {}),
            "additionalMetadata": dict(additional_metadata or {}),
        }
        if check_priority(priority) is not None:
            body["priority"] = priority
        workflow = _id_path(self._client.namespaced(workflow_name), "workflow_name")
        return Cron.from_json(
            self._rest.call(
                "POST", f"{self._base()}/{workflow}/crons", body, what=f"create cron {name!r}"
            )
        )

    def list(self, workflow_name: str | None = None, *, limit: int = 100) -> list[Cron]:
        query = {"limit": str(limit)}
        if workflow_name is not None:
            query["workflowName"] = self._client.namespaced(workflow_name)
        path = f"{self._base()}/crons?{urllib.parse.urlencode(query)}"
        data = self._rest.call("GET", path, what="list crons")
        return [Cron.from_json(r) for r in (data or {}).get("rows", [])]

    def get(self, cron_id: str) -> Cron:
        path = f"{self._base()}/crons/{_id_path(cron_id, 'cron_id')}"
        return Cron.from_json(self._rest.call("GET", path, what=f"get cron {cron_id!r}"))

    def delete(self, cron_id: str) -> None:
        path = f"{self._base()}/crons/{_id_path(cron_id, 'cron_id')}"
        self._rest.call("DELETE", path, what=f"delete cron {cron_id!r}")

    async def aio_create(
        self,
        workflow_name: str,
        name: str,
        expression: str,
        input: Mapping[str, Any] | None = None,
        *,
        additional_metadata: Mapping[str, Any] | None = None,
        priority: int | None = None,
    ) -> Cron:
        return await asyncio.to_thread(
            lambda: self.create(
                workflow_name,
                name,
                expression,
                input,
                additional_metadata=additional_metadata,
                priority=priority,
            )
        )

    async def aio_list(self, workflow_name: str | None = None) -> _Crons:
        return await asyncio.to_thread(self.list, workflow_name)

    async def aio_get(self, cron_id: str) -> Cron:
        return await asyncio.to_thread(self.get, cron_id)

    async def aio_delete(self, cron_id: str) -> None:
        await asyncio.to_thread(self.delete, cron_id)


# ---------------------------------------------------------------------- event filters


@dataclass(frozen=True, slots=True)
class EventFilter:
    """An event filter of a workflow (see ``DefaultFilter``); ``declarative`` ones come with
    the workflow's definition."""

    id: str
    workflow_id: str
    scope: str
    expression: str
    payload: dict[str, Any]
    declarative: bool

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EventFilter:
        return cls(
            id=str(data["metadata"]["id"]),
            workflow_id=str(data.get("workflowId", "")),
            scope=str(data.get("scope", "")),
            expression=str(data.get("expression", "")),
            payload=dict(data.get("payload") or {}),
            declarative=bool(data.get("isDeclarative", False)),
        )


_EventFilters = list[EventFilter]


class Filters:
    """``hw.filters``: event filters made at run time (besides a workflow's
    ``default_filters``)."""

    def __init__(self, client: ClientCore) -> None:
        self._client = client
        self._rest = RestClient(client)

    def _base(self) -> str:
        return f"/api/v1/stable/tenants/{self._rest.tenant_id}/filters"

    def workflow_id(self, workflow_name: str) -> str:
        """The engine's id of a workflow (by name, namespaced)."""
        name = self._client.namespaced(workflow_name)
        path = f"/api/v1/tenants/{self._rest.tenant_id}/workflows?" + urllib.parse.urlencode(
            {"name": name}
        )
        rows = (self._rest.call("GET", path, what=f"find workflow {name!r}") or {}).get("rows")
        for row in rows or ():
            if row.get("name") == name:
                return str(row["metadata"]["id"])
        raise ConfigurationError(f"no workflow {name!r} is registered")

    def create(
        self,
        workflow_name: str,
        expression: str,
        scope: str,
        payload: Mapping[str, Any] | None = None,
    ) -> EventFilter:
        body = {
            "workflowId": self.workflow_id(workflow_name),
            "expression": expression,
            "scope": scope,
            "payload": dict(payload or {}),
        }
        return EventFilter.from_json(
            self._rest.call("POST", self._base(), body, what=f"create filter {scope!r}")
        )

    def list(
        self, workflow_name: str | None = None, scopes: Sequence[str] = (), *, limit: int = 100
    ) -> list[EventFilter]:
        query: list[tuple[str, str]] = [("limit", str(limit))]
        if workflow_name is not None:
            query.append(("workflowIds", self.workflow_id(workflow_name)))
        query.extend(("scopes", s) for s in scopes)
        path = f"{self._base()}?{urllib.parse.urlencode(query)}"
        data = self._rest.call("GET", path, what="list filters")
        return [EventFilter.from_json(r) for r in (data or {}).get("rows", [])]

    def get(self, filter_id: str) -> EventFilter:
        path = f"{self._base()}/{_id_path(filter_id, 'filter_id')}"
        return EventFilter.from_json(self._rest.call("GET", path, what=f"get filter {filter_id!r}"))

    def delete(self, filter_id: str) -> None:
        path = f"{self._base()}/{_id_path(filter_id, 'filter_id')}"
        self._rest.call("DELETE", path, what=f"delete filter {filter_id!r}")

    async def aio_list(self, workflow_name: str | None = None) -> _EventFilters:
        return await asyncio.to_thread(self.list, workflow_name)

    async def aio_delete(self, filter_id: str) -> None:
        await asyncio.to_thread(self.delete, filter_id)
