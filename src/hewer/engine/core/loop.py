"""The engine loop: the one writer of the hot path, and the scheduler's owner.

Every write (a trigger, a worker's report, a cancel, a heartbeat, ...) is an
:class:`~hewer.engine.core.transitions.Op` submitted here. Each turn of the loop takes every
op that arrived while the previous turn was committing (group commit, capped by size; no
timer, so a lone write goes out at once), loads the rows they need in one go, applies them
in order, lets the scheduler decide with the slots they freed and the tasks they queued,
and writes all of it in one transaction. Only after the commit are callers answered,
workers sent their starts and cancels, and waiting clients told about finished runs:
acknowledged means durable.

The scheduler sees an op's effects before its commit, so that decisions can share the
transaction; if the commit fails, the scheduler is rebuilt from the store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from hewer.domain import Changes, DispatchInfo, Keys, WorkingSet
from hewer.engine.core.clock import Clock
from hewer.engine.core.component import Component
from hewer.engine.core.scheduler import Scheduler
from hewer.engine.core.transitions import Assign, Context, Op, queued_item
from hewer.engine.core.versions import Versions
from hewer.errors import HewerError, LeaseLost, StoreError
from hewer.store import Store

logger = logging.getLogger(__name__)

R = TypeVar("R")

PREFETCH_MAX = 64  # queued rows loaded ahead of the scheduler's decisions, per transaction
MAX_WEIGHT = 2000  # rows of work per transaction (a bulk trigger of 1,000 is one op)
RETRY_AFTER_FAILURE = 0.5  # seconds before the loop writes again after a failed commit
# While the database is unreachable: the first probe comes soon (most failures are short:
# a deadlock, a dropped connection), the next ones at this pace.
FIRST_PROBE_AFTER = 0.05
PROBE_EVERY = 0.5


class Internal(HewerError):
    """An operation failed on an engine bug; the rest of its batch went on without it."""


class Hooks(Protocol):
    """What the rest of the engine does around the loop's transactions."""

    def keepers(self) -> frozenset[str]:
        """Workers whose ended attempts keep their slots until they report the end."""

    def committed(self, ops: Sequence[Op[Any]], dispatched: list[DispatchInfo]) -> None:
        """After a commit: cancels to send, starts to dispatch, runs finished."""

    async def rebuild(self) -> None:
        """Rebuild the scheduler from the store (after a failed commit)."""


@dataclass(frozen=True, slots=True)
class CommitInfo:
    """What one committed turn wrote."""

    changes: Changes
    dispatched: list[DispatchInfo]
    now: float  # the turn's clock: the time its transitions are stamped with
    seconds: float  # from the start of the transaction to its commit
    ops: int


class EngineLoop(Component):
    def __init__(
        self,
        store: Store,
        clock: Clock,
        scheduler: Scheduler,
        versions: Versions,
        hooks: Hooks,
        *,
        max_reassignments: int | None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.scheduler = scheduler
        self.versions = versions
        self.hooks = hooks
        self.max_reassignments = max_reassignments
        self._pending: collections.deque[tuple[Op[Any], asyncio.Future[Any]]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()  # nothing pending and no turn in progress
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._retry_at: float | None = None
        # Set while the database is unreachable: writes are refused at once (callers get
        # UNAVAILABLE, nobody waits on a hung connection) until a probe gets an answer.
        self._down: StoreError | None = None
        self._probe: asyncio.Task[None] | None = None
        self.back_at: float | None = None
        """When (monotonic) the database last came back after being unavailable."""
        self.on_fenced: Callable[[], None] | None = None
        """Called when a write was refused because another replica took the lease over."""
        # Counters, for benchmarks and /metrics.
        self.commits = 0
        self.ops = 0
        self.on_commit: Callable[[CommitInfo], None] | None = None
        """Told of every committed turn (for metrics; must be cheap and never raise)."""

    # -- submitting -------------------------------------------------------------------

    def submit(self, op: Op[R]) -> asyncio.Future[R]:
        """Queue ``op`` for the next transaction; the future is resolved after its commit."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        if self._stopping:
            future.set_exception(StoreError("the engine is stopping"))
            return future
        if self._down is not None:
            future.set_exception(StoreError(f"the database is unavailable ({self._down})"))
            return future
        self._pending.append((op, future))
        self._idle.clear()
        self._wakeup.set()
        return future

    async def run(self, op: Op[R]) -> R:
        """Submit ``op`` and wait for it; a caller that goes away does not undo it."""
        return await asyncio.shield(self.submit(op))

    def wake(self) -> None:
        self._wakeup.set()

    @property
    def unavailable(self) -> StoreError | None:
        """Why the database is held to be unreachable now (None: it answers)."""
        return self._down

    # -- the database going away ------------------------------------------------------

    def _went_down(self, error: StoreError) -> None:
        """A write failed on the database: refuse what waits and what comes until a probe
        gets an answer (a retry per op would pile up behind a hung connection)."""
        if self._down is None:
            logger.warning("database unavailable (%s); refusing writes until it answers", error)
        self._down = error
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(StoreError(f"the database is unavailable ({error})"))
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_until_up(), name="hewer-db-probe")

    async def _probe_until_up(self) -> None:
        delay = FIRST_PROBE_AFTER
        while self._down is not None and not self._stopping:
            await asyncio.sleep(delay)
            delay = PROBE_EVERY
            try:
                await self.store.ping()
                # What the scheduler holds may be behind the database: read it again.
                await self.hooks.rebuild()
            except StoreError as exc:
                self._down = exc
                continue
            except Exception:
                # A bug, not the database: writing resumes (refusing forever would be worse);
                # the scheduler rebuilds again after the next failed turn.
                logger.exception("could not rebuild the scheduler after the database came back")
            logger.warning("database reachable again; writing resumes")
            self.back_at = self.clock.monotonic()
            self._down = None
            self._retry_at = None
            self._wakeup.set()

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._down = None  # judged afresh: the first failed write says so again
            self._task = asyncio.create_task(self._forever(), name="hewer-engine-loop")
            self._task.add_done_callback(_report_exit)

    async def stop(self, grace: float = 5.0) -> None:
        """Write what is pending (for at most ``grace`` seconds), then stop."""
        self._stopping = True
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        task, self._task = self._task, None
        if task is None:
            return
        self._wakeup.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained(), grace)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(StoreError("the engine stopped"))

    async def _drained(self) -> None:
        await self._idle.wait()

    async def settled(self) -> None:
        """Wait until nothing is pending, no turn is in progress and the scheduler has
        nothing new to decide (for tests and orderly shutdown)."""
        while True:
            await self._idle.wait()
            await asyncio.sleep(0)  # a woken loop starts its turn now
            if self._idle.is_set() and not self._pending and not self.scheduler.has_work():
                return
            if self._task is None:
                return
            self._wakeup.set()

    # -- the loop ---------------------------------------------------------------------

    async def _forever(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
            await self._wait()
            self._idle.clear()
            try:
                await self.turn()
            except Exception:
                logger.exception("engine loop turn failed; going on")
                self._retry_at = self.clock.monotonic() + RETRY_AFTER_FAILURE

    async def _wait(self) -> None:
        while not self._pending or self._retry_at is not None or self._down is not None:
            delay: float | None
            if self._down is not None:
                delay = None  # the probe wakes the loop once the database answers
            elif self._retry_at is not None:
                delay = self._retry_at - self.clock.monotonic()
                if delay <= 0:
                    self._retry_at = None
                    continue
            elif self.scheduler.has_work():
                return
            else:
                wake = self.scheduler.next_wake()
                delay = None if wake is None else max(0.0, wake - self.clock.now())
            self._wakeup.clear()
            if delay is None:
                await self._wakeup.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), delay)

    def _take(self) -> list[tuple[Op[Any], asyncio.Future[Any]]]:
        batch: list[tuple[Op[Any], asyncio.Future[Any]]] = []
        weight = 0
        while self._pending:
            op = self._pending[0][0]
            if batch and weight + op.weight > MAX_WEIGHT:
                break
            batch.append(self._pending.popleft())
            weight += op.weight
        return batch

    async def turn(self) -> None:
        """One transaction: what is pending, then the scheduler's decisions."""
        await self._refill()
        batch = self._take()
        ops = [op for op, _ in batch]
        ctx = Context(
            self.clock.now(), self.versions.cache, self.max_reassignments, self.hooks.keepers()
        )
        keys = Keys()
        seqs = 0
        for op in ops:
            op.keys(keys)
            seqs += op.seqs
        if keys.task_ids:
            # Each task a batch touches may free a slot the scheduler then fills: load the
            # rows it would most likely pick along with this batch's (one round trip saved
            # when it does; a few rows read for nothing when it does not).
            keys.task_ids.update(self.scheduler.likely(min(len(keys.task_ids), PREFETCH_MAX)))
        assign: Assign | None = None
        touched = False  # whether the scheduler saw effects that are not committed yet
        began = time.perf_counter()
        try:
            async with self.store.write() as tx:
                ws = (
                    await tx.load(keys, self.versions.cache, seqs) if keys or seqs else WorkingSet()
                )
                self.versions.add(ws.versions.values())
                poisoned = self._apply(ops, ctx, ws)
                if poisoned:
                    raise _Retry
                touched = True
                self._tentative(ops)
                try:
                    decided = self.scheduler.decide()
                except Exception:
                    logger.exception("scheduling pass failed; its tasks stay queued")
                    decided = []
                if decided:
                    assign = Assign(decided)
                    more = Keys()
                    assign.keys(more)
                    await tx.load_more(ws, more, self.versions.cache)
                    self.versions.add(ws.versions.values())
                    assign.apply(ctx, ws)
                tx.stage(ws.changes)
        except _Retry:
            # An op broke on a bug: it alone fails; the others go again, first in line.
            for op, future in reversed(batch):
                if op.error is not None and isinstance(op.error, Internal):
                    _resolve(op, future)
                else:
                    op.outcome = type(op.outcome)()
                    op.error = None
                    self._pending.appendleft((op, future))
            return
        except BaseException as exc:
            if touched:
                self.scheduler.unwind()
                if not isinstance(exc, StoreError):
                    await self._rebuild()
            error = exc if isinstance(exc, StoreError) else StoreError(f"write failed: {exc}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if isinstance(exc, asyncio.CancelledError):
                raise
            if isinstance(exc, LeaseLost) and self.on_fenced is not None:
                self.on_fenced()
            if isinstance(exc, StoreError) and exc.unavailable:
                # The probe rebuilds the scheduler once the database answers again.
                self._went_down(exc)
            elif isinstance(exc, StoreError):
                # Refused (a conflict, a deadlock): the database is there; write again soon.
                if touched:
                    await self._rebuild()
                logger.warning("engine loop write refused: %s", exc)
            else:
                logger.error("engine loop write failed", exc_info=exc)
            self._retry_at = self.clock.monotonic() + RETRY_AFTER_FAILURE
            return
        self.commits += 1
        self.ops += len(ops)
        self.scheduler.settle(assign.refused if assign is not None else ())
        dispatched = assign.result if assign is not None else []
        try:
            self.hooks.committed(ops, dispatched)
            if self.on_commit is not None:
                seconds = time.perf_counter() - began
                self.on_commit(CommitInfo(ws.changes, dispatched, ctx.now, seconds, len(ops)))
        except Exception:
            logger.exception("after-commit effects failed")
        for op, future in batch:
            _resolve(op, future)

    def _apply(self, ops: Sequence[Op[Any]], ctx: Context, ws: WorkingSet) -> bool:
        """Apply every op in order; True if one broke (then the working set is spoiled)."""
        for op in ops:
            try:
                op.apply(ctx, ws)
            except Exception as exc:
                logger.exception("%s failed on an engine bug", type(op).__name__)
                op.error = Internal(f"internal error in {type(op).__name__}: {exc}")
                return True
        return False

    def _tentative(self, ops: Sequence[Op[Any]]) -> None:
        """Effects on the scheduler, before the commit (so decisions share it)."""
        s = self.scheduler
        for op in ops:
            out = op.outcome
            if out.freed:
                s.free(out.freed)
            if out.ended or out.finished:
                # Concurrency keys first, so a retried task queues behind its own release.
                s.release(
                    [task_holder(t) for t in out.ended] + [run_holder(d.id) for d in out.finished]
                )
            if out.cancelled:
                s.remove(out.cancelled)
            if out.queued:
                s.enqueue(out.queued)

    async def _refill(self) -> None:
        """Bring queues that run low back up from the store (reads, before the write)."""
        for refill in self.scheduler.refills():
            try:
                rows = await self.store.tasks_queued_page(refill)
                await self.versions.ensure(self.store, {r.version_id for r in rows})
            except StoreError as exc:
                logger.warning("could not refill queue %s: %s", refill.action_id, exc)
                return
            items = [
                queued_item(
                    r.task,
                    self.versions.cache[r.version_id].step(r.task.readable_id),
                    r.sticky,
                    r.sticky_worker_id,
                    r.run_labels,
                )
                for r in rows
            ]
            self.scheduler.refilled(refill, items)

    async def _rebuild(self) -> None:
        try:
            await self.hooks.rebuild()
        except Exception:
            logger.exception("could not rebuild the scheduler; retrying on the next turn")


class _Retry(Exception):
    pass


def _resolve(op: Op[Any], future: asyncio.Future[Any]) -> None:
    if future.done():
        return
    if op.error is not None:
        future.set_exception(op.error)
    else:
        future.set_result(op.result)


def _report_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.critical("engine loop died; nothing will be written", exc_info=exc)


def run_holder(run_id: str) -> str:
    """Concurrency holder names: a one-task run shares its id with its task, so the two
    kinds of holder are kept apart by prefix."""
    return f"run:{run_id}"


def task_holder(task_id: str) -> str:
    return f"task:{task_id}"


def holder_target(holder: str) -> str:
    """The run or task id a holder name stands for."""
    return holder.split(":", 1)[1]


OnCommit = Callable[[Sequence[Op[Any]], list[DispatchInfo]], None]
