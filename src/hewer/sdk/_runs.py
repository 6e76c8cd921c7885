"""Triggering runs and waiting for their results.

Results arrive on a bidi stream shared by every waiter of a client: one stream for blocking
callers (owned by a daemon thread) and one per event loop for async callers (owned by a task
on that loop). Each stream lives while someone waits, re-subscribes everything pending when
it reconnects (an engine restart), and closes when the last waiter is served.

The stream is ``hewer.v1.Runs/Wait`` when the engine offers it: each request names every
run subscribed since the last request went out, each response carries every run that
finished meanwhile. If a Wait call is answered UNIMPLEMENTED (an engine without
``hewer.v1``), the client uses ``Dispatcher/SubscribeToWorkflowRuns`` (one run per message
both ways) from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import grpc

from hewer import defaults
from hewer.errors import TaskRunError
from hewer.sdk import _wire
from hewer.sdk._connection import ChannelPool, status_code
from hewer.sdk._retry import aio_call_with_retry, call_with_retry, translate
from hewer.sdk._time import LISTEN_BACKOFF, Backoff

logger = logging.getLogger(__name__)

BULK_TRIGGER_CHUNK = defaults.MAX_BULK_TRIGGER  # the most runs one bulk trigger may carry
TRIGGER_TIMEOUT_SECONDS = 30.0
# Run ids per WaitRequest: what our engines take (HelloResponse.max_runs_per_wait); a
# client does not say Hello, so it keeps to that.
MAX_RUNS_PER_WAIT = 1000
_CLOSE = object()


def run_outputs(event: _wire.RunEvent) -> dict[str, Any]:
    """``{task name: output}`` of a finished run; raises TaskRunError if any task failed."""
    errors = {r.task_name: r.error for r in event.results if r.error}
    if errors:
        # The protocol has no run status on this stream; a cancelled task's error says so.
        cancelled = all("cancel" in text.lower() for text in errors.values())
        raise TaskRunError(event.run_id, "CANCELLED" if cancelled else "FAILED", errors)
    return {r.task_name: json.loads(r.output) if r.output else None for r in event.results}


class RunClient:
    """Trigger and wait calls of one client, in blocking and async flavours."""

    def __init__(self, pool: ChannelPool, backoff: Backoff = LISTEN_BACKOFF) -> None:
        self._pool = pool
        self._backoff = backoff
        self._mode = WaitMode()
        self._sync_waiter = _SyncRunWaiter(pool, backoff, self._mode)
        self._aio_waiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AioRunWaiter] = (
            weakref.WeakKeyDictionary()
        )

    # --- triggering ----------------------------------------------------------------------

    def trigger(self, request: Any) -> str:
        """Start one run; returns its id."""
        stub = _wire.workflow_stub(self._pool.sync())
        what = f"trigger {request.name!r}"
        try:
            response = call_with_retry(
                lambda: stub.TriggerWorkflow(
                    request, metadata=self._pool.metadata, timeout=TRIGGER_TIMEOUT_SECONDS
                ),
                what=what,
            )
        except grpc.RpcError as exc:
            raise translate(exc, what) from exc
        return str(response.workflow_run_id)

    async def aio_trigger(self, request: Any) -> str:
        """Start one run; returns its id."""
        stub = _wire.workflow_stub(self._pool.aio())
        what = f"trigger {request.name!r}"
        try:
            response = await aio_call_with_retry(
                lambda: stub.TriggerWorkflow(
                    request, metadata=self._pool.metadata, timeout=TRIGGER_TIMEOUT_SECONDS
                ),
                what=what,
            )
        except grpc.RpcError as exc:
            raise translate(exc, what) from exc
        return str(response.workflow_run_id)

    def bulk_trigger(self, requests: Sequence[Any]) -> list[str]:
        """Start many runs (in chunks); returns their ids in order."""
        stub = _wire.workflow_stub(self._pool.sync())
        ids: list[str] = []
        for chunk in _chunks(requests):
            what = f"bulk trigger of {len(chunk)} runs"
            bulk = _wire.bulk_trigger_request(chunk)
            try:
                response = call_with_retry(
                    functools.partial(
                        stub.BulkTriggerWorkflow,
                        bulk,
                        metadata=self._pool.metadata,
                        timeout=TRIGGER_TIMEOUT_SECONDS,
                    ),
                    what=what,
                )
            except grpc.RpcError as exc:
                raise translate(exc, what) from exc
            ids.extend(str(i) for i in response.workflow_run_ids)
        return ids

    async def aio_bulk_trigger(self, requests: Sequence[Any]) -> list[str]:
        """Start many runs (in chunks); returns their ids in order."""
        stub = _wire.workflow_stub(self._pool.aio())
        ids: list[str] = []
        for chunk in _chunks(requests):
            what = f"bulk trigger of {len(chunk)} runs"
            bulk = _wire.bulk_trigger_request(chunk)
            try:
                response = await aio_call_with_retry(
                    functools.partial(
                        stub.BulkTriggerWorkflow,
                        bulk,
                        metadata=self._pool.metadata,
                        timeout=TRIGGER_TIMEOUT_SECONDS,
                    ),
                    what=what,
                )
            except grpc.RpcError as exc:
                raise translate(exc, what) from exc
            ids.extend(str(i) for i in response.workflow_run_ids)
        return ids

    # --- waiting -------------------------------------------------------------------------

    def wait(self, run_id: str) -> _wire.RunEvent:
        """Block until the run finishes."""
        return self.wait_many([run_id])[0]

    def wait_many(self, run_ids: Sequence[str]) -> list[_wire.RunEvent]:
        """Block until all the runs finish (subscribing to all of them at once)."""
        futures = self._sync_waiter.subscribe(run_ids)
        try:
            return [f.result() for f in futures]
        finally:
            for run_id, f in zip(run_ids, futures, strict=True):
                if not f.done():
                    self._sync_waiter.discard(run_id, f)

    async def aclose(self) -> None:
        """Stop this loop's results stream (waiters still pending get CancelledError)."""
        waiter = self._aio_waiters.pop(asyncio.get_running_loop(), None)
        if waiter is not None:
            await waiter.aclose()

    async def aio_wait(self, run_id: str) -> _wire.RunEvent:
        """Wait until the run finishes."""
        loop = asyncio.get_running_loop()
        waiter = self._aio_waiters.get(loop)
        if waiter is None:
            waiter = self._aio_waiters[loop] = _AioRunWaiter(self._pool, self._backoff, self._mode)
        return await waiter.wait(run_id)


def _chunks(items: Sequence[Any], size: int = BULK_TRIGGER_CHUNK) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class WaitMode:
    """Which stream a client waits on: ``hewer.v1.Runs/Wait`` until the engine answers a
    Wait call UNIMPLEMENTED, then ``SubscribeToWorkflowRuns`` for good."""

    def __init__(self) -> None:
        self.batched = True

    def unimplemented(self, exc: BaseException) -> bool:
        """True (and Wait is off from now on) if ``exc`` says the engine has no Wait."""
        if status_code(exc) != grpc.StatusCode.UNIMPLEMENTED:
            return False
        if self.batched:
            logger.info("engine offers no batched waiting; using SubscribeToWorkflowRuns")
        self.batched = False
        return True


def _requests_for(run_ids: Sequence[str], batched: bool) -> list[Any]:
    """The request messages asking for ``run_ids``."""
    if batched:
        return [_wire.wait_request(chunk) for chunk in _chunks(run_ids, MAX_RUNS_PER_WAIT)]
    return [_wire.subscribe_runs_request(run_id) for run_id in run_ids]


def _run_events(message: Any, batched: bool) -> list[_wire.RunEvent]:
    """The finished runs one response carries."""
    if batched:
        return [_wire.RunEvent.from_proto(m) for m in message.events]
    return [_wire.RunEvent.from_proto(message)]


class _SyncOutbox:
    """What one blocking stream still has to ask for: run ids subscribed since its last
    request went out (the waiter's lock guards ``ids``), and a queue that wakes its request
    iterator."""

    def __init__(self, run_ids: list[str]) -> None:
        self.ids = run_ids
        self.wake: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.wake.put(None)


class _SyncRunWaiter:
    """Blocking callers' share of the results stream; a daemon thread owns the stream."""

    def __init__(self, pool: ChannelPool, backoff: Backoff, mode: WaitMode) -> None:
        self._pool = pool
        self._backoff = backoff
        self._mode = mode
        self._lock = threading.Lock()
        self._pending: dict[str, list[Future[_wire.RunEvent]]] = {}
        # The live stream's outbox; None while (re)connecting, when the thread subscribes
        # everything in _pending itself.
        self._outbox: _SyncOutbox | None = None
        self._thread: threading.Thread | None = None

    def subscribe(self, run_ids: Sequence[str]) -> list[Future[_wire.RunEvent]]:
        """One future per run id (all asked for in one go)."""
        futures: list[Future[_wire.RunEvent]] = []
        with self._lock:
            new: list[str] = []
            for run_id in run_ids:
                future: Future[_wire.RunEvent] = Future()
                waiting = self._pending.setdefault(run_id, [])
                if not waiting:
                    new.append(run_id)
                waiting.append(future)
                futures.append(future)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="hewer-run-results", daemon=True
                )
                self._thread.start()
            elif new and self._outbox is not None:
                if not self._outbox.ids:
                    self._outbox.wake.put(None)
                self._outbox.ids.extend(new)
        return futures

    def discard(self, run_id: str, future: Future[_wire.RunEvent]) -> None:
        with self._lock:
            waiting = self._pending.get(run_id, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._pending.pop(run_id, None)

    def _run(self) -> None:
        attempt = 0
        while True:
            with self._lock:
                if not self._pending:
                    self._thread = None
                    self._outbox = None
                    return
                outbox = self._outbox = _SyncOutbox(list(self._pending))
            batched = self._mode.batched
            served_all = False
            try:
                served_all = self._stream(outbox, batched)
                if not served_all:
                    logger.info("run results stream ended by the engine; reconnecting")
            except grpc.RpcError as exc:
                if batched and self._mode.unimplemented(exc):
                    continue
                logger.info("run results stream failed (%s); reconnecting", status_code(exc))
            except Exception:
                logger.exception("run results stream broke; reconnecting")
            finally:
                with self._lock:
                    if self._outbox is outbox:
                        self._outbox = None
                outbox.wake.put(_CLOSE)
            if served_all:
                attempt = 0
                continue
            time.sleep(self._backoff.delay(attempt))
            attempt += 1

    def _requests(self, outbox: _SyncOutbox, batched: bool) -> Iterator[Any]:
        while outbox.wake.get() is not _CLOSE:
            with self._lock:
                run_ids, outbox.ids = outbox.ids, []
            yield from _requests_for(run_ids, batched)

    def _stream(self, outbox: _SyncOutbox, batched: bool) -> bool:
        """Read results until nobody waits (True) or the engine ends the stream (False)."""
        requests = self._requests(outbox, batched)
        if batched:
            call = _wire.hewer_runs_stub(self._pool.sync()).Wait(
                requests, metadata=self._pool.metadata
            )
        else:
            call = _wire.dispatcher_stub(self._pool.sync()).SubscribeToWorkflowRuns(
                requests, metadata=self._pool.metadata
            )
        try:
            for message in call:
                served: list[tuple[_wire.RunEvent, list[Future[_wire.RunEvent]]]] = []
                with self._lock:
                    for event in _run_events(message, batched):
                        served.append((event, self._pending.pop(event.run_id, [])))
                    idle = not self._pending
                    if idle:
                        self._outbox = None
                for event, futures in served:
                    for future in futures:
                        if not future.done():
                            future.set_result(event)
                if idle:
                    return True
            return False
        finally:
            call.cancel()


class _AioOutbox:
    """What one asyncio stream still has to ask for (see ``_SyncOutbox``)."""

    def __init__(self, run_ids: list[str]) -> None:
        self.ids = run_ids
        self.wake = asyncio.Event()
        self.wake.set()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class _AioRunWaiter:
    """One event loop's share of the results stream; a task on that loop owns the stream."""

    def __init__(self, pool: ChannelPool, backoff: Backoff, mode: WaitMode) -> None:
        self._pool = pool
        self._backoff = backoff
        self._mode = mode
        self._pending: dict[str, list[asyncio.Future[_wire.RunEvent]]] = {}
        self._outbox: _AioOutbox | None = None
        self._task: asyncio.Task[None] | None = None

    async def wait(self, run_id: str) -> _wire.RunEvent:
        future: asyncio.Future[_wire.RunEvent] = asyncio.get_running_loop().create_future()
        waiting = self._pending.setdefault(run_id, [])
        first = not waiting
        waiting.append(future)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="hewer-run-results")
        elif first and self._outbox is not None:
            self._outbox.ids.append(run_id)
            self._outbox.wake.set()
        try:
            return await future
        finally:
            if not future.done():
                waiting = self._pending.get(run_id, [])
                if future in waiting:
                    waiting.remove(future)
                if not waiting:
                    self._pending.pop(run_id, None)

    async def aclose(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for futures in self._pending.values():
            for future in futures:
                future.cancel()
        self._pending.clear()

    async def _run(self) -> None:
        attempt = 0
        try:
            while self._pending:
                outbox = self._outbox = _AioOutbox(list(self._pending))
                batched = self._mode.batched
                served_all = False
                try:
                    served_all = await self._stream(outbox, batched)
                    if not served_all:
                        logger.info("run results stream ended by the engine; reconnecting")
                except grpc.RpcError as exc:
                    if batched and self._mode.unimplemented(exc):
                        continue
                    logger.info("run results stream failed (%s); reconnecting", status_code(exc))
                except Exception:
                    logger.exception("run results stream broke; reconnecting")
                finally:
                    self._outbox = None
                    outbox.close()
                if served_all:
                    attempt = 0
                    continue
                await asyncio.sleep(self._backoff.delay(attempt))
                attempt += 1
        finally:
            self._task = None

    async def _stream(self, outbox: _AioOutbox, batched: bool) -> bool:
        async def outgoing() -> AsyncIterator[Any]:
            while True:
                await outbox.wake.wait()
                if outbox.closed:
                    return
                outbox.wake.clear()
                run_ids, outbox.ids = outbox.ids, []
                for request in _requests_for(run_ids, batched):
                    yield request

        if batched:
            call = _wire.hewer_runs_stub(self._pool.aio()).Wait(
                outgoing(), metadata=self._pool.metadata
            )
        else:
            call = _wire.dispatcher_stub(self._pool.aio()).SubscribeToWorkflowRuns(
                outgoing(), metadata=self._pool.metadata
            )
        try:
            async for message in call:
                for event in _run_events(message, batched):
                    for future in self._pending.pop(event.run_id, []):
                        if not future.done():
                            future.set_result(event)
                if not self._pending:
                    return True
            return False
        finally:
            call.cancel()
            # Let gRPC finish the cancelled call while the loop still runs.
            with contextlib.suppress(Exception):
                await call.code()
