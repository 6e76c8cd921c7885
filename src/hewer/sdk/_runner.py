"""Runs assigned tasks and reports their outcome to the engine.

Async task functions run as named tasks on the worker's loop; sync ones run in a pool of
daemon threads, one per slot unit of the worker (so a stuck function cannot keep the
process from exiting).
Reports outlive the task that made them (a cancelled wait does not take them back) and are
retried through engine restarts for up to ``REPORT_GIVE_UP_SECONDS``: a finished task's
result is the one thing not to lose. With an engine offering ``hewer.v1`` they go in
batches (``BatchReporter``), otherwise one call each (``EventReporter``); see ``_reporter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import pydantic

from hewer.defaults import DEFAULT_SLOT_TYPE as DEFAULT_POOL
from hewer.errors import NonRetryableError, RetryAfter
from hewer.sdk import _serde, _wire
from hewer.sdk._context import Context, enter_task
from hewer.sdk._durable import DurableContext, Evicted
from hewer.sdk._reporter import REPORT_GIVE_UP_SECONDS, BatchReporter, EventReporter
from hewer.sdk._services import WorkerServices
from hewer.sdk._task import Task

logger = logging.getLogger(__name__)

STARTED_WAIT_SECONDS = 2.0

P = ParamSpec("P")
T = TypeVar("T")

# Leave room for the rest of the StepActionEvent around the payload.
_MESSAGE_OVERHEAD_BYTES = 64 * 1024


def failure_payload(exc: BaseException) -> str:
    """FAILED event text: ``<ExcType>: <message>`` then the traceback."""
    trace = "".join(traceback.format_exception(exc))
    return f"{type(exc).__name__}: {exc}\n{trace}"


def failure_flags(exc: BaseException) -> tuple[bool, int | None]:
    """``(should_not_retry, retry_after_ms)`` for an exception a task raised."""
    if isinstance(exc, RetryAfter):
        return False, max(0, round(exc.delay.total_seconds() * 1000))
    # Bad input fails the same way on every attempt.
    non_retryable = isinstance(exc, NonRetryableError | pydantic.ValidationError)
    return non_retryable, None


def parse_payload(text: str) -> dict[str, Any]:
    """``action_payload`` JSON; anything unreadable counts as empty."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        logger.warning("unreadable action payload (%d chars); using an empty one", len(text))
        return {}
    return value if isinstance(value, dict) else {}


class DaemonThreadPool(Executor):
    """A fixed pool of daemon threads for sync task functions."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._idle = 0
        self._closed = False

    def grow(self) -> None:
        """Allow one more thread (a task gave its slot back but still runs on its thread)."""
        with self._lock:
            self._size += 1

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        self._put(work)
        return future

    def run_soon(
        self, loop: asyncio.AbstractEventLoop, fn: Callable[..., T], /, *args: Any
    ) -> asyncio.Future[T]:
        """``loop.run_in_executor(self, fn, *args)`` without its concurrent Future in the
        middle: the thread hands the result straight to an asyncio future on ``loop``."""
        future: asyncio.Future[T] = loop.create_future()

        def work() -> None:
            if future.cancelled():
                return
            try:
                result = fn(*args)
            except BaseException as exc:
                _hand_back(loop, _set_exception, future, exc)
            else:
                _hand_back(loop, _set_result, future, result)

        self._put(work)
        return future

    def _put(self, work: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("thread pool is shut down")
            self._work.put(work)
            if self._idle == 0 and len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._loop, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            elif self._idle:
                self._idle -= 1  # an idle thread will take this item

    def _loop(self) -> None:
        while (work := self._work.get()) is not None:
            work()
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()


def _hand_back(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    # A closed loop: the worker is gone, and so is whoever waited.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


@dataclass
class _Run:
    action: _wire.Action
    ctx: Context
    is_async: bool
    task: asyncio.Task[None] | None = None
    returned: bool = False
    started_report: asyncio.Future[None] | None = field(default=None, repr=False)


class Runner:
    """Executes actions for one worker; owns the in-flight runs."""

    def __init__(
        self,
        *,
        registry: Mapping[str, Task[Any, Any]],
        services: WorkerServices,
        slots: int,
        max_message_bytes: int,
        engine: Callable[[], _wire.EngineLimits | None] = lambda: None,
        on_finished: Callable[[str, str, float], None] | None = None,
    ) -> None:
        """``engine()`` says what the engine answered to ``Hello`` at the last registration
        (None: it offers no ``hewer.v1``, so reports use the Hatchet calls).
        ``on_finished(action id, outcome, seconds)`` hears of every attempt that ended here
        (outcome: completed, failed or cancelled)."""
        self.on_finished = on_finished
        self._registry = registry
        self._services = services
        self._pool = DaemonThreadPool(slots, "hewer-task")
        services.on_slot_released = self._pool.grow
        self._max_message_bytes = max_message_bytes
        self._max_payload = max(1024, max_message_bytes - _MESSAGE_OVERHEAD_BYTES)
        self._runs: dict[str, _Run] = {}
        self._engine = engine
        self._events = EventReporter(
            lambda: services.aio_dispatcher, lambda: services.metadata, services.clock
        )
        self._batch: BatchReporter | None = None

    @property
    def running(self) -> int:
        """Tasks currently in flight."""
        return len(self._runs)

    def used_slots(self) -> dict[str, int]:
        """Slot units held by the attempts in flight, per pool (safe from any thread)."""
        used: dict[str, int] = {}
        for run in list(self._runs.values()):
            task = self._registry.get(run.action.action_id)
            requests = task.options.slot_requests if task is not None else {DEFAULT_POOL: 1}
            for pool, units in requests.items():
                used[pool] = used.get(pool, 0) + units
        return used

    def attempts(self) -> list[tuple[str, int]]:
        """``(task run id, retry count)`` of every attempt in flight here (a reconnecting
        listener tells the engine, which may have restarted meanwhile)."""
        return [(key, run.action.retry_count) for key, run in self._runs.items()]

    def handle(self, action: _wire.Action) -> None:
        """Act on one assigned action (never blocks, never raises)."""
        try:
            if action.kind == _wire.ActionKind.START:
                self._start(action)
            elif action.kind == _wire.ActionKind.CANCEL:
                self._cancel(action)
            else:
                logger.warning(
                    "ignoring unsupported action type %d for %s", action.kind, action.action_id
                )
        except Exception:
            logger.exception("could not handle action %s", action.action_id)

    def _start(self, action: _wire.Action) -> None:
        key = action.task_run_external_id
        current = self._runs.get(key)
        if current is not None and current.action.retry_count == action.retry_count:
            logger.debug("duplicate assignment of %s (attempt %d)", key, action.retry_count)
            return
        payload = parse_payload(action.payload)
        raw_input = payload.get("input")
        parents = payload.get("parents")
        errors = payload.get("step_run_errors")
        triggered_by = payload.get("triggered_by")
        triggers = payload.get("triggers")
        filter_payload = triggers.get("filter_payload") if isinstance(triggers, dict) else None
        facts: dict[str, Any] = {
            "input": raw_input if isinstance(raw_input, dict) else {},
            "parents": parents if isinstance(parents, dict) else {},
            "errors": errors if isinstance(errors, dict) else None,
            "triggered_by": triggered_by if isinstance(triggered_by, str) else None,
            "filter_payload": filter_payload if isinstance(filter_payload, dict) else None,
        }
        task = self._registry.get(action.action_id)
        ctx: Context
        if task is not None and task.options.durable:
            ctx = DurableContext(
                action,
                services=self._services,
                stream=self._services.durable_stream(),
                eviction=task.options.eviction_policy,
                namespace=task.workflow._client.namespaced,
                **facts,
            )
        else:
            ctx = Context(action, services=self._services, **facts)
        run = _Run(action, ctx, is_async=task is not None and task.is_async)
        self._runs[key] = run
        logger.debug(
            "starting %s (task run %s, attempt %d)",
            action.action_id,
            key,
            action.retry_count + 1,
        )
        run.task = asyncio.create_task(
            self._execute(run, task, raw_input), name=f"hewer-task:{action.action_id}:{key}"
        )
        run.task.add_done_callback(functools.partial(self._forget, key, run))

    def _forget(self, key: str, run: _Run, _done: asyncio.Task[None]) -> None:
        if self._runs.get(key) is run:
            del self._runs[key]
        if isinstance(run.ctx, DurableContext):
            run.ctx.ended()

    def _cancel(self, action: _wire.Action) -> None:
        run = self._runs.get(action.task_run_external_id)
        if run is None or run.action.retry_count != action.retry_count:
            # Nothing of that attempt runs here (it ended, or never arrived): say so, so the
            # engine stops counting a slot for it.
            logger.debug("cancel for %s, which is not running here", action.task_run_external_id)
            self._report(_wire.step_event(action, _wire.EventKind.CANCELLED, self._now()))
            return
        logger.info(
            "cancelling %s (task run %s)", run.action.action_id, action.task_run_external_id
        )
        run.ctx.cancelled.set()
        # Sync functions cannot be interrupted; they see ctx.is_cancelled and their result
        # is dropped. Async ones get CancelledError unless they already returned.
        if run.is_async and not run.returned and run.task is not None:
            run.task.cancel()

    async def _execute(self, run: _Run, task: Task[Any, Any] | None, raw_input: Any) -> None:
        action = run.action
        began = time.monotonic()
        reporter = self._reporter()
        run.started_report = reporter.report_start(action, self._now())
        try:
            if task is None:
                raise LookupError(
                    f"this worker has no task for action {action.action_id!r} "
                    f"(it serves {sorted(self._registry)})"
                )
            fn_input = task.validate_input(raw_input)
            # This asyncio task has its own copy of the context, so the mark stays with this
            # run; a sync body gets a copy of it below.
            enter_task(run.ctx)
            if task.is_async:
                if not reporter.ordered:
                    # An async body that blocks the loop would also hold back STARTED, and
                    # an engine without hewer.v1 re-queues starts it never hears about; so
                    # let STARTED go out first. (Engines with hewer.v1 never re-send a start
                    # that went out on a stream still open, and their reports keep order:
                    # there STARTED just goes in the next call, or with the outcome.)
                    await asyncio.wait({run.started_report}, timeout=STARTED_WAIT_SECONDS)
                result = await task.fn(fn_input, run.ctx)
            else:
                loop = asyncio.get_running_loop()
                call = contextvars.copy_context().run
                result = await self._pool.run_soon(loop, call, task.fn, fn_input, run.ctx)
            run.returned = True
            if run.ctx.is_cancelled:
                logger.info("%s finished after being cancelled; result dropped", action.action_id)
                event = self._cancelled(action)
            else:
                event = _wire.step_event(
                    action, _wire.EventKind.COMPLETED, self._now(), payload=self._output(result)
                )
                logger.debug("%s completed", action.action_id)
        except asyncio.CancelledError:
            if not run.ctx.is_cancelled:
                raise
            logger.info("%s cancelled", action.action_id)
            event = self._cancelled(action)
        except Evicted as exc:
            # The engine has ended this invocation already (and freed its slot): nothing
            # to report. A later invocation carries on from the task's log.
            logger.info("%s (task run %s): %s", action.action_id, action.task_run_external_id, exc)
            return
        except Exception as exc:
            run.returned = True
            if run.ctx.is_cancelled:
                logger.info("%s failed after being cancelled; error dropped", action.action_id)
                event = self._cancelled(action)
            else:
                logger.info("%s failed: %s: %s", action.action_id, type(exc).__name__, exc)
                should_not_retry, retry_after_ms = failure_flags(exc)
                event = _wire.step_event(
                    action,
                    _wire.EventKind.FAILED,
                    self._now(),
                    payload=self._truncate(failure_payload(exc)),
                    should_not_retry=should_not_retry,
                    retry_after_ms=retry_after_ms,
                )
        if self.on_finished is not None:
            self.on_finished(
                action.action_id, _wire.OUTCOMES[event.event_type], time.monotonic() - began
            )
        # STARTED first, so the engine never sees the outcome before the start: a batching
        # reporter keeps the order itself (dropping a STARTED still queued), otherwise the
        # outcome waits until STARTED was sent.
        outcome = self._reporter()
        if outcome.ordered and outcome is reporter:
            # Cancelling this wait would not take the report back out of the queue: no
            # shield needed.
            await outcome.report(event)
        else:
            await asyncio.shield(run.started_report)
            await asyncio.shield(outcome.report(event))

    def _cancelled(self, action: _wire.Action) -> Any:
        """CANCELLED once a cancelled body has really returned: until then the engine keeps
        its slot taken, so a body that ignores cancellation never over-commits the worker."""
        return _wire.step_event(action, _wire.EventKind.CANCELLED, self._now())

    def _output(self, result: Any) -> str:
        text = _serde.output_json(result)
        # A character is at most 4 bytes in UTF-8: short texts need no encoding to check.
        if len(text) * 4 > self._max_payload and (size := len(text.encode())) > self._max_payload:
            raise _serde.IllegalOutput(
                f"task output is {size} bytes; the limit is {self._max_payload}"
            )
        return text

    def _truncate(self, text: str) -> str:
        data = text.encode()
        if len(data) <= self._max_payload:
            return text
        return data[: self._max_payload].decode(errors="ignore") + "\n[truncated]"

    def _now(self) -> Any:
        return self._services.clock.now()

    def _reporter(self) -> EventReporter | BatchReporter:
        """Where reports go now: batched if the engine answered Hello at the last
        registration (and still has the call), else one Hatchet call each."""
        limits = self._engine()
        if limits is None:
            return self._events
        batch = self._batch
        if batch is None:
            batch = self._batch = BatchReporter(
                self._services.report,
                max_per_call=limits.max_reports_per_call,
                max_bytes=self._max_message_bytes - _MESSAGE_OVERHEAD_BYTES // 2,
                clock=self._services.clock,
                fallback=self._events,
            )
        else:
            batch.max_per_call = limits.max_reports_per_call
        return self._events if batch.unimplemented else batch

    def _report(self, event: Any) -> asyncio.Future[None]:
        return self._reporter().report(event)

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for running tasks, then abandon the rest. Durable
        tasks that wait are evicted at once: they resume on another worker."""
        for run in list(self._runs.values()):
            if isinstance(run.ctx, DurableContext):
                run.ctx.evict_when_waiting()
        tasks = [run.task for run in self._runs.values() if run.task is not None]
        if tasks:
            logger.info("waiting up to %.1fs for %d running tasks", grace, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for run in list(self._runs.values()):
                if run.task in pending:
                    logger.warning(
                        "abandoning %s (task run %s) after the grace period; the engine retries it",
                        run.action.action_id,
                        run.action.task_run_external_id,
                    )
                    run.ctx.cancelled.set()
                    run.task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        await self.flush(REPORT_GIVE_UP_SECONDS)

    async def flush(self, limit_seconds: float) -> None:
        """Wait (at most ``limit_seconds``) for reports still in flight."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_seconds
        if self._batch is not None:
            await self._batch.flush(limit_seconds)
        await self._events.flush(max(0.0, deadline - loop.time()))

    def shutdown(self) -> None:
        """Let go of the thread pool (threads of abandoned sync tasks are daemons)."""
        self._pool.shutdown(wait=False)
