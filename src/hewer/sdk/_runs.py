"""Triggering runs and waiting for their results.

Results arrive on ``Dispatcher/SubscribeToWorkflowRuns``, a bidi stream shared by every
waiter of a client: one stream for blocking callers (owned by a daemon thread) and one per
event loop for async callers (owned by a task on that loop). Each stream lives while someone
waits, re-subscribes everything pending when it reconnects (an engine restart), and closes
when the last waiter is served.
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
from collections.abc import AsyncIterator, Sequence
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
        self._sync_waiter = _SyncRunWaiter(pool, backoff)
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
        futures = [self._sync_waiter.subscribe(run_id) for run_id in run_ids]
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
            waiter = self._aio_waiters[loop] = _AioRunWaiter(self._pool, self._backoff)
        return await waiter.wait(run_id)


def _chunks(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i : i + BULK_TRIGGER_CHUNK] for i in range(0, len(items), BULK_TRIGGER_CHUNK)]


class _SyncRunWaiter:
    """Blocking callers' share of the results stream; a daemon thread owns the stream."""

    def __init__(self, pool: ChannelPool, backoff: Backoff) -> None:
        self._pool = pool
        self._backoff = backoff
        self._lock = threading.Lock()
        self._pending: dict[str, list[Future[_wire.RunEvent]]] = {}
        # The live stream's request queue; None while (re)connecting, when the thread
        # subscribes everything in _pending itself.
        self._requests: queue.Queue[Any] | None = None
        self._thread: threading.Thread | None = None

    def subscribe(self, run_id: str) -> Future[_wire.RunEvent]:
        future: Future[_wire.RunEvent] = Future()
        with self._lock:
            first = run_id not in self._pending
            self._pending.setdefault(run_id, []).append(future)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="hewer-run-results", daemon=True
                )
                self._thread.start()
            elif first and self._requests is not None:
                self._requests.put(_wire.subscribe_runs_request(run_id))
        return future

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
                    self._requests = None
                    return
                requests: queue.Queue[Any] = queue.Queue()
                for run_id in self._pending:
                    requests.put(_wire.subscribe_runs_request(run_id))
                self._requests = requests
            served_all = False
            try:
                served_all = self._stream(requests)
                if not served_all:
                    logger.info("run results stream ended by the engine; reconnecting")
            except grpc.RpcError as exc:
                logger.info("run results stream failed (%s); reconnecting", status_code(exc))
            except Exception:
                logger.exception("run results stream broke; reconnecting")
            finally:
                with self._lock:
                    if self._requests is requests:
                        self._requests = None
                requests.put(_CLOSE)
            if served_all:
                attempt = 0
                continue
            time.sleep(self._backoff.delay(attempt))
            attempt += 1

    def _stream(self, requests: queue.Queue[Any]) -> bool:
        """Read results until nobody waits (True) or the engine ends the stream (False)."""
        stub = _wire.dispatcher_stub(self._pool.sync())
        call = stub.SubscribeToWorkflowRuns(
            iter(requests.get, _CLOSE), metadata=self._pool.metadata
        )
        try:
            for message in call:
                event = _wire.RunEvent.from_proto(message)
                with self._lock:
                    futures = self._pending.pop(event.run_id, [])
                    idle = not self._pending
                    if idle:
                        self._requests = None
                for future in futures:
                    if not future.done():
                        future.set_result(event)
                if idle:
                    return True
            return False
        finally:
            call.cancel()


class _AioRunWaiter:
    """One event loop's share of the results stream; a task on that loop owns the stream."""

    def __init__(self, pool: ChannelPool, backoff: Backoff) -> None:
        self._pool = pool
        self._backoff = backoff
        self._pending: dict[str, list[asyncio.Future[_wire.RunEvent]]] = {}
        self._requests: asyncio.Queue[Any] | None = None
        self._task: asyncio.Task[None] | None = None

    async def wait(self, run_id: str) -> _wire.RunEvent:
        future: asyncio.Future[_wire.RunEvent] = asyncio.get_running_loop().create_future()
        first = run_id not in self._pending
        self._pending.setdefault(run_id, []).append(future)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="hewer-run-results")
        elif first and self._requests is not None:
            self._requests.put_nowait(_wire.subscribe_runs_request(run_id))
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
                requests: asyncio.Queue[Any] = asyncio.Queue()
                for run_id in self._pending:
                    requests.put_nowait(_wire.subscribe_runs_request(run_id))
                self._requests = requests
                served_all = False
                try:
                    served_all = await self._stream(requests)
                    if not served_all:
                        logger.info("run results stream ended by the engine; reconnecting")
                except grpc.RpcError as exc:
                    logger.info("run results stream failed (%s); reconnecting", status_code(exc))
                except Exception:
                    logger.exception("run results stream broke; reconnecting")
                finally:
                    self._requests = None
                    requests.put_nowait(_CLOSE)
                if served_all:
                    attempt = 0
                    continue
                await asyncio.sleep(self._backoff.delay(attempt))
                attempt += 1
        finally:
            self._task = None

    async def _stream(self, requests: asyncio.Queue[Any]) -> bool:
        async def outgoing() -> AsyncIterator[Any]:
            while (item := await requests.get()) is not _CLOSE:
                yield item

        stub = _wire.dispatcher_stub(self._pool.aio())
        call = stub.SubscribeToWorkflowRuns(outgoing(), metadata=self._pool.metadata)
        try:
            async for message in call:
                event = _wire.RunEvent.from_proto(message)
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
