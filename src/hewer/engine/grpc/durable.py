"""Service ``v1.V1Dispatcher``: the durable task stream (one per worker with durable tasks)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from hewer._proto.v1 import dispatcher_pb2 as pb
from hewer._proto.v1 import dispatcher_pb2_grpc as pb_grpc
from hewer.domain import ConditionAction
from hewer.engine.core.durable import BRANCH, NonDeterminism, StaleInvocation
from hewer.engine.core.durable_hub import Dropped, DurableStream, Message
from hewer.engine.grpc._common import Servicer, TokenWatch, abort_for, caller, status_for
from hewer.engine.grpc.admin import task_conditions
from hewer.engine.grpc.workflows import trigger_spec
from hewer.errors import HewerError, InvalidInput

logger = logging.getLogger(__name__)

_CLOSED = object()


def _ref(task_id: str, invocation: int, node: int) -> Any:
    return pb.DurableEventLogEntryRef(
        durable_task_external_id=task_id,
        invocation_count=invocation,
        branch_id=BRANCH,
        node_id=node,
    )


def _message(msg: Message) -> Any:
    if isinstance(msg, Dropped):
        return pb.DurableTaskResponse(
            server_evict=pb.DurableTaskServerEvictNotice(
                durable_task_external_id=msg.task_id,
                invocation_count=msg.invocation,
                reason=msg.reason,
            )
        )
    done = pb.DurableTaskEventLogEntryCompletedResponse(
        ref=_ref(msg.task_id, msg.invocation, msg.node),
        payload=msg.payload,
        is_failure=msg.failure,
    )
    if msg.error is not None:
        done.error_message = msg.error
    if msg.order is not None:
        done.satisfied_order = msg.order
    return pb.DurableTaskResponse(entry_completed=done)


class V1DispatcherServicer(Servicer, pb_grpc.V1DispatcherServicer):  # type: ignore[misc]
    # The pre-v0.80 durable methods (RegisterDurableEvent, ListenForDurableEvent) are not
    # served: hatchet-sdk uses DurableTask against the version Hewer reports.

    async def DurableTask(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        try:
            tenant_id = await self.tenant(context)
        except Exception as exc:
            await abort_for(exc, context, "DurableTask")
            return
        out: asyncio.Queue[Any] = asyncio.Queue()
        stream: DurableStream | None = None
        pending: set[asyncio.Task[None]] = set()

        def send(msg: Message) -> None:
            out.put_nowait(_message(msg))

        def answer(coro: Any) -> None:
            task = asyncio.create_task(coro, name="durable-request")
            pending.add(task)
            task.add_done_callback(pending.discard)

        async def read() -> None:
            nonlocal stream
            try:
                async for req in request_iterator:
                    kind = req.WhichOneof("message")
                    if kind == "register_worker":
                        worker_id = req.register_worker.worker_id
                        await self.core.check_worker_caller(tenant_id, worker_id, caller())
                        if stream is not None:
                            self.core.durable_close(stream)
                        stream = self.core.durable_open(tenant_id, worker_id, send)
                        out.put_nowait(
                            pb.DurableTaskResponse(
                                register_worker=pb.DurableTaskResponseRegisterWorker(
                                    worker_id=worker_id
                                )
                            )
                        )
                    elif stream is None:
                        raise InvalidInput("the durable stream starts with register_worker")
                    else:
                        self._request(stream, kind, req, out, answer)
            finally:
                out.put_nowait(_CLOSED)

        reader = asyncio.create_task(read(), name="durable-reader")
        watch = TokenWatch(self.auth, context, reader.cancel)
        try:
            while True:
                item = await out.get()
                if item is _CLOSED:
                    break
                yield item
            await asyncio.wait([reader])
            failure = None if reader.cancelled() else reader.exception()
            if isinstance(failure, Exception):
                await abort_for(failure, context, "DurableTask")
        finally:
            watch.cancel()
            reader.cancel()
            for task in list(pending):
                task.cancel()
            if stream is not None:
                self.core.durable_close(stream)
        await watch.refuse_if_invalid(context)

    def _request(
        self,
        stream: DurableStream,
        kind: str | None,
        req: Any,
        out: asyncio.Queue[Any],
        answer: Any,
    ) -> None:
        """Apply one request; ops are submitted in arrival order (a task's nodes are
        numbered in the order its requests came), answered as they commit."""
        core = self.core

        async def guarded(task_id: str, invocation: int, coro: Any, node: int = 0) -> None:
            try:
                await coro
            except StaleInvocation as exc:
                out.put_nowait(_message(Dropped(task_id, invocation, str(exc))))
            except NonDeterminism as exc:
                out.put_nowait(
                    pb.DurableTaskResponse(
                        error=pb.DurableTaskErrorResponse(
                            ref=_ref(task_id, invocation, exc.node),
                            error_type=pb.DURABLE_TASK_ERROR_TYPE_NONDETERMINISM,
                            error_message=str(exc),
                        )
                    )
                )
            except HewerError as exc:
                if status_for(exc) is None:
                    logger.exception("durable request failed")
                out.put_nowait(
                    pb.DurableTaskResponse(
                        error=pb.DurableTaskErrorResponse(
                            # The node of a request without an answer of its own (storing a
                            # memoised value): the worker does not take it for another's.
                            ref=_ref(task_id, invocation, node),
                            error_type=pb.DURABLE_TASK_ERROR_TYPE_UNSPECIFIED,
                            error_message=str(exc),
                        )
                    )
                )

        if kind == "wait_for":
            m = req.wait_for
            task_id, inv = m.durable_task_external_id, m.invocation_count

            async def wait_for() -> None:
                specs = task_conditions(task_id, m.wait_for_conditions)
                if not specs:
                    raise InvalidInput("a durable wait needs at least one condition")
                if any(c.action is not ConditionAction.QUEUE for c in specs):
                    raise InvalidInput("a durable wait's conditions are all CREATE conditions")
                node = await core.durable_wait_for(
                    stream, task_id, inv, specs, m.label if m.HasField("label") else None
                )
                out.put_nowait(
                    pb.DurableTaskResponse(
                        wait_for_ack=pb.DurableTaskEventWaitForAckResponse(
                            ref=_ref(task_id, inv, node)
                        )
                    )
                )

            answer(guarded(task_id, inv, wait_for()))
        elif kind == "memo":
            m = req.memo
            task_id, inv = m.durable_task_external_id, m.invocation_count
            future = core.durable_memo(stream, task_id, inv, m.key)

            async def memo() -> None:
                ack = await future
                msg = pb.DurableTaskEventMemoAckResponse(
                    ref=_ref(task_id, inv, ack.node), memo_already_existed=ack.existed
                )
                if ack.payload is not None:
                    msg.memo_result_payload = ack.payload
                out.put_nowait(pb.DurableTaskResponse(memo_ack=msg))

            answer(guarded(task_id, inv, memo()))
        elif kind == "complete_memo":
            m = req.complete_memo
            task_id, inv = m.ref.durable_task_external_id, m.ref.invocation_count
            future_done = core.durable_complete_memo(
                stream, task_id, inv, m.ref.node_id, m.memo_key, m.payload
            )

            async def complete() -> None:
                await future_done

            answer(guarded(task_id, inv, complete(), node=m.ref.node_id))
        elif kind == "trigger_runs":
            m = req.trigger_runs
            task_id, inv = m.durable_task_external_id, m.invocation_count

            async def trigger() -> None:
                specs = [trigger_spec(t) for t in m.trigger_opts]
                entries = await core.durable_trigger(stream, task_id, inv, specs)
                out.put_nowait(
                    pb.DurableTaskResponse(
                        trigger_runs_ack=pb.DurableTaskEventTriggerRunsAckResponse(
                            durable_task_external_id=task_id,
                            invocation_count=inv,
                            run_entries=[
                                pb.DurableTaskRunAckEntry(
                                    node_id=node, branch_id=BRANCH, workflow_run_external_id=run
                                )
                                for node, run in entries
                            ],
                        )
                    )
                )

            answer(guarded(task_id, inv, trigger()))
        elif kind == "evict_invocation":
            m = req.evict_invocation
            task_id, inv = m.durable_task_external_id, m.invocation_count

            async def evict() -> None:
                await core.durable_evict(stream, task_id, inv)
                out.put_nowait(
                    pb.DurableTaskResponse(
                        eviction_ack=pb.DurableTaskEvictionAckResponse(
                            durable_task_external_id=task_id, invocation_count=inv
                        )
                    )
                )

            answer(guarded(task_id, inv, evict()))
        elif kind == "worker_status":
            core.durable_waiting(
                stream,
                [
                    (e.durable_task_external_id, e.invocation_count, e.node_id)
                    for e in req.worker_status.waiting_entries
                ],
            )

    async def ListenForDurableEvent(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        # Read the first request, so one that does not parse is answered INVALID_ARGUMENT.
        async for _ in request_iterator:
            break
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "the pre-v0.80 durable API is not served: use V1Dispatcher/DurableTask",
        )
        yield None  # pragma: no cover - abort raises
