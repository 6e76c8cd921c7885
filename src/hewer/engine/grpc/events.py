"""Service ``EventsService``: task log lines and stream events."""

from __future__ import annotations

from typing import Any

from hewer._proto import events_pb2 as pb
from hewer._proto import events_pb2_grpc as pb_grpc
from hewer.domain import LogLine
from hewer.engine.grpc._common import Servicer, caller, unary
from hewer.errors import InvalidInput

MAX_LOG_CHARS = 10_000


class EventsServicer(Servicer, pb_grpc.EventsServiceServicer):  # type: ignore[misc]
    @unary
    async def PutLog(self, tenant_id: str, request: Any, context: Any) -> Any:
        if not request.task_run_external_id:
            raise InvalidInput("task_run_external_id must not be empty")
        task_id = request.task_run_external_id
        await self.core.check_task_caller(tenant_id, task_id, caller())
        created = (
            request.created_at.ToNanoseconds() / 1e9
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
