"""Durable tasks: ``DurableContext`` and the worker's ``v1.V1Dispatcher/DurableTask`` stream.

A durable task's waits, memoised values and child runs are entries of an event log the
engine keeps per task. The body asks for each over the worker's one durable stream and is
answered with the entry's node; the engine then says when the entry is satisfied (a sleep
ran out, an event came, a child run finished). A later invocation of the same task (after
its worker died, or after it was evicted while waiting) runs the body again from the top,
and the entries it reaches again are answered from the log: completed sleeps are not slept
again, memoised functions are not called again, children are not spawned again.

The engine only hands completions to entries a worker says it waits on (``worker_status``),
so the stream says so as soon as a wait starts, again every few seconds, and after every
reconnect: an engine restart or a move to another replica loses no completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import grpc
import grpc.aio

from hewer.durations import format_duration, parse_duration
from hewer.errors import (
    ConfigurationError,
    HewerError,
    IdempotencyCollisionError,
    NonRetryableError,
    TaskRunError,
)
from hewer.sdk import _serde, _wire
from hewer.sdk._conditions import OrGroup, ParentCondition, SleepCondition, UserEventCondition
from hewer.sdk._conditions import flatten as flatten_conditions
from hewer.sdk._connection import TRANSIENT_CODES, status_code, status_details
from hewer.sdk._context import Context, TaskServices
from hewer.sdk._options import EvictionPolicy
from hewer.sdk._time import LISTEN_BACKOFF

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

STATUS_RESEND_SECONDS = 5.0
"""How often the stream repeats which entries the worker waits on (the engine only hands
completions to entries it has heard of from this stream)."""

ZERO = timedelta()

Key = tuple[str, int]  # (task run id, invocation)
EntryKey = tuple[str, int, int]  # (task run id, invocation, node)


class DurableError(HewerError):
    """The engine refused a durable request (the message says why)."""


class NonDeterminismError(DurableError, NonRetryableError):
    """A later invocation of a durable task asked for something else than the earlier one
    did at the same point of its log: the body must take the same durable steps, in the
    same order, every time it runs. It fails the task without retries (each would fail the
    same way)."""


class Evicted(BaseException):
    """Ends a durable body that no longer runs here: it was evicted while waiting (it
    resumes as a new invocation once the wait is satisfied), or the engine ended this
    invocation. A BaseException, so ``except Exception`` in the body does not swallow it."""


@dataclass(frozen=True)
class SleepResult:
    """What a durable sleep returns: how long it was asked to sleep."""

    duration: timedelta


@dataclass(frozen=True)
class Completion:
    """An entry of the log was satisfied."""

    payload: bytes
    failure: bool
    error: str | None


@dataclass(frozen=True)
class Spawned:
    """A child run a durable task spawned: its node in the log and its run id."""

    node: int
    run_id: str


class DurableStream:
    """The worker's one ``DurableTask`` stream, opened on first use and kept open (with
    reconnects) until the worker stops. Requests of one invocation are answered in order;
    callers send one at a time per invocation (``DurableContext`` holds a lock). One writer
    task sends everything, in the order it was queued."""

    def __init__(
        self,
        stub: Callable[[], Any],
        metadata: Sequence[tuple[str, str]],
        worker_id: Callable[[], str],
    ) -> None:
        self._stub = stub
        self._metadata = metadata
        self._worker_id = worker_id
        self._outbox: asyncio.Queue[Any] | None = None
        self._registered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._acks: dict[Key, deque[asyncio.Future[Any]]] = {}
        self._waits: dict[EntryKey, asyncio.Future[Completion]] = {}
        self._early: dict[EntryKey, Completion] = {}
        self._dropped: dict[Key, str] = {}
        self._to_evict: set[Key] = set()
        self._completes: dict[EntryKey, Any] = {}
        self._registered_as: str | None = None
        self._closed = False

    async def ensure_started(self) -> None:
        if self._closed:
            raise Evicted("the worker is stopping")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="hewer-durable-stream")
        if self._registered.is_set() and self._registered_as != self._worker_id():
            # The worker registered again under a new id: so does this stream.
            outbox = self._outbox
            if outbox is not None:
                self._registered.clear()
                outbox.put_nowait(self._register())
        await self._registered.wait()

    async def _put_connected(self, request: Any) -> asyncio.Queue[Any]:
        """Queue ``request`` on the connected stream, waiting for a reconnect if needed."""
        while True:
            await self.ensure_started()
            outbox = self._outbox
            if outbox is not None and self._registered.is_set():
                outbox.put_nowait(request)
                return outbox

    async def request(self, key: Key, request: Any) -> Any:
        """Send ``request`` for invocation ``key`` and return the engine's answer (the
        response's message), raising ``DurableError`` if it refused."""
        self._check(key)
        await self.ensure_started()
        self._check(key)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Queued with the request, in the same step: the engine answers an invocation's
        # requests in order, and each answer goes to its own slot. A slot whose waiter was
        # cancelled stays in line, so the answer meant for it is dropped, not handed on.
        self._acks.setdefault(key, deque()).append(future)
        try:
            await self._put_connected(request)
        except BaseException:
            self._discard_ack(key, future)
            raise
        return await future

    async def complete_memo(self, entry: EntryKey, request: Any) -> None:
        """Send a memoised value; kept until the invocation ends and sent again after any
        reconnect (storing it twice is harmless), so a break cannot lose it."""
        await self._put_connected(request)
        self._completes[entry] = request  # in the same step: a later break resends it

    async def wait(self, key: Key, node: int) -> Completion:
        """Wait until entry ``node`` of invocation ``key`` is satisfied."""
        self._check(key)
        entry = (key[0], key[1], node)
        early = self._early.pop(entry, None)
        if early is not None:
            return early
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._waits[entry] = future
        self._send_status([entry])
        try:
            return await future
        finally:
            if self._waits.get(entry) is future:
                del self._waits[entry]

    def forget(self, key: Key) -> None:
        """The invocation ended here: drop what is kept for it."""
        self._dropped.pop(key, None)
        for kept in (self._early, self._completes):
            for entry in [e for e in kept if e[:2] == key]:
                del kept[entry]

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._fail_all(Evicted("the worker is stopping"))

    # --- internals -----------------------------------------------------------------------

    def _check(self, key: Key) -> None:
        reason = self._dropped.get(key)
        if reason is not None:
            raise Evicted(reason)

    def _discard_ack(self, key: Key, future: asyncio.Future[Any]) -> None:
        queue = self._acks.get(key)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(future)
            if not queue:
                del self._acks[key]

    def _send_status(self, entries: Sequence[EntryKey]) -> None:
        # Not connected: _run says it all again once it is.
        if self._outbox is not None and self._registered.is_set() and entries:
            self._outbox.put_nowait(_wire.durable_status_request(self._worker_id(), entries))

    def _register(self) -> Any:
        self._registered_as = self._worker_id()
        return _wire.durable_register_request(self._registered_as)

    @staticmethod
    async def _write(call: Any, outbox: asyncio.Queue[Any]) -> None:
        # A failed write means a broken call, which the reading side sees and reconnects.
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            while True:
                await call.write(await outbox.get())

    async def _run(self) -> None:
        attempt = 0
        while not self._closed:
            call: Any = None
            helpers: list[asyncio.Task[None]] = []
            try:
                call = self._stub().DurableTask(metadata=self._metadata)
                outbox: asyncio.Queue[Any] = asyncio.Queue()
                outbox.put_nowait(self._register())
                helpers.append(asyncio.create_task(self._write(call, outbox)))
                self._outbox = outbox
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:  # type: ignore[attr-defined]
                        raise DurableError("the engine closed the durable stream")
                    if response.WhichOneof("message") == "register_worker":
                        attempt = 0
                        self._registered.set()
                        # Said again on every (re)registration: what lives only here.
                        for request in self._completes.values():
                            outbox.put_nowait(request)
                        for task_id, invocation in sorted(self._to_evict):
                            outbox.put_nowait(
                                _wire.durable_evict_request(
                                    task_id, invocation, reason="its request was cut off"
                                )
                            )
                        self._send_status(list(self._waits))
                        if len(helpers) == 1:  # the writer; a re-registration keeps its resender
                            helpers.append(asyncio.create_task(self._resend()))
                    else:
                        self._dispatch(response)
            except asyncio.CancelledError:
                raise
            except (grpc.aio.AioRpcError, DurableError) as exc:
                code = status_code(exc) if isinstance(exc, grpc.RpcError) else None
                if code is not None and code not in TRANSIENT_CODES:
                    logger.warning("durable stream refused: %s %s", code.name, status_details(exc))
                else:
                    logger.info("durable stream lost (%s); reconnecting", exc)
            finally:
                self._registered.clear()
                self._outbox = None
                for helper in helpers:
                    helper.cancel()
                if call is not None:
                    call.cancel()
                # A request in flight may or may not have reached the log, so its body cannot
                # know which node it got: the invocation is given back to the engine (once
                # the stream is back), which starts the next one, replaying the log.
                broken = list(self._acks)
                self._to_evict.update(broken)
                for key in broken:
                    self._dropped[key] = "the durable stream broke before the engine answered"
                self._fail_acks(Evicted("the durable stream broke before the engine answered"))
            await asyncio.sleep(LISTEN_BACKOFF.delay(attempt))
            attempt += 1

    async def _resend(self) -> None:
        while True:
            await asyncio.sleep(STATUS_RESEND_SECONDS)
            self._send_status(list(self._waits))

    def _dispatch(self, response: Any) -> None:
        kind = response.WhichOneof("message")
        msg: Any = getattr(response, kind) if kind else None
        if kind in ("memo_ack", "wait_for_ack"):
            self._ack((msg.ref.durable_task_external_id, msg.ref.invocation_count), msg)
        elif kind == "trigger_runs_ack":
            self._ack((msg.durable_task_external_id, msg.invocation_count), msg)
        elif kind == "eviction_ack":
            key = (msg.durable_task_external_id, msg.invocation_count)
            if key in self._to_evict:
                self._to_evict.discard(key)  # one this stream sent for a cut-off request
            else:
                self._ack(key, msg)
        elif kind == "entry_completed":
            ref = msg.ref
            entry = (ref.durable_task_external_id, ref.invocation_count, ref.node_id)
            error_text = msg.error_message if msg.HasField("error_message") else None
            done = Completion(msg.payload, msg.is_failure, error_text)
            future = self._waits.pop(entry, None)
            if future is not None and not future.done():
                future.set_result(done)
            else:
                self._early[entry] = done
        elif kind == "error":
            ref = msg.ref
            key = (ref.durable_task_external_id, ref.invocation_count)
            entry = (key[0], key[1], ref.node_id)
            if entry in self._completes:
                # Storing a memoised value failed; it is said again after a reconnect, and
                # a later invocation computes it again at worst.
                logger.warning("storing a memoised value failed: %s", msg.error_message)
                return
            error: DurableError = (
                NonDeterminismError(msg.error_message)
                if msg.error_type == _wire.DURABLE_NONDETERMINISM
                else DurableError(msg.error_message)
            )
            if not self._ack(key, error):
                self._fail_key(key, error)
        elif kind == "server_evict":
            key = (msg.durable_task_external_id, msg.invocation_count)
            reason = msg.reason or "the engine ended this invocation"
            self._to_evict.discard(key)
            self._dropped[key] = reason
            self._fail_key(key, Evicted(reason))
        else:
            logger.debug("ignoring durable stream message %r", kind)

    def _ack(self, key: Key, answer: Any) -> bool:
        """Hand ``answer`` to the oldest request of ``key`` still in line (dropped if its
        waiter is gone). False if no request was in line."""
        queue = self._acks.get(key)
        if not queue:
            logger.debug("durable answer for %s with no request in line", key)
            return False
        future = queue.popleft()
        if not queue:
            del self._acks[key]
        if not future.done():
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        return True

    def _fail_key(self, key: Key, exc: BaseException) -> None:
        for future in self._acks.pop(key, ()):
            if not future.done():
                future.set_exception(exc)
        for entry in [e for e in self._waits if e[:2] == key]:
            future = self._waits.pop(entry)
            if not future.done():
                future.set_exception(exc)

    def _fail_acks(self, exc: BaseException) -> None:
        acks, self._acks = self._acks, {}
        for queue in acks.values():
            for future in queue:
                if not future.done():
                    future.set_exception(exc)

    def _fail_all(self, exc: BaseException) -> None:
        self._fail_acks(exc)
        waits, self._waits = self._waits, {}
        for future in waits.values():
            if not future.done():
                future.set_exception(exc)


def memo_key(task_run_id: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> bytes:
    """What a memoised call is known by in the log: the task, the function and its
    arguments as JSON (two functions called with the same arguments are two values). The
    arguments must be JSON values (or pydantic models): anything else could be keyed
    differently by the worker that replays the task."""
    try:
        arguments = json.dumps([args, kwargs], sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        try:
            arguments = _serde.dumps([args, dict(sorted(kwargs.items()))])
        except Exception as exc:
            raise ConfigurationError(
                f"aio_memo({getattr(fn, '__name__', fn)!r}, ...): its arguments must be JSON "
                f"values or pydantic models, to key the value the same way on every worker: {exc}"
            ) from None
        if any(isinstance(a, set | frozenset) for a in (*args, *kwargs.values())):
            raise ConfigurationError(
                "aio_memo arguments must not be sets (their order varies)"
            ) from None
    h = hashlib.sha256()
    h.update(task_run_id.encode())
    h.update(f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}".encode())
    h.update(arguments.encode())
    return h.digest()


Waitable = SleepCondition | UserEventCondition | OrGroup


class DurableContext(Context):
    """The context of a durable task: ``Context`` plus waits, memoised values and child
    runs that survive the worker (see the module's docstring)."""

    def __init__(
        self,
        action: _wire.Action,
        *,
        services: TaskServices,
        stream: DurableStream,
        eviction: EvictionPolicy | None,
        namespace: Callable[[str], str] = str,
        **kwargs: Any,
    ) -> None:
        super().__init__(action, services=services, **kwargs)
        self._stream = stream
        self._eviction = eviction
        self._namespace = namespace
        self._lock = asyncio.Lock()
        self._wait_index = 0
        self._evict_now = asyncio.Event()

    @property
    def invocation_count(self) -> int:
        """1 for the first run of the body, then one more per retry or resume."""
        return self._action.durable_invocation or self._action.retry_count + 1

    @property
    def _key(self) -> Key:
        return (self._action.task_run_external_id, self.invocation_count)

    def ended(self) -> None:
        """The body has returned (the runner says so): let the stream forget it."""
        self._stream.forget(self._key)

    def evict_when_waiting(self) -> None:
        """The worker stops: a wait in progress (or the next one) gives the task back to
        the engine at once instead of holding the shutdown."""
        self._evict_now.set()

    async def _request(self, request: Any) -> Any:
        async with self._lock:
            return await self._stream.request(self._key, request)

    async def _await_entry(self, node: int, what: str) -> Completion:
        """Wait for entry ``node``; past the eviction ttl (or when the worker stops) give
        the slot back and end the body with ``Evicted`` (a later invocation resumes
        here)."""
        wait = asyncio.ensure_future(self._stream.wait(self._key, node))
        stop = asyncio.ensure_future(self._evict_now.wait())
        ttl = self._eviction.ttl if self._eviction is not None else None
        try:
            await asyncio.wait(
                {wait, stop},
                timeout=ttl.total_seconds() if ttl is not None else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if wait.done():
                return wait.result()
            why = "the worker stops" if stop.done() else f"waited {format_duration(ttl or ZERO)}"
            await self._request(_wire.durable_evict_request(*self._key, reason=f"{why} on {what}"))
            logger.info(
                "%s evicted (%s on %s); it resumes once that is done", self.action_id, why, what
            )
            raise Evicted(f"evicted: {why} on {what}")
        finally:
            wait.cancel()
            stop.cancel()

    async def aio_wait_for(
        self, signal_key: str, *conditions: Waitable, label: str | None = None
    ) -> dict[str, Any]:
        """Wait durably until the conditions hold (all of them; ``or_(...)`` for any of
        several): sleeps and events. Returns ``{"CREATE": {data key: [data, ...]}}``: what
        satisfied each condition (an event's payload, a sleep's duration)."""
        flat = flatten_conditions(list(conditions), "aio_wait_for")
        if not flat:
            raise ConfigurationError("aio_wait_for needs at least one condition")
        if any(isinstance(c, ParentCondition) for _, c in flat):
            raise ConfigurationError("a durable wait takes sleeps and events, not parents")
        request = _wire.durable_wait_request(
            *self._key, [("queue", g, c) for g, c in flat], self._namespace, label
        )
        ack = await self._request(request)
        done = await self._await_entry(ack.ref.node_id, label or signal_key)
        if done.failure:
            raise DurableError(done.error or f"wait {signal_key!r} failed")
        value = json.loads(done.payload) if done.payload else {}
        return value if isinstance(value, dict) else {}

    def _next_wait(self) -> int:
        index = self._wait_index
        self._wait_index += 1
        return index

    async def aio_sleep_for(self, duration: timedelta, label: str | None = None) -> SleepResult:
        """Sleep durably: a worker that dies meanwhile does not make the task sleep again
        from the start, and a long sleep can be evicted, holding no slot."""
        if not isinstance(duration, timedelta) or duration <= timedelta(0):
            raise ConfigurationError(f"a durable sleep needs a positive timedelta: {duration!r}")
        key = f"sleep:{format_duration(duration)}-{self._next_wait()}"
        out = await self.aio_wait_for(key, SleepCondition(duration, key=key), label=label)
        match = _first_match(out)
        slept = match.get("sleep_duration") if isinstance(match, dict) else None
        return SleepResult(parse_duration(slept) if isinstance(slept, str) else duration)

    async def aio_sleep_until(self, wake_at: datetime, label: str | None = None) -> SleepResult:
        """Sleep durably until ``wake_at`` (an aware datetime; measured from ``aio_now``)."""
        if wake_at.tzinfo is None:
            raise ConfigurationError("aio_sleep_until needs an aware datetime")
        left = wake_at - await self.aio_now()
        return await self.aio_sleep_for(max(left, timedelta(milliseconds=1)), label=label)

    async def aio_wait_for_event(
        self,
        key: str,
        expression: str | None = None,
        *,
        scope: str | None = None,
        lookback_window: timedelta | None = None,
        label: str | None = None,
    ) -> dict[str, Any]:
        """Wait durably for an event of ``key`` (namespaced like pushes) whose payload
        matches ``expression`` (CEL over ``input``); returns its payload. With ``scope`` and
        ``lookback_window``, an event of that scope pushed up to the window before the wait
        counts too."""
        if (scope is None) != (lookback_window is None):
            raise ConfigurationError("give scope and lookback_window together, or neither")
        since = (await self.aio_now()) - lookback_window if lookback_window is not None else None
        data_key = f"event:{key}-{self._next_wait()}"
        condition = UserEventCondition(
            key, expression, scope=scope, consider_events_since=since, key=data_key
        )
        match = _first_match(await self.aio_wait_for(data_key, condition, label=label))
        return match if isinstance(match, dict) else {}

    async def aio_memo(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``await fn(*args, **kwargs)`` once per task run: later invocations get the
        stored value (JSON; a pydantic model when ``fn`` is annotated to return one)."""
        model = _serde.output_model_of(fn)
        key = memo_key(self.task_run_external_id, fn, args, kwargs)
        ack = await self._request(_wire.durable_memo_request(*self._key, key))
        if ack.memo_already_existed and ack.HasField("memo_result_payload"):
            text = ack.memo_result_payload.decode()
        else:
            text = _serde.dumps(await fn(*args, **kwargs))
            node = ack.ref.node_id
            done = _wire.durable_complete_memo_request(*self._key, node, key, text.encode())
            await self._stream.complete_memo((*self._key, node), done)
        value: T = _serde.parse_output(json.loads(text), model)
        return value

    async def aio_now(self) -> datetime:
        """The current time, the same in every invocation of this task run."""

        async def now() -> str:
            return datetime.now(UTC).isoformat()

        return datetime.fromisoformat(await self.aio_memo(now))

    # --- children (used by the run methods of workflows and tasks) ------------------------

    async def spawn(self, requests: Sequence[Any]) -> list[Spawned]:
        """Spawn child runs through the log (a later invocation gets the same runs)."""
        ack = await self._request(_wire.durable_trigger_request(*self._key, requests))
        spawned = [Spawned(e.node_id, e.workflow_run_external_id) for e in ack.run_entries]
        refused = [i for i, child in enumerate(spawned) if not child.run_id]
        if refused:
            # The engine makes no run (and no log entry) for a child whose idempotency key
            # another run holds: there is nothing to wait for.
            raise IdempotencyCollisionError(
                f"child run(s) {refused} refused: another run holds their idempotency key",
                existing_run_ids=[],
                created_run_ids=[c.run_id for c in spawned if c.run_id],
            )
        return spawned

    async def child_outputs(self, child: Spawned, name: str) -> dict[str, Any]:
        """``{task name: output}`` of a spawned child run once it finished; raises
        ``TaskRunError`` if it failed."""
        done = await self._await_entry(child.node, f"child run of {name!r}")
        if done.failure:
            raise TaskRunError(child.run_id, "FAILED", {name: done.error or "failed"})
        value = json.loads(done.payload) if done.payload else {}
        return value if isinstance(value, dict) else {}


def _first_match(result: Mapping[str, Any]) -> Any:
    """The one datum of a single-condition wait: ``{"CREATE": {key: [datum]}}``."""
    matches = result.get("CREATE")
    if isinstance(matches, dict):
        for values in matches.values():
            if isinstance(values, list) and values:
                return values[0]
    return None


def current_durable(ctx: Context | None) -> DurableContext | None:
    """``ctx`` if it is a durable task's context."""
    return ctx if isinstance(ctx, DurableContext) else None
