"""``EngineCore``: the engine's domain, no transport. It supervises the components and is
what the transports (gRPC, REST) call, with a tenant id they have already authenticated.

- :mod:`~hewer.engine.core.loop`: the one writer (group commit) and the scheduler's owner;
- :mod:`~hewer.engine.core.transitions`: the task state machine, as operations;
- :mod:`~hewer.engine.core.sessions`: workers, their streams, heartbeats and liveness;
- :mod:`~hewer.engine.core.ingest` and :mod:`~hewer.engine.core.workflows`: triggers and
  registrations;
- :mod:`~hewer.engine.core.sweeps`: timeouts and rescues;
- :mod:`~hewer.engine.core.subscriptions`: who waits for which run.

Every component follows one contract: ``start()``, ``stop(grace)`` (idempotent), and
``async with``; ``EngineCore`` starts them in order and stops them in reverse.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Collection, Coroutine, Sequence
from typing import Any, TypeVar

from hewer import defaults
from hewer.domain import (
    ConcurrencySpec,
    ConditionSpec,
    CronRecord,
    DispatchInfo,
    EventOutcome,
    EventRecord,
    EventType,
    FilterRecord,
    IdempotencySpec,
    LogLine,
    RateLimitRecord,
    RunDetails,
    RunFilter,
    RunningTask,
    RunRow,
    ScheduleRecord,
    StickyStrategy,
    TaskDef,
    TaskEvent,
    TaskRow,
    TaskStatus,
    WorkerRecord,
    Workflow,
    metadata_object,
)
from hewer.engine.core import conditions, durable, stats
from hewer.engine.core.auth import Principal
from hewer.engine.core.clock import Clock
from hewer.engine.core.component import Component
from hewer.engine.core.durable_hub import DurableHub, DurableStream
from hewer.engine.core.durable_hub import Message as DurableMessage
from hewer.engine.core.ingest import (
    Ingest,
    TriggerSpec,
    check_rate_limit_put,
    json_object_text,
)
from hewer.engine.core.loop import EngineLoop, holder_target
from hewer.engine.core.scheduler import Scheduler
from hewer.engine.core.scopes import Scope
from hewer.engine.core.sessions import (
    Action,
    ActionKind,
    FailedPrecondition,
    Session,
    Sessions,
    WorkerView,
)
from hewer.engine.core.subscriptions import StreamEvent, Subscriptions
from hewer.engine.core.sweeps import Sweeps
from hewer.engine.core.transitions import (
    Cancel,
    DropAttempts,
    Judged,
    Op,
    PutLogs,
    RefreshTimeout,
    ReleaseSlot,
    Report,
    Requeue,
    details,
)
from hewer.engine.core.triggers import EventSpec, Triggers, check_cron
from hewer.engine.core.versions import Versions
from hewer.engine.core.workflows import Workflows
from hewer.errors import HewerError, InvalidInput, NotFound, PermissionDenied
from hewer.store import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "Action",
    "ActionKind",
    "EngineCore",
    "EventSpec",
    "FailedPrecondition",
    "Session",
    "StreamEvent",
    "TriggerSpec",
    "WorkerView",
]


# How long a checked (task, token) pair is trusted before its task's worker is read again.
TASK_CALLER_TTL_S = 2.0
# Room an assignment needs beside a run's input and metadata (ids, names, envelope).
ASSIGNMENT_RESERVE_BYTES = 8 * 1024
# Generations of child runs a cancel follows down (a cycle cannot form: a child is newer
# than its parent; the bound only keeps a pathological tree from running on).
MAX_CHILD_DEPTH = 100


class EngineCore(Component):
    """Domain operations; one instance per engine process."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        inactive_after: float = defaults.INACTIVE_AFTER_S,
        reaper_interval: float | None = None,
        max_reassignments: int | None = defaults.MAX_REASSIGNMENTS,
        max_message_bytes: int | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.inactive_after = inactive_after
        self.max_reassignments = max_reassignments
        # Often enough that a silent worker is declared lost within its window + 0.5 s.
        self.reaper_interval = reaper_interval or max(0.05, min(inactive_after / 6, 0.5))
        self.versions = Versions()
        self.scheduler = Scheduler(clock, self._cancel_for_scheduler, self._wake_loop)
        self.loop = EngineLoop(
            store, clock, self.scheduler, self.versions, self, max_reassignments=max_reassignments
        )
        self.sessions = Sessions(
            store,
            clock,
            self.loop,
            self.scheduler,
            inactive_after=inactive_after,
            spawn=self._spawn,
        )
        self.workflows = Workflows(store, clock, self.versions)
        self._rate_limits: dict[tuple[str, str], RateLimitRecord] = {}
        self.max_message_bytes = max_message_bytes
        self.ingest = Ingest(
            self.loop,
            self.workflows,
            self._rate_limits,
            self.sessions.actions_of,
            None if max_message_bytes is None else max_message_bytes - ASSIGNMENT_RESERVE_BYTES,
        )
        self.triggers = Triggers(store, clock, self.loop, self.ingest, self.workflows)
        self.subscriptions = Subscriptions(store, self._spawn)
        self.sweeps = Sweeps(
            store, clock, self.loop, self.sessions, self.cancel, inactive_after=inactive_after
        )
        self.durable = DurableHub(store, self.loop, self._spawn, self._task)
        self._background: set[asyncio.Task[Any]] = set()
        self._task_callers: dict[tuple[str, str], float] = {}
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.sessions.start()
        for limit in await self.store.rate_limits_list():
            self._rate_limits[(limit.tenant_id, limit.key)] = limit
        await self.rebuild()
        await self.loop.start()
        # Tasks held by workers that were already gone when we stopped: give them back.
        running = await self.store.tasks_running()
        orphans = [
            Judged(t.tenant_id, t.id, t.retry_count, t.worker_id or "")
            for t, _ in running
            if t.worker_id not in self.sessions.workers and not t.slot_released
        ]
        if orphans:
            await self.loop.run(Requeue("worker was gone at engine start", attempts=orphans))
        gone = {
            a.worker_id
            for a, _, _ in await self.store.attempts_holding()
            if a.worker_id not in self.sessions.workers
        }
        for worker_id in gone:
            await self.loop.run(DropAttempts(worker_id))
        self.sweeps.every(self.reaper_interval, self.reap)
        await self.sweeps.start()
        await self.triggers.start()
        self._spawn(self.durable.recheck_evicted(), "durable-recheck")

    async def rebuild(self) -> None:
        """Build the scheduler's state from the store and the workers in memory (at start,
        and after a commit failed with its effects already applied)."""
        s = self.scheduler
        s.reset()
        self.sessions.scheduler_workers()
        s.hold_gates(await self.store.gates_held())
        for limit in self._rate_limits.values():
            s.set_rate_limit(limit.tenant_id, limit.key, limit.limit, limit.duration_s)
        known = self.sessions.workers
        running = await self.store.tasks_running()
        holding = await self.store.attempts_holding()
        await self.versions.ensure(self.store, {v for _, v in running} | {v for _, _, v in holding})
        held: list[RunningTask] = []
        for t, version in running:
            if t.worker_id in known and not t.slot_released:
                tdef = self.versions.cache[version].step(t.readable_id)
                held.append(
                    RunningTask(t.id, t.worker_id or "", t.retry_count, tdef.slot_requests, False)
                )
        for a, t, version in holding:
            if a.worker_id in known:
                tdef = self.versions.cache[version].step(t.readable_id)
                held.append(
                    RunningTask(t.id, a.worker_id, a.retry_count, tdef.slot_requests, False)
                )
        s.hold(held)
        s.mark_backlog(await self.store.queue_keys())
        # A failed commit may have been made after all (lost on the way back): whoever
        # waits for a run it finished must still hear of it.
        self.subscriptions.recheck()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop the sweeps, close the streams, then write what is pending (for at most
        ``grace`` seconds) and stop the loop."""
        if not self._started:
            return
        self._started = False
        await self.triggers.stop()
        await self.sweeps.stop()
        await self.sessions.stop()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.loop.stop(grace)
        await self.subscriptions.stop()

    def _spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.log(
                logging.ERROR if not isinstance(exc, HewerError) else logging.DEBUG,
                "background task %s failed",
                task.get_name(),
                exc_info=exc,
            )

    async def settled(self) -> None:
        """Wait until every write in flight and every follow-up it caused has landed."""
        for _ in range(3):
            while self._background:
                await asyncio.gather(*list(self._background), return_exceptions=True)
            await self.loop.settled()

    def _wake_loop(self) -> None:
        self.loop.wake()

    # ------------------------------------------------------------------ loop hooks

    def keepers(self) -> frozenset[str]:
        return self.sessions.keepers

    def committed(self, ops: Sequence[Op[Any]], dispatched: list[DispatchInfo]) -> None:
        finished: list[RunDetails] = []
        satisfied: list[tuple[str, str]] = []
        children: list[durable.ChildDone] = []
        for op in ops:
            out = op.outcome
            for held in out.stop:
                self.sessions.send_cancel(held)
            finished.extend(out.finished)
            satisfied.extend(out.durable)
            children.extend(durable.ChildDone.of(p, d) for p, d in out.children_done)
        if finished:
            self.subscriptions.finished(finished)
        if satisfied:
            self.durable.satisfied(satisfied)
        if children:
            self._spawn(self.durable.children_done(children), "durable-children")
        if dispatched:
            self.sessions.dispatch(dispatched)

    # ------------------------------------------------------------------ workflows and runs

    async def put_workflow(
        self,
        tenant_id: str,
        name: str,
        tasks: Sequence[TaskDef],
        default_priority: int | None,
        sticky: StickyStrategy | None = None,
        concurrency: Sequence[ConcurrencySpec] = (),
        event_triggers: Sequence[str] = (),
        cron_triggers: Sequence[str] = (),
        cron_input: str | None = None,
        idempotency: IdempotencySpec | None = None,
        default_filters: Sequence[tuple[str, str, str | None]] = (),
    ) -> Workflow:
        for key in event_triggers:
            if not key.strip():
                raise InvalidInput(f"workflow {name!r}: an event trigger must not be empty")
        crons = [check_cron(c) for c in cron_triggers]
        if cron_input is not None:
            cron_input = json_object_text(cron_input, "cron_input")
        workflow = await self.workflows.put(
            tenant_id,
            name,
            tasks,
            default_priority,
            sticky,
            concurrency,
            event_triggers,
            crons,
            cron_input,
            idempotency,
            [(e, s, json_object_text(p, "default filter payload")) for e, s, p in default_filters],
        )
        await self.triggers.declare_crons(workflow)
        await self.triggers.declare_filters(workflow)
        return workflow

    async def workflow(self, tenant_id: str, name: str) -> Workflow:
        """The current version of a workflow (NotFound if the tenant has none of that name)."""
        return await self.workflows.current(tenant_id, name)

    async def trigger(self, tenant_id: str, specs: Sequence[TriggerSpec]) -> list[str]:
        """Create runs durably, then queue their root tasks; returns run ids in order."""
        return await self.ingest.trigger(tenant_id, specs)

    # ------------------------------------------------------------------ events, schedules, crons

    async def push_events(self, tenant_id: str, specs: Sequence[EventSpec]) -> list[EventRecord]:
        """Store events with the runs they trigger."""
        return await self.triggers.push(tenant_id, specs)

    async def filter_put(
        self,
        tenant_id: str,
        workflow_id: str,
        scope: str,
        expression: str,
        payload: str | None = None,
        filter_id: str | None = None,
    ) -> FilterRecord:
        """Create an event filter of a workflow (given ``filter_id``: change that one)."""
        return await self.triggers.filter_put(
            tenant_id, workflow_id, scope, expression, payload, filter_id
        )

    async def filters_list(
        self,
        tenant_id: str,
        workflow_ids: Collection[str] | None,
        scopes: Collection[str] | None,
        limit: int,
        offset: int,
    ) -> list[FilterRecord]:
        return await self.store.filters_list(tenant_id, workflow_ids, scopes, limit, offset)

    async def filter_get(self, tenant_id: str, filter_id: str) -> FilterRecord:
        return await self.triggers.filter_get(tenant_id, filter_id)

    async def filter_delete(self, tenant_id: str, filter_id: str) -> FilterRecord:
        return await self.triggers.filter_delete(tenant_id, filter_id)

    async def workflows_list(self, tenant_id: str) -> list[Workflow]:
        """The current version of every workflow of the tenant, by name."""
        return await self.store.workflows_current(tenant_id)

    async def events_list(
        self, tenant_id: str, keys: Collection[str] | None, limit: int, offset: int
    ) -> list[EventRecord]:
        return await self.store.events_list(tenant_id, keys, limit, offset)

    async def event_get(self, tenant_id: str, event_id: str) -> EventRecord:
        found = await self.store.event_get(tenant_id, event_id)
        if found is None:
            raise NotFound(f"event {event_id!r} not found")
        return found

    async def schedule_runs(
        self,
        tenant_id: str,
        workflow_name: str,
        times: Sequence[float],
        input: str,
        additional_metadata: str | None = None,
        priority: int | None = None,
    ) -> list[ScheduleRecord]:
        """Runs of ``workflow_name`` to start once at each of ``times``."""
        return await self.triggers.schedule(
            tenant_id, workflow_name, times, input, additional_metadata, priority
        )

    async def schedules_list(
        self, tenant_id: str, workflow_name: str | None, limit: int, offset: int
    ) -> list[ScheduleRecord]:
        return await self.store.schedules_list(tenant_id, workflow_name, limit, offset)

    async def schedule_get(self, tenant_id: str, schedule_id: str) -> ScheduleRecord:
        return await self.triggers.schedule_get(tenant_id, schedule_id)

    async def schedule_delete(self, tenant_id: str, schedule_id: str) -> None:
        await self.triggers.schedule_delete(tenant_id, schedule_id)

    async def schedule_move(self, tenant_id: str, schedule_id: str, trigger_at: float) -> None:
        """A new time for a scheduled run that has not fired (FailedPrecondition if it has)."""
        await self.triggers.schedule_move(tenant_id, schedule_id, trigger_at)

    async def cron_create(
        self,
        tenant_id: str,
        workflow_name: str,
        name: str,
        expression: str,
        input: str,
        additional_metadata: str | None = None,
        priority: int | None = None,
    ) -> CronRecord:
        return await self.triggers.cron_create(
            tenant_id, workflow_name, name, expression, input, additional_metadata, priority
        )

    async def crons_list(
        self,
        tenant_id: str,
        workflow_name: str | None,
        limit: int,
        offset: int,
        name: str | None = None,
    ) -> list[CronRecord]:
        return await self.store.crons_list(tenant_id, workflow_name, limit, offset, name)

    async def cron_get(self, tenant_id: str, cron_id: str) -> CronRecord:
        return await self.triggers.cron_get(tenant_id, cron_id)

    async def cron_delete(self, tenant_id: str, cron_id: str) -> None:
        await self.triggers.cron_delete(tenant_id, cron_id)

    async def put_rate_limit(
        self, tenant_id: str, key: str, limit: int, duration_s: float
    ) -> RateLimitRecord:
        """Declare a static rate limit: ``limit`` units per ``duration_s``."""
        check_rate_limit_put(key, limit, duration_s)
        record = RateLimitRecord(tenant_id, key, limit, duration_s)
        await self.store.rate_limit_put(record, self.clock.now())
        self._rate_limits[(tenant_id, key)] = record
        self.scheduler.set_rate_limit(tenant_id, key, limit, duration_s)
        return record

    async def run_details(self, tenant_id: str, run_id: str) -> RunDetails:
        found = await self.store.run_get(tenant_id, run_id)
        if found is None:
            raise NotFound(f"run {run_id!r} not found")
        return details(*found)

    async def workflow_version(self, tenant_id: str, version_id: str) -> Workflow | None:
        """The definition a run was created with (None if the tenant has no such version)."""
        await self.versions.ensure(self.store, [version_id])
        found = self.versions.cache.get(version_id)
        return found if found is not None and found.tenant_id == tenant_id else None

    async def runs(
        self, tenant_id: str, run_ids: Collection[str]
    ) -> list[tuple[RunRow, list[TaskRow]]]:
        """Those of ``run_ids`` the tenant has, each with its tasks."""
        return await self.store.runs_get(tenant_id, run_ids) if run_ids else []

    def watch_run(
        self,
        tenant_id: str,
        run_id: str,
        callback: Any,
        on_missing: Any = None,
    ) -> Any:
        """Call ``callback`` once with the run's details when it is done (at once if it is);
        ``on_missing`` instead if the tenant has no such run. Returns an unwatch function."""
        return self.subscriptions.watch(tenant_id, run_id, callback, on_missing)

    async def put_stream_event(
        self, tenant_id: str, task_id: str, data: bytes, index: int | None
    ) -> None:
        run_id = await self.store.task_run_id(tenant_id, task_id)
        if run_id is None:
            raise NotFound(f"task {task_id!r} not found")
        self.subscriptions.put_stream(
            tenant_id, StreamEvent(run_id, task_id, data, index, self.clock.now())
        )

    async def subscribe_stream(
        self, tenant_id: str, run_id: str
    ) -> tuple[asyncio.Queue[StreamEvent | None], Any]:
        return await self.subscriptions.subscribe_stream(tenant_id, run_id)

    async def cancel(self, tenant_id: str, ids: Sequence[str], reason: str) -> list[str]:
        """Cancel runs or tasks by id, and the unfinished child runs of every task that was
        cancelled (all the way down); returns the ids of the tasks cancelled."""
        outcome = await self.loop.run(Cancel(tenant_id, ids, reason))
        cancelled = list(outcome.cancelled)
        parents = cancelled
        for _ in range(MAX_CHILD_DEPTH):
            children = await self.store.runs_children(tenant_id, parents) if parents else []
            if not children:
                break
            below = await self.loop.run(Cancel(tenant_id, children, "parent task was cancelled"))
            parents = list(below.cancelled)
            cancelled.extend(parents)
        return cancelled

    def _cancel_for_scheduler(self, tenant_id: str, holders: list[str], reason: str) -> None:
        """A concurrency strategy decided to cancel runs or tasks (the scheduler cannot wait
        for the store itself)."""
        targets = [holder_target(h) for h in holders]
        self._spawn(self.cancel(tenant_id, targets, reason), "concurrency-cancel")

    async def cancel_matching(self, tenant_id: str, match: RunFilter, reason: str) -> list[str]:
        """Cancel every run of the tenant that matches; returns the cancelled task ids."""
        run_ids = await self.store.runs_find(tenant_id, match)
        return await self.cancel(tenant_id, run_ids, reason) if run_ids else []

    # ------------------------------------------------------------------ task reports

    async def task_event(self, event: TaskEvent) -> EventOutcome:
        """Apply a worker's report; fenced on (task, attempt, worker, tenant)."""
        return (await self.task_events([event]))[0]

    async def task_events(self, events: Sequence[TaskEvent]) -> list[EventOutcome]:
        """Apply many reports (in one transaction when they arrive together)."""
        futures = []
        for event in events:
            self.sessions.acknowledged(event.task_id, event.retry_count)
            futures.append(self.loop.submit(Report(event)))
        outcomes = await asyncio.shield(asyncio.gather(*futures))
        for event, outcome in zip(events, outcomes, strict=True):
            if not outcome.applied and event.type is not EventType.STARTED:
                # A late STARTED (after its own COMPLETED) is the no-op it is; say nothing.
                logger.info(
                    "ignored %s for task %s attempt %d from worker %s: %s",
                    event.type,
                    event.task_id,
                    event.retry_count,
                    event.worker_id,
                    outcome.reason,
                )
        return outcomes

    async def release_slot(self, tenant_id: str, task_id: str) -> None:
        await self.loop.run(ReleaseSlot(tenant_id, task_id))

    async def refresh_timeout(self, tenant_id: str, task_id: str, seconds: float) -> float:
        if seconds <= 0 or not math.isfinite(seconds):
            raise InvalidInput("timeout increment must be positive")
        return await self.loop.run(RefreshTimeout(tenant_id, task_id, seconds))

    async def put_logs(self, tenant_id: str, lines: Sequence[LogLine]) -> None:
        await self.loop.run(PutLogs(tenant_id, lines))

    # ------------------------------------------------------------------ workers

    async def register_worker(
        self,
        tenant_id: str,
        name: str,
        actions: Sequence[str],
        slot_config: dict[str, int],
        labels: dict[str, str | int],
        runtime_info: dict[str, object],
        owner_token: str | None = None,
    ) -> WorkerRecord:
        """Register a worker; only callers with ``owner_token`` (the id of the token it
        registered with) may then act as it (:meth:`check_worker_caller`)."""
        return await self.sessions.register(
            tenant_id, name, actions, slot_config, labels, runtime_info, owner_token
        )

    async def check_run_readers(
        self, tenant_id: str, run_ids: Collection[str], who: Principal
    ) -> None:
        """A worker token reads only the runs its own tasks spawned (their parent task was
        assigned to a worker registered with that token); other tokens that may read, read
        every run of their tenant. Unknown runs pass (they are answered as not found)."""
        if who.scope is not Scope.WORKER or not run_ids:
            return
        for run, _ in await self.store.runs_get(tenant_id, run_ids):
            if run.parent_task_id is None:
                raise PermissionDenied(
                    f"a worker token reads only the runs its tasks spawned; {run.id!r} was "
                    "not spawned by a task"
                )
            await self.check_task_caller(tenant_id, run.parent_task_id, who)

    async def check_spawn(self, tenant_id: str, parent_task_id: str, who: Principal) -> None:
        """A worker token may trigger a run only as the child of a task running on one of
        its own workers (PermissionDenied otherwise)."""
        task = await self._task(tenant_id, parent_task_id)
        if task is None or task.status is not TaskStatus.RUNNING or task.worker_id is None:
            raise PermissionDenied(
                f"a worker token may trigger only child runs of a task it runs; "
                f"{parent_task_id!r} is not running"
            )
        await self.check_worker_caller(tenant_id, task.worker_id, who)

    async def check_task_caller(self, tenant_id: str, task_id: str, who: Principal) -> None:
        """Calls about one task's attempt (release its slot, extend its timeout, log, stream)
        come from the token of the worker it was assigned to. A positive answer is kept
        for TASK_CALLER_TTL_S, so a chatty task costs one lookup per window."""
        key = (task_id, who.token_id)
        now = self.clock.monotonic()
        if self._task_callers.get(key, 0.0) > now:
            return
        task = await self._task(tenant_id, task_id)
        if task is None:
            raise NotFound(f"task {task_id!r} not found")
        if task.worker_id is None:
            raise PermissionDenied(f"task {task_id!r} was never assigned to a worker")
        await self.check_worker_caller(tenant_id, task.worker_id, who)
        if len(self._task_callers) > 100_000:
            self._task_callers.clear()
        self._task_callers[key] = now + TASK_CALLER_TTL_S

    async def _task(self, tenant_id: str, task_id: str) -> TaskRow | None:
        run_id = await self.store.task_run_id(tenant_id, task_id)
        found = await self.store.run_get(tenant_id, run_id) if run_id is not None else None
        return next((t for t in found[1] if t.id == task_id), None) if found else None

    async def check_worker_caller(self, tenant_id: str, worker_id: str, who: Principal) -> None:
        """Raise PermissionDenied unless the caller's token is the one the worker registered
        with (NotFound for a worker the tenant does not have)."""
        await self.sessions.check_caller(tenant_id, worker_id, who.token_id, who.scope)

    async def open_session(self, tenant_id: str, worker_id: str) -> Session:
        """Make a new session the worker's action stream (replacing an older one)."""
        task = self._spawn(self.sessions.open(tenant_id, worker_id), "open-session")
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The caller went away: whatever the session became, it is closed again.
            task.add_done_callback(
                lambda t: (
                    self.sessions.close(t.result())
                    if not t.cancelled() and t.exception() is None
                    else None
                )
            )
            raise

    def close_session(self, session: Session) -> None:
        self.sessions.close(session)

    # ------------------------------------------------------------------ durable tasks

    def durable_open(
        self, tenant_id: str, worker_id: str, send: Callable[[DurableMessage], None]
    ) -> DurableStream:
        return self.durable.open(tenant_id, worker_id, send)

    def durable_close(self, stream: DurableStream) -> None:
        self.durable.close(stream)

    async def durable_wait_for(
        self,
        stream: DurableStream,
        task_id: str,
        invocation: int,
        specs: Sequence[ConditionSpec],
        label: str | None,
    ) -> int:
        """A durable wait on sleeps and events; returns its node."""
        conditions.check(task_id, specs, ())
        recent: list[conditions.ArrivedEvent] = []
        since = {
            c.event_key: c.events_since
            for c in specs
            if c.events_since is not None and c.event_key is not None
        }
        if since:
            # Events pushed before the wait that it considers (a lookback window).
            earliest = min(since.values())
            for e in await self.store.events_list(stream.tenant_id, list(since), 1000, 0):
                if e.created_at >= earliest:
                    recent.append(
                        conditions.ArrivedEvent(
                            e.key,
                            json.loads(e.payload),
                            metadata_object(e.additional_metadata),
                            e.scope,
                            e.created_at,
                        )
                    )
            recent.reverse()  # oldest first: the first match is the one kept
        op = durable.WaitFor(
            stream.tenant_id, stream.worker_id, task_id, invocation, specs, label, recent
        )
        node: int = await self.loop.run(op)
        return node

    def durable_memo(
        self, stream: DurableStream, task_id: str, invocation: int, key: bytes
    ) -> asyncio.Future[durable.MemoAck]:
        op = durable.Memo(stream.tenant_id, stream.worker_id, task_id, invocation, key)
        return self.loop.submit(op)

    def durable_complete_memo(
        self,
        stream: DurableStream,
        task_id: str,
        invocation: int,
        node: int,
        key: bytes,
        payload: bytes,
    ) -> asyncio.Future[None]:
        op = durable.CompleteMemo(
            stream.tenant_id, stream.worker_id, task_id, invocation, node, key, payload
        )
        return self.loop.submit(op)

    async def durable_trigger(
        self, stream: DurableStream, task_id: str, invocation: int, specs: Sequence[TriggerSpec]
    ) -> list[tuple[int, str]]:
        """Child runs spawned by a durable task: (node, run id) of each, in order."""
        tenant_id = stream.tenant_id
        parent = await self._task(tenant_id, task_id)
        if parent is None:
            raise NotFound(f"task {task_id!r} not found")
        runs = []
        for i, spec in enumerate(specs):
            links = spec.links
            # Whatever the request says, a durable task's children are its own.
            spec = dataclasses.replace(
                spec,
                links=dataclasses.replace(
                    links,
                    parent_run_id=parent.run_id,
                    parent_task_id=task_id,
                    child_index=links.child_index if links.child_index is not None else i,
                ),
            )
            wf = await self.workflows.current(tenant_id, spec.workflow_name)
            runs.append(self.ingest.new_run(tenant_id, wf, spec))
        op = durable.TriggerChildren(tenant_id, stream.worker_id, task_id, invocation, runs)
        result: list[tuple[int, str]] = await self.loop.run(op)
        return result

    async def durable_evict(self, stream: DurableStream, task_id: str, invocation: int) -> None:
        op = durable.Evict(stream.tenant_id, stream.worker_id, task_id, invocation)
        await self.loop.run(op)

    def durable_waiting(
        self, stream: DurableStream, entries: Sequence[tuple[str, int, int]]
    ) -> None:
        self.durable.wait_on(stream, entries)

    async def heartbeat(self, tenant_id: str, worker_id: str) -> None:
        await self.sessions.heartbeat(tenant_id, worker_id)

    async def unsubscribe(self, tenant_id: str, worker_id: str) -> None:
        await self._shielded(self.sessions.unsubscribe(tenant_id, worker_id), "unsubscribe")

    async def upsert_labels(
        self, tenant_id: str, worker_id: str, labels: dict[str, str | int]
    ) -> None:
        await self.sessions.upsert_labels(tenant_id, worker_id, labels)

    async def set_paused(self, tenant_id: str, worker_id: str, paused: bool) -> WorkerView:
        """Pause (no new tasks; running ones go on) or resume a live worker."""
        await self._shielded(self.sessions.set_paused(tenant_id, worker_id, paused), "pause")
        return await self.worker_view(tenant_id, worker_id)

    async def _shielded(self, coro: Coroutine[Any, Any, T], name: str) -> T:
        """Run a multi-step change to its end even if the caller goes away."""
        return await asyncio.shield(self._spawn(coro, name))

    # ------------------------------------------------------------------ metrics reads

    async def task_stats(
        self, tenant_id: str, names: Collection[str] | None
    ) -> dict[str, stats.TaskStat]:
        return await stats.task_stats(self.store, tenant_id, names)

    async def task_counts(
        self, tenant_id: str, since: float | None, until: float | None, workflows: Collection[str]
    ) -> dict[str, int]:
        return await stats.task_counts(self.store, tenant_id, since, until, workflows)

    async def queue_depths(self, tenant_id: str) -> dict[str, int]:
        """Queued tasks per queue (action id)."""
        depths: dict[str, int] = {}
        for row in await self.store.task_stats(tenant_id, None):
            if row.status == TaskStatus.QUEUED:
                depths[row.queue] = depths.get(row.queue, 0) + row.count
        return dict(sorted(depths.items()))

    async def workers_view(self, tenant_id: str) -> list[WorkerView]:
        """Every worker of the tenant, newest last, with live slot usage."""
        usage = self.scheduler.usage()
        return [self.sessions.view(r, usage) for r in await self.store.workers_list(tenant_id)]

    async def worker_view(self, tenant_id: str, worker_id: str) -> WorkerView:
        record = await self.store.worker_get(tenant_id, worker_id)
        if record is None:
            raise NotFound(f"worker {worker_id!r} not found")
        return self.sessions.view(record, self.scheduler.usage())

    # ------------------------------------------------------------------ reaper

    async def reap(self) -> list[str]:
        """Declare silent workers INACTIVE and re-queue their tasks; returns their ids."""
        return await self._shielded(self.sessions.reap(), "reap")

    async def expire(self) -> int:
        """Time-based endings (see :mod:`~hewer.engine.core.sweeps`)."""
        return await self.sweeps.expire()
