"""Reports about attempts (STARTED, COMPLETED, FAILED, CANCELLED) on their way to the engine.

``EventReporter`` sends each event in a call of its own (``Dispatcher/SendStepActionEvent``,
the Hatchet protocol). ``BatchReporter`` is for engines offering ``hewer.v1``: events queue
up, and one sender task sends everything queued in one ``hewer.v1.Worker/Report`` call as
soon as no call is in flight. There is no linger timer: a lone event goes out at once, and
what arrives while a call is in flight goes in the next one. Each event's waiter completes
when the call that carried it has returned (the engine answers once the whole call is
committed).

A STARTED still queued when the outcome of the same attempt is queued is dropped: the
engine takes the outcome as the start too. A STARTED already in a call is never overtaken,
since the outcome goes in a later call, so STARTED never reaches the engine after its own
outcome.

The queue holds at most the reports of the attempts the worker runs (a STARTED and an
outcome each, plus a CANCELLED for a cancel of an attempt it does not run), so it is
bounded by the worker's slots; it never buffers beyond what is in flight.

Both retry transient failures (``TRANSIENT_CODES``) with ``CALL_BACKOFF`` for up to
``REPORT_GIVE_UP_SECONDS``: a finished task's result is the one thing not to lose. A batch
is retried whole and in place, so the order of reports holds.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc

from hewer.sdk import _wire
from hewer.sdk._connection import TRANSIENT_CODES, status_code, status_details
from hewer.sdk._retry import aio_call_with_retry
from hewer.sdk._time import CALL_BACKOFF, Backoff, Clock

logger = logging.getLogger(__name__)

# Outlasts an engine restart or a database outage of several minutes (the engine answers
# UNAVAILABLE meanwhile); given up after that, the task times out and runs again.
REPORT_GIVE_UP_SECONDS = 300.0
REPORT_TIMEOUT_SECONDS = 10.0
# Room a ReportBatch needs per event beside the event itself (tag and length).
_EVENT_OVERHEAD_BYTES = 16

_STARTED = int(_wire.EventKind.STARTED)


def describe(event: Any) -> str:
    """``COMPLETED of <action> (run <task run id>)``, for log lines."""
    return (
        f"{_wire.EventKind(event.event_type).name} "
        f"of {event.action_id} (run {event.task_run_external_id})"
    )


class EventReporter:
    """One ``Dispatcher/SendStepActionEvent`` call per event, each retried on its own.

    Calls run concurrently, so they may reach the engine in any order: a caller wanting one
    event after another waits for the first one's report to finish.
    """

    ordered = False
    """Whether events reach the engine in the order they were reported."""

    def __init__(
        self,
        dispatcher: Callable[[], Any],
        metadata: Callable[[], Any],
        clock: Clock,
        *,
        backoff: Backoff = CALL_BACKOFF,
        give_up_after: float = REPORT_GIVE_UP_SECONDS,
    ) -> None:
        self._dispatcher = dispatcher
        self._metadata = metadata
        self._clock = clock
        self._backoff = backoff
        self._give_up_after = give_up_after
        self._reports: set[asyncio.Task[None]] = set()

    def report_start(self, action: _wire.Action, at: datetime) -> asyncio.Future[None]:
        """Send STARTED for ``action`` (as ``report``)."""
        return self.report(_wire.step_event(action, _wire.EventKind.STARTED, at))

    def report(self, event: Any) -> asyncio.Future[None]:
        """Send ``event``; the future completes once it was sent (or given up on)."""
        report = asyncio.create_task(self._send(event), name="hewer-report")
        self._reports.add(report)
        report.add_done_callback(self._reports.discard)
        return report

    async def _send(self, event: Any) -> None:
        stub = self._dispatcher()
        metadata = self._metadata()
        what = f"report {describe(event)}"
        try:
            await aio_call_with_retry(
                lambda: stub.SendStepActionEvent(
                    event, metadata=metadata, timeout=REPORT_TIMEOUT_SECONDS
                ),
                what=what,
                retry_codes=TRANSIENT_CODES,
                attempts=None,
                give_up_after=self._give_up_after,
                backoff=self._backoff,
                clock=self._clock,
            )
        except grpc.RpcError as exc:
            code = status_code(exc)
            log = logger.error if code in TRANSIENT_CODES else logger.warning
            log(
                "could not %s (%s: %s); the engine will time the task out",
                what,
                code.name if code else "?",
                status_details(exc),
            )

    async def flush(self, limit_seconds: float) -> None:
        """Wait (at most ``limit_seconds``) for reports still in flight."""
        if self._reports:
            await asyncio.wait(set(self._reports), timeout=limit_seconds)


@dataclass(eq=False, slots=True)
class _Queued:
    event: Any  # None for a STARTED not built yet: most never are (see report_start)
    waiters: list[asyncio.Future[None]]
    key: tuple[str, int]
    action: _wire.Action | None = None
    at: datetime | None = None
    dropped: bool = False


class BatchReporter:
    """Batched reports over ``hewer.v1.Worker/Report`` (see the module docstring)."""

    ordered = True

    def __init__(
        self,
        send: Callable[[Any, float], Awaitable[Any]],
        *,
        max_per_call: int,
        max_bytes: int,
        clock: Clock,
        fallback: EventReporter | None = None,
        backoff: Backoff = CALL_BACKOFF,
        give_up_after: float = REPORT_GIVE_UP_SECONDS,
    ) -> None:
        """``send(request, deadline)`` makes one Report call. ``fallback`` takes over, for
        good, if the engine answers UNIMPLEMENTED (it no longer offers ``hewer.v1``)."""
        self._send = send
        self.max_per_call = max(1, max_per_call)
        self._max_bytes = max_bytes
        self._clock = clock
        self._fallback = fallback
        self._backoff = backoff
        self._give_up_after = give_up_after
        self._queue: collections.deque[_Queued] = collections.deque()
        # Queued (not yet sent) STARTED reports by attempt, for coalescing.
        self._started: dict[tuple[str, int], _Queued] = {}
        self._sender: asyncio.Task[None] | None = None
        self.unimplemented = False
        """True once the engine said it has no Report call; use the fallback from then on."""
        self.calls = 0
        """Report calls made so far (retries not counted)."""
        self.sent = 0
        """Events handed to Report calls so far."""
        self.coalesced = 0
        """STARTED reports dropped because their outcome was queued behind them."""

    @property
    def queued(self) -> int:
        """Reports waiting for a call (dropped ones not counted)."""
        return sum(1 for item in self._queue if not item.dropped)

    def report_start(self, action: _wire.Action, at: datetime) -> asyncio.Future[None]:
        """Queue STARTED for ``action`` at ``at`` (as ``report``). The event is built only
        when it goes into a call, not if its outcome catches up with it first."""
        key = (action.task_run_external_id, action.retry_count)
        return self._queue_item(_Queued(None, [], key, action, at), started=True)

    def report(self, event: Any) -> asyncio.Future[None]:
        """Queue ``event``; the future completes once the call carrying it has returned (or
        was given up on). Never raises."""
        item = _Queued(event, [], (event.task_run_external_id, event.retry_count))
        return self._queue_item(item, started=event.event_type == _STARTED)

    def _queue_item(self, item: _Queued, *, started: bool) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        item.waiters.append(waiter)
        key = item.key
        if started:
            self._started[key] = item
        else:
            start = self._started.pop(key, None)
            if start is not None:
                # The outcome implies the start: drop the STARTED; its waiter completes
                # with the call that carries the outcome.
                start.dropped = True
                item.waiters[:0] = start.waiters
                start.waiters = []
                self.coalesced += 1
        self._queue.append(item)
        if self._sender is None:
            self._sender = loop.create_task(self._send_all(), name="hewer-reports")
        return waiter

    async def _send_all(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                if not batch:
                    continue
                try:
                    await self._deliver(batch)
                except Exception:
                    logger.exception("could not report %d event(s)", len(batch))
                finally:
                    for item in batch:
                        for waiter in item.waiters:
                            if not waiter.done():
                                waiter.set_result(None)
        finally:
            self._sender = None

    def _take(self) -> list[_Queued]:
        """The next call's reports: queue order, at most ``max_per_call`` of them and what
        fits in one message (one report always fits: the runner bounds payloads)."""
        batch: list[_Queued] = []
        size = 0
        queue = self._queue
        started = self._started
        while queue and len(batch) < self.max_per_call:
            item = queue[0]
            if item.dropped:
                queue.popleft()
                continue
            if item.event is None:
                assert item.action is not None and item.at is not None
                item.event = _wire.step_event(item.action, _wire.EventKind.STARTED, item.at)
            n = item.event.ByteSize() + _EVENT_OVERHEAD_BYTES
            if batch and size + n > self._max_bytes:
                break
            queue.popleft()
            if started.get(item.key) is item:
                # On its way now: an outcome queued from here on goes in a later call.
                del started[item.key]
            batch.append(item)
            size += n
        return batch

    async def _deliver(self, batch: list[_Queued]) -> None:
        events = [item.event for item in batch]
        if self.unimplemented and self._fallback is not None:
            await self._fall_back(events)
            return
        request = _wire.report_batch(events)
        what = (
            f"report {len(events)} event(s)" if len(events) > 1 else f"report {describe(events[0])}"
        )
        self.calls += 1
        self.sent += len(events)
        try:
            response = await aio_call_with_retry(
                lambda: self._send(request, REPORT_TIMEOUT_SECONDS),
                what=what,
                retry_codes=TRANSIENT_CODES,
                attempts=None,
                give_up_after=self._give_up_after,
                backoff=self._backoff,
                clock=self._clock,
            )
        except grpc.RpcError as exc:
            code = status_code(exc)
            if code == grpc.StatusCode.UNIMPLEMENTED and self._fallback is not None:
                logger.warning(
                    "the engine no longer offers batched reports; sending them one by one"
                )
                self.unimplemented = True
                await self._fall_back(events)
                return
            if code == grpc.StatusCode.INVALID_ARGUMENT and len(batch) > 1:
                # One report the engine refuses must not take the others down with it.
                for item in batch:
                    await self._deliver([item])
                return
            log = logger.error if code in TRANSIENT_CODES else logger.warning
            log(
                "could not %s (%s: %s); the engine will time the task(s) out",
                what,
                code.name if code else "?",
                status_details(exc),
            )
            return
        if logger.isEnabledFor(logging.DEBUG):
            for event, result in zip(events, response.results, strict=False):
                if not result.applied:
                    logger.debug("engine did not apply %s: %s", describe(event), result.reason)

    async def _fall_back(self, events: list[Any]) -> None:
        assert self._fallback is not None
        for event in events:
            # One at a time: the per-event calls would otherwise race each other.
            await self._fallback.report(event)

    async def flush(self, limit_seconds: float) -> None:
        """Wait (at most ``limit_seconds``) until every queued report has been sent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_seconds
        while (sender := self._sender) is not None:
            left = deadline - loop.time()
            if left <= 0:
                return
            await asyncio.wait({sender}, timeout=left)
        if self._fallback is not None:
            await self._fallback.flush(max(0.0, deadline - loop.time()))
