"""Service ``EventsService``: task log lines and stream events."""

from __future__ import annotations

from typing import Any

from hewer._proto import events_pb2 as pb
from hewer._proto import events_pb2_grpc as pb_grpc
from hewer.domain import EventRecord, LogLine
from hewer.engine.core.service import EventSpec
from hewer.engine.grpc._common import Servicer, caller, seconds_of, timestamp, unary
from hewer.errors import InvalidInput

MAX_LOG_CHARS = 10_000
MAX_BULK_PUSH = 1000


def event_spec(request: Any) -> EventSpec:
    return EventSpec(
        key=request.key,
        payload=request.payload,
        additional_metadata=(
            request.additional_metadata if request.HasField("additional_metadata") else None
        ),
        priority=request.priority if request.HasField("priority") else None,
        scope=request.scope if request.HasField("scope") else None,
        timestamp=(
            at
            if request.HasField("event_timestamp")
            and (at := seconds_of(request.event_timestamp, "event_timestamp")) > 0
            else None
        ),
    )


def event_message(event: EventRecord) -> Any:
    msg = pb.Event(
        tenant_id=event.tenant_id,
        event_id=event.id,
        key=event.key,
        payload=event.payload,
        event_timestamp=timestamp(event.created_at),
    )
    if event.additional_metadata is not None:
        msg.additional_metadata = event.additional_metadata
    if event.scope is not None:
        msg.scope = event.scope
    return msg


class EventsServicer(Servicer, pb_grpc.EventsServiceServicer):  # type: ignore[misc]
    @unary
    async def Push(self, tenant_id: str, request: Any, context: Any) -> Any:
        (event,) = await self.core.push_events(tenant_id, [event_spec(request)])
        return event_message(event)

    @unary
    async def BulkPush(self, tenant_id: str, request: Any, context: Any) -> Any:
        if not request.events:
            raise InvalidInput("events must not be empty")
        if len(request.events) > MAX_BULK_PUSH:
            raise InvalidInput(f"at most {MAX_BULK_PUSH} events per bulk push")
        events = await self.core.push_events(tenant_id, [event_spec(e) for e in request.events])
        return pb.Events(events=[event_message(e) for e in events])

    @unary
    async def PutLog(self, tenant_id: str, request: Any, context: Any) -> Any:
        if not request.task_run_external_id:
            raise InvalidInput("task_run_external_id must not be empty")
        task_id = request.task_run_external_id
        await self.core.check_task_caller(tenant_id, task_id, caller())
        created = (
            seconds_of(request.created_at, "created_at")
            if request.HasField("created_at")
            else self.core.clock.now()
        )
        line = LogLine(
            task_id=request.task_run_external_id,
            created_at=created,
            message=request.message[:MAX_LOG_CHARS],
            level=request.level if request.HasField("level") else None,
            retry_count=request.task_retry_count if request.HasField("task_retry_count") else None,
        )
        await self.core.put_logs(tenant_id, [line])
        return pb.PutLogResponse()

    @unary
    async def PutStreamEvent(self, tenant_id: str, request: Any, context: Any) -> Any:
        if not request.task_run_external_id:
            raise InvalidInput("task_run_external_id must not be empty")
        task_id = request.task_run_external_id
        await self.core.check_task_caller(tenant_id, task_id, caller())
        await self.core.put_stream_event(
            tenant_id,
            request.task_run_external_id,
            bytes(request.message),
            request.event_index if request.HasField("event_index") else None,
        )
        return pb.PutStreamEventResponse()
