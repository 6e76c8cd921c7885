"""Services ``hewer.v1.Worker`` and ``hewer.v1.Runs``: Hewer's batched calls for its own SDK
(the Hatchet surface stays complete beside them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from hewer._proto.hewer.v1 import worker_pb2 as pb
from hewer._proto.hewer.v1 import worker_pb2_grpc as pb_grpc
from hewer.domain import EventType, TaskEvent
from hewer.engine.grpc._common import Servicer, TokenWatch, abort_for, caller, unary
from hewer.engine.grpc.dispatcher import (
    ENGINE_VERSION,
    assigned_action,
    deliverable,
    task_event,
    watch_runs,
)
from hewer.errors import InvalidInput

MAX_ACTIONS_PER_BATCH = 256
MAX_REPORTS_PER_CALL = 1000
MAX_RUNS_PER_WAIT = 1000
# What an ActionBatch may hold besides its actions (tags, lengths).
_BATCH_OVERHEAD = 16


class WorkerServicer(Servicer, pb_grpc.WorkerServicer):  # type: ignore[misc]
    max_message_bytes = 4 * 1024 * 1024

    @unary
    async def Hello(self, tenant_id: str, request: Any, context: Any) -> Any:
        return pb.HelloResponse(
            version=ENGINE_VERSION,
            max_actions_per_batch=MAX_ACTIONS_PER_BATCH,
            max_reports_per_call=MAX_REPORTS_PER_CALL,
            max_runs_per_wait=MAX_RUNS_PER_WAIT,
        )

    async def Listen(self, request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            tenant_id = await self.tenant(context)
            await self.core.check_worker_caller(tenant_id, request.worker_id, caller())
            session = await self.core.open_session(tenant_id, request.worker_id)
        except Exception as exc:
            await abort_for(exc, context, "Listen")
            return
        limit = min(request.max_batch or MAX_ACTIONS_PER_BATCH, MAX_ACTIONS_PER_BATCH)
        budget = self.max_message_bytes - _BATCH_OVERHEAD
        watch = TokenWatch(self.auth, context, lambda: self.core.close_session(session))
        try:
            if request.running:
                started = [
                    TaskEvent(
                        tenant_id,
                        a.task_run_external_id,
                        a.retry_count,
                        request.worker_id,
                        EventType.STARTED,
                    )
                    for a in request.running[:MAX_REPORTS_PER_CALL]
                ]
                await self.core.task_events(started)
            await context.send_initial_metadata(())
            while True:
                actions = await session.next_batch(limit)
                if actions is None:
                    break
                batch = pb.ActionBatch()
                size = 0
                for action in actions:
                    msg = assigned_action(tenant_id, action)
                    n = msg.ByteSize()
                    if not await deliverable(self.core, tenant_id, request.worker_id, action, n):
                        continue
                    n += 8
                    if batch.actions and size + n > budget:
                        # Bounded messages: what does not fit goes in the next one.
                        yield batch
                        batch = pb.ActionBatch()
                        size = 0
                    batch.actions.append(msg)
                    size += n
                if batch.actions:
                    yield batch
        finally:
            watch.cancel()
            self.core.close_session(session)
        await watch.refuse_if_invalid(context)

    @unary
    async def Report(self, tenant_id: str, request: Any, context: Any) -> Any:
        if len(request.events) > MAX_REPORTS_PER_CALL:
            raise InvalidInput(f"at most {MAX_REPORTS_PER_CALL} events per report call")
        who = caller()
        for worker_id in sorted({e.worker_id for e in request.events}):
            await self.core.check_worker_caller(tenant_id, worker_id, who)
        events = [task_event(tenant_id, e) for e in request.events]
        outcomes = iter(await self.core.task_events([e for e in events if e is not None]))
        response = pb.ReportResults()
        for event in events:
            if event is None:
                response.results.add(applied=False, reason="informational event")
            else:
                outcome = next(outcomes)
                response.results.add(applied=outcome.applied, reason=outcome.reason)
        return response


class RunsServicer(Servicer, pb_grpc.RunsServicer):  # type: ignore[misc]
    async def Wait(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        try:
            tenant_id = await self.tenant(context)
        except Exception as exc:
            await abort_for(exc, context, "Wait")
            return

        watch = TokenWatch(self.auth, context, lambda: None)
        who = caller()

        async def run_ids() -> AsyncIterator[list[str]]:
            async for req in request_iterator:
                if not await watch.valid():  # a revoked token asks for nothing more
                    return
                if len(req.run_ids) > MAX_RUNS_PER_WAIT:
                    raise InvalidInput(f"at most {MAX_RUNS_PER_WAIT} run ids per wait request")
                await self.core.check_run_readers(tenant_id, req.run_ids, who)
                yield list(req.run_ids)

        budget = (self.core.max_message_bytes or 4 * 1024 * 1024) - _BATCH_OVERHEAD
        try:
            async for events in watch_runs(
                self.core, tenant_id, run_ids(), batch=MAX_RUNS_PER_WAIT
            ):
                await watch.check(context)  # nor is told anything more
                # Bounded messages: events that do not fit together go in the next one.
                response, size = pb.WaitResponse(), 0
                for event in events:
                    n = event.ByteSize() + 8
                    if response.events and size + n > budget:
                        yield response
                        response, size = pb.WaitResponse(), 0
                    response.events.append(event)
                    size += n
                if response.events:
                    yield response
            await watch.refuse_if_invalid(context)
        finally:
            watch.cancel()
