"""Service ``Dispatcher``: worker registration, action streams, heartbeats, task reports."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from hewer._proto import dispatcher_pb2 as pb
from hewer._proto import dispatcher_pb2_grpc as pb_grpc
from hewer._version import __version__ as hewer_version
from hewer.domain import DispatchInfo, EventType, RunDetails, TaskEvent, TaskStatus
from hewer.durations import parse_duration
from hewer.engine.core.ingest import strict_json
from hewer.engine.core.service import Action, ActionKind, EngineCore
from hewer.engine.grpc._common import Servicer, TokenWatch, abort_for, caller, timestamp, unary
from hewer.errors import InvalidInput, NotSupported

logger = logging.getLogger(__name__)

# The SDK keys behaviour on this version (see the protocol reference, 2.8): at or above
# v0.111.0 it uses slot_config and honours retry_after_ms without warnings.
ENGINE_VERSION = f"v0.111.0-hewer.{hewer_version}"

_EVENT_TYPES = {
    pb.STEP_EVENT_TYPE_STARTED: EventType.STARTED,
    pb.STEP_EVENT_TYPE_COMPLETED: EventType.COMPLETED,
    pb.STEP_EVENT_TYPE_FAILED: EventType.FAILED,
    pb.STEP_EVENT_TYPE_CANCELLED: EventType.CANCELLED,
}


def labels_from_proto(labels: Any) -> dict[str, str | int]:
    out: dict[str, str | int] = {}
    for key, value in labels.items():
        if value.HasField("int_value"):
            out[key] = int(value.int_value)
        else:
            out[key] = str(value.str_value)
    return out


def run_event(details: RunDetails, now: float, limit: int | None = None) -> pb.WorkflowRunEvent:
    """The FINISHED event for a done run: every task's output or error. Under ``limit``
    bytes: the largest outputs that do not fit are replaced by an error saying so (a
    client is told, rather than its stream broken)."""
    results = []
    for task in details.tasks:
        if task.status is TaskStatus.SKIPPED:
            continue
        result = pb.StepRunResult(
            task_run_external_id=task.task_id, task_name=task.readable_id, job_run_id=task.task_id
        )
        if task.status is TaskStatus.COMPLETED:
            if task.output:
                result.output = task.output
        else:
            result.error = task.error or f"task {task.status.name.lower()}"
            if task.status is TaskStatus.CANCELLED:
                result.error = f"task cancelled: {task.error or 'cancelled'}"
        results.append(result)
    event = pb.WorkflowRunEvent(
        workflow_run_id=details.id,
        event_type=pb.WORKFLOW_RUN_EVENT_TYPE_FINISHED,
        event_timestamp=timestamp(now),
        results=results,
    )
    if limit is not None and event.ByteSize() > limit - _FRAME_BYTES:
        for result in sorted(event.results, key=lambda r: -len(r.output)):
            if event.ByteSize() <= limit - _FRAME_BYTES or not result.output:
                break
            size = len(result.output)
            result.ClearField("output")
            result.error = (
                f"the output ({size} bytes) does not fit in a message under the {limit}-byte "
                "limit with the run's other outputs"
            )
    return event


def missing_run_event(run_id: str, now: float) -> pb.WorkflowRunEvent:
    return pb.WorkflowRunEvent(
        workflow_run_id=run_id,
        event_type=pb.WORKFLOW_RUN_EVENT_TYPE_FINISHED,
        event_timestamp=timestamp(now),
        results=[pb.StepRunResult(task_name="", error=f"run {run_id} not found")],
    )


def action_payload(info: DispatchInfo) -> str:
    """The AssignedAction payload: the run's input and the outputs of the task's parents.
    Both are stored as validated JSON object text, so the payload is put together without
    parsing them again."""
    parents = ",".join(f"{json.dumps(name)}:{output}" for name, output in info.parents.items())
    errors = f',"step_run_errors":{json.dumps(info.errors)}' if info.errors is not None else ""
    filter_payload = info.links.filter_payload
    triggers = f'{{"filter_payload":{filter_payload}}}' if filter_payload else "{}"
    return (
        f'{{"input":{info.input},"parents":{{{parents}}},'
        f'"triggered_by":"{info.links.triggered_by}",'
        f'"triggers":{triggers},"user_data":{{}},"overrides":{{}}{errors}}}'
    )


def assigned_action(tenant_id: str, action: Action) -> Any:
    """An action for a worker's stream, as Hatchet's AssignedAction."""
    if action.kind is ActionKind.CANCEL:
        return pb.AssignedAction(
            tenant_id=tenant_id,
            job_run_id=action.task_id,
            task_run_external_id=action.task_id,
            action_type=pb.CANCEL_STEP_RUN,
            retry_count=action.retry_count,
            # hatchet-sdk keys its running tasks by id, retry and invocation: a cancel
            # without the invocation the start carried would find nothing to cancel.
            durable_task_invocation_count=action.retry_count + 1,
        )
    info = action.info
    assert info is not None
    msg = pb.AssignedAction(
        tenant_id=tenant_id,
        workflow_run_id=info.run_id,
        job_id=info.step_id,
        job_name=info.readable_id,
        job_run_id=info.task_id,
        task_id=info.step_id,
        task_run_external_id=info.task_id,
        action_id=info.action_id,
        action_type=pb.START_STEP_RUN,
        action_payload=action_payload(info),
        task_name=info.readable_id,
        retry_count=info.retry_count,
        priority=info.priority,
        workflow_id=info.workflow_id,
        workflow_version_id=info.workflow_version_id,
        child_workflow_index=info.links.child_index or 0,
        # Each attempt is an invocation of a durable task's log (other tasks ignore it).
        durable_task_invocation_count=info.retry_count + 1,
    )
    if info.additional_metadata:
        msg.additional_metadata = info.additional_metadata
    links = info.links
    if links.parent_run_id:
        msg.parent_workflow_run_id = links.parent_run_id
    if links.child_key is not None:
        msg.child_workflow_key = links.child_key
    if links.event_id is not None:
        msg.triggering_event_external_id = links.event_id
        msg.triggering_event_key = links.event_key or ""
    return msg


# Room for the stream's own framing beside one AssignedAction.
_FRAME_BYTES = 1024


async def deliverable(
    core: EngineCore, tenant_id: str, worker_id: str, action: Action, size: int
) -> bool:
    """Whether an assignment of ``size`` bytes fits in a message to the worker. One that
    does not (a task whose parents' outputs together exceed the limit) would break the
    stream at every attempt: the task fails at once, saying why."""
    limit = core.max_message_bytes
    if limit is None or action.info is None or size <= limit - _FRAME_BYTES:
        return True
    reason = (
        f"the task's assignment (its run's input and its parents' outputs) takes {size} "
        f"bytes, over the {limit}-byte message limit: it cannot be sent to a worker"
    )
    info = action.info
    event = TaskEvent(
        tenant_id, info.task_id, info.retry_count, worker_id, EventType.FAILED, reason, True
    )
    await core.task_events([event])
    return False


def task_event(tenant_id: str, request: Any) -> TaskEvent | None:
    """A StepActionEvent as the core's report; None for ACKNOWLEDGED (informational: the
    engine owns terminal states)."""
    kind = _EVENT_TYPES.get(request.event_type)
    if kind is None:
        return None
    payload = request.event_payload
    if kind is EventType.COMPLETED:
        payload, kind = _completed_output(payload)
    return TaskEvent(
        tenant_id=tenant_id,
        task_id=request.task_run_external_id,
        retry_count=request.retry_count,
        worker_id=request.worker_id,
        type=kind,
        payload=payload,
        should_not_retry=request.should_not_retry,
        retry_after_ms=request.retry_after_ms if request.HasField("retry_after_ms") else None,
    )


class DispatcherServicer(Servicer, pb_grpc.DispatcherServicer):  # type: ignore[misc]
    @unary
    async def GetVersion(self, tenant_id: str, request: Any, context: Any) -> Any:
        return pb.GetVersionResponse(version=ENGINE_VERSION)

    @unary
    async def Register(self, tenant_id: str, request: Any, context: Any) -> Any:
        slot_config = {k: int(v) for k, v in request.slot_config.items()}
        if not slot_config and request.HasField("slots"):
            slot_config = {"default": int(request.slots)}
        runtime: dict[str, object] = {}
        if request.HasField("runtime_info"):
            info = request.runtime_info
            runtime = {
                "sdk_version": info.sdk_version,
                "language": _enum_name(pb.SDKS, info.language),
                "language_version": info.language_version,
                "os": info.os,
                "extra": info.extra,
            }
        record = await self.core.register_worker(
            tenant_id,
            request.worker_name,
            list(request.actions),
            slot_config,
            labels_from_proto(request.labels),
            runtime,
            owner_token=caller().token_id,
        )
        return pb.WorkerRegisterResponse(
            tenant_id=tenant_id, worker_id=record.id, worker_name=record.name
        )

    async def ListenV2(self, request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            tenant_id = await self.tenant(context)
            await self.core.check_worker_caller(tenant_id, request.worker_id, caller())
            session = await self.core.open_session(tenant_id, request.worker_id)
        except Exception as exc:
            await abort_for(exc, context, "ListenV2")
            return
        watch = TokenWatch(self.auth, context, lambda: self.core.close_session(session))
        try:
            # Confirms the stream at once; a client need not wait for the first action.
            await context.send_initial_metadata(())
            while True:
                action = await session.next()
                if action is None:
                    break
                msg = assigned_action(tenant_id, action)
                size = msg.ByteSize()
                if await deliverable(self.core, tenant_id, request.worker_id, action, size):
                    yield msg
        finally:
            watch.cancel()
            self.core.close_session(session)
        await watch.refuse_if_invalid(context)

    @unary
    async def Heartbeat(self, tenant_id: str, request: Any, context: Any) -> Any:
        await self.core.check_worker_caller(tenant_id, request.worker_id, caller())
        await self.core.heartbeat(tenant_id, request.worker_id)
        return pb.HeartbeatResponse()

    @unary
    async def SendStepActionEvent(self, tenant_id: str, request: Any, context: Any) -> Any:
        await self.core.check_worker_caller(tenant_id, request.worker_id, caller())
        event = task_event(tenant_id, request)
        if event is not None:
            await self.core.task_event(event)
        return pb.ActionEventResponse(tenant_id=tenant_id, worker_id=request.worker_id)

    @unary
    async def Unsubscribe(self, tenant_id: str, request: Any, context: Any) -> Any:
        await self.core.check_worker_caller(tenant_id, request.worker_id, caller())
        await self.core.unsubscribe(tenant_id, request.worker_id)
        return pb.WorkerUnsubscribeResponse(tenant_id=tenant_id, worker_id=request.worker_id)

    @unary
    async def ReleaseSlot(self, tenant_id: str, request: Any, context: Any) -> Any:
        task_id = request.task_run_external_id
        await self.core.check_task_caller(tenant_id, task_id, caller())
        await self.core.release_slot(tenant_id, request.task_run_external_id)
        return pb.ReleaseSlotResponse()

    @unary
    async def RefreshTimeout(self, tenant_id: str, request: Any, context: Any) -> Any:
        task_id = request.task_run_external_id
        await self.core.check_task_caller(tenant_id, task_id, caller())
        delta = parse_duration(request.increment_timeout_by)
        timeout_at = await self.core.refresh_timeout(
            tenant_id, request.task_run_external_id, delta.total_seconds()
        )
        return pb.RefreshTimeoutResponse(timeout_at=timestamp(timeout_at))

    @unary
    async def UpsertWorkerLabels(self, tenant_id: str, request: Any, context: Any) -> Any:
        await self.core.check_worker_caller(tenant_id, request.worker_id, caller())
        await self.core.upsert_labels(
            tenant_id, request.worker_id, labels_from_proto(request.labels)
        )
        return pb.UpsertWorkerLabelsResponse(tenant_id=tenant_id, worker_id=request.worker_id)

    async def SubscribeToWorkflowEvents(self, request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            tenant_id = await self.tenant(context)
            if not request.workflow_run_id:
                raise NotSupported("subscribing by additional metadata is not supported yet")
            await self.core.check_run_readers(tenant_id, [request.workflow_run_id], caller())
            queue, unsubscribe = await self.core.subscribe_stream(
                tenant_id, request.workflow_run_id
            )
        except Exception as exc:
            await abort_for(exc, context, "SubscribeToWorkflowEvents")
            return
        watch = TokenWatch(self.auth, context, lambda: queue.put_nowait(None))
        try:
            while True:
                event = await queue.get()
                await watch.check(context)
                if event is None:
                    yield pb.WorkflowEvent(
                        workflow_run_id=request.workflow_run_id,
                        resource_type=pb.RESOURCE_TYPE_WORKFLOW_RUN,
                        event_type=pb.RESOURCE_EVENT_TYPE_COMPLETED,
                        resource_id=request.workflow_run_id,
                        event_timestamp=timestamp(self.core.clock.now()),
                        hangup=True,
                    )
                    return
                msg = pb.WorkflowEvent(
                    workflow_run_id=event.run_id,
                    resource_type=pb.RESOURCE_TYPE_STEP_RUN,
                    event_type=pb.RESOURCE_EVENT_TYPE_STREAM,
                    resource_id=event.task_id,
                    event_timestamp=timestamp(event.created_at),
                    event_payload=event.data.decode("utf-8", errors="replace"),
                )
                if event.index is not None:
                    msg.event_index = event.index
                yield msg
        finally:
            watch.cancel()
            unsubscribe()

    async def SubscribeToWorkflowRuns(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        try:
            tenant_id = await self.tenant(context)
        except Exception as exc:
            await abort_for(exc, context, "SubscribeToWorkflowRuns")
            return

        watch = TokenWatch(self.auth, context, lambda: None)
        who = caller()

        async def run_ids() -> AsyncIterator[list[str]]:
            async for req in request_iterator:
                if not await watch.valid():  # a revoked token asks for nothing more
                    return
                await self.core.check_run_readers(tenant_id, [req.workflow_run_id], who)
                yield [req.workflow_run_id]

        try:
            async for events in watch_runs(self.core, tenant_id, run_ids(), batch=1):
                await watch.check(context)  # nor is told anything more
                for event in events:
                    yield event
            await watch.refuse_if_invalid(context)
        finally:
            watch.cancel()


_READER_DONE = object()


async def watch_runs(
    core: EngineCore, tenant_id: str, requests: AsyncIterator[list[str]], *, batch: int
) -> AsyncIterator[list[Any]]:
    """FINISHED events for the runs ``requests`` name, up to ``batch`` at a time, as they
    finish. A run asked for twice is answered once. When the client closes its side, the
    runs it asked for are still answered, then the stream ends."""
    ready: asyncio.Queue[Any] = asyncio.Queue()
    pending: dict[str, Callable[[], None]] = {}
    clock = core.clock
    failed = False

    def on_done(details: RunDetails) -> None:
        ready.put_nowait(run_event(details, clock.now(), core.max_message_bytes))

    def on_missing(run_id: str) -> None:
        ready.put_nowait(missing_run_event(run_id, clock.now()))

    async def read() -> None:
        nonlocal failed
        try:
            async for run_ids in requests:
                for run_id in run_ids:
                    if run_id and run_id not in pending:
                        pending[run_id] = core.watch_run(
                            tenant_id, run_id, on_done, functools.partial(on_missing, run_id)
                        )
        except Exception:
            failed = True
        finally:
            ready.put_nowait(_READER_DONE)

    reader = asyncio.create_task(read(), name="watch-runs-reader")
    closed = False
    try:
        while not (closed and (failed or not pending)):
            item = await ready.get()
            out = []
            while True:
                if item is _READER_DONE:
                    closed = True
                elif item.workflow_run_id in pending:
                    pending.pop(item.workflow_run_id)
                    out.append(item)
                if len(out) >= batch or ready.empty():
                    break
                item = ready.get_nowait()
            if out:
                yield out
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        for unwatch in pending.values():
            unwatch()


def _enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        return "UNKNOWN"


def _completed_output(payload: str) -> tuple[str, EventType]:
    """A COMPLETED payload must be a JSON object (empty = no output); otherwise it fails."""
    if not payload:
        return "", EventType.COMPLETED
    try:
        value = strict_json(payload)
    except InvalidInput as exc:
        return f"task output cannot be stored: {exc}", EventType.FAILED
    except (ValueError, RecursionError):
        return f"task output is not valid JSON: {payload[:200]!r}", EventType.FAILED
    if not isinstance(value, dict):
        return f"task output must be a JSON object, got {type(value).__name__}", EventType.FAILED
    return payload, EventType.COMPLETED
