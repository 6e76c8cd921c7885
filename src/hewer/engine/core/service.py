"""The engine's domain logic: runs, tasks, workers and their sessions. No transport here.

Transports (gRPC, later REST) call :class:`EngineCore` with a tenant id they have already
authenticated; every lookup below is scoped to that tenant.

Liveness is judged on the engine's clock, in memory: after a restart every known worker
starts with a fresh ``inactive_after`` window, as if it had just sent a heartbeat.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Generic, TypeVar

from hewer.domain import (
    ConcurrencySpec,
    DesiredLabel,
    DispatchInfo,
    EventOutcome,
    GateClaim,
    LogLine,
    NewRun,
    RateClaim,
    RateLimitRecord,
    RateLimitSpec,
    RunDetails,
    RunFilter,
    RunningTask,
    StickyStrategy,
    TaskDef,
    TaskEvent,
    WorkerRecord,
    WorkerStatus,
    Workflow,
)
from hewer.engine.core import cel
from hewer.engine.core.clock import Clock
from hewer.engine.core.scheduler import Scheduler, WorkerSlots, worker_slots
from hewer.errors import HewerError, InvalidInput, NotFound
from hewer.store import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

MIN_PRIORITY, MAX_PRIORITY = 1, 3
# A task whose worker is lost this many times fails (a poison task must not crash workers
# forever); 0 fails it on the first loss, None never gives up.
DEFAULT_MAX_REASSIGNMENTS = 3
# Time-based endings are swept in batches; one tick handles up to MAX_SWEEPS of them.
SWEEP_BATCH = 500
MAX_SWEEPS = 20


class FailedPrecondition(HewerError):
    """The call is valid but the target is not in a state to accept it."""


class ActionKind(Enum):
    START = "start"
    CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class Action:
    """One message for a worker's action stream."""

    kind: ActionKind
    info: DispatchInfo | None = None
    task_id: str = ""
    retry_count: int = 0


class Session:
    """A worker's open action stream. The transport drains ``next()`` until it returns None."""

    def __init__(self, worker_id: str, tenant_id: str) -> None:
        self.worker_id = worker_id
        self.tenant_id = tenant_id
        self._queue: asyncio.Queue[Action | None] = asyncio.Queue()
        self.closed = False

    def send(self, action: Action) -> bool:
        if self.closed:
            return False
        self._queue.put_nowait(action)
        return True

    async def next(self) -> Action | None:
        if self.closed and self._queue.empty():
            return None
        return await self._queue.get()

    def close(self) -> list[DispatchInfo]:
        """Close and return the task starts that were never handed to the transport."""
        if self.closed:
            return []
        self.closed = True
        undelivered: list[DispatchInfo] = []
        while not self._queue.empty():
            action = self._queue.get_nowait()
            if action is not None and action.kind is ActionKind.START and action.info:
                undelivered.append(action.info)
        self._queue.put_nowait(None)
        return undelivered


@dataclass(slots=True)
class _WorkerState:
    record: WorkerRecord
    status: WorkerStatus
    last_seen: float
    session: Session | None = None

    @property
    def reports_cancellation(self) -> bool:
        """Whether the worker's SDK says when a cancelled body really returned (Hewer's
        does; hatchet-sdk does not, so its slots are freed at cancel as upstream)."""
        extra = self.record.runtime_info.get("extra")
        if not isinstance(extra, str) or not extra:
            return False
        try:
            return bool(json.loads(extra).get("reports_cancellation"))
        except (ValueError, AttributeError):
            return False


@dataclass(frozen=True, slots=True)
class WorkerView:
    """A worker as the engine sees it now: stored record plus live slot usage."""

    record: WorkerRecord
    slots_used: dict[str, int]
    connected: bool

    @property
    def status(self) -> WorkerStatus:
        return self.record.status


@dataclass(frozen=True, slots=True)
class TriggerSpec:
    workflow_name: str
    input: str = ""
    additional_metadata: str | None = None
    priority: int | None = None
    desired_labels: tuple[DesiredLabel, ...] = ()
    desired_worker_id: str | None = None  # a sticky child run: start on this worker


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """A chunk a task streamed with ``put_stream``; ``None`` on a subscriber's queue = run done."""

    run_id: str
    task_id: str
    data: bytes
    index: int | None
    created_at: float


V = TypeVar("V")


class _ByRun(Generic[V]):
    """Subscribers per run id, each with the tenant it subscribed as."""

    def __init__(self) -> None:
        self._by_run: dict[str, list[tuple[str, V]]] = {}

    def add(self, run_id: str, tenant_id: str, value: V) -> Callable[[], None]:
        """Register; returns the function that unregisters (idempotent)."""
        entry = (tenant_id, value)
        self._by_run.setdefault(run_id, []).append(entry)

        def remove() -> None:
            entries = self._by_run.get(run_id)
            if entries and entry in entries:
                entries.remove(entry)
                if not entries:
                    del self._by_run[run_id]

        return remove

    def get(self, run_id: str, tenant_id: str | None = None) -> list[tuple[str, V]]:
        return [e for e in self._by_run.get(run_id, ()) if tenant_id in (None, e[0])]


class EngineCore:
    """Domain operations; one instance per engine process."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        inactive_after: float = 30.0,
        reaper_interval: float | None = None,
        max_reassignments: int | None = DEFAULT_MAX_REASSIGNMENTS,
    ) -> None:
        self.store = store
        self.clock = clock
        self.inactive_after = inactive_after
        self.max_reassignments = max_reassignments
        self.reaper_interval = reaper_interval or max(0.05, min(inactive_after / 6, 5.0))
        self.scheduler = Scheduler(store, clock, self._dispatch, self._cancel_for_scheduler)
        self._workers: dict[str, _WorkerState] = {}
        # The stream each unacknowledged start went out on (forgotten once acknowledged).
        self._sent_on: dict[tuple[str, int], Session] = {}
        self._started_at = 0.0
        self._rate_limits: dict[tuple[str, str], RateLimitRecord] = {}
        self._run_watchers: _ByRun[Callable[[RunDetails], None]] = _ByRun()
        self._streams: _ByRun[asyncio.Queue[StreamEvent | None]] = _ByRun()
        self._background: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # Every known worker starts with a fresh window, as if it had just sent a heartbeat.
        fresh = self.clock.monotonic()
        self._started_at = fresh
        for record in await self.store.workers_list():
            if record.status in (WorkerStatus.ACTIVE, WorkerStatus.PAUSED):
                self._workers[record.id] = _WorkerState(record, record.status, last_seen=fresh)
                self.scheduler.worker_up(
                    worker_slots(
                        record.id,
                        record.tenant_id,
                        record.actions,
                        record.slot_config,
                        record.labels,
                    )
                )
        self.scheduler.hold_gates(await self.store.gates_held())
        for limit in await self.store.rate_limits_list():
            self._rate_limits[(limit.tenant_id, limit.key)] = limit
            self.scheduler.set_rate_limit(limit.tenant_id, limit.key, limit.limit, limit.duration_s)
        holding = await self.store.attempts_holding()
        self.scheduler.hold(t for t in holding if t.worker_id in self._workers)
        # Tasks held by workers that were already gone when we stopped: give them back.
        running = await self.store.tasks_running()
        orphans = [t for t in running if t.worker_id not in self._workers and not t.slot_released]
        if orphans:
            await self._requeue(orphans, "worker was gone at engine start")
        for gone in {t.worker_id for t in holding if t.worker_id not in self._workers}:
            await self.store.worker_drop_attempts(gone, self.clock.now())
        self.scheduler.enqueue(await self.store.tasks_queued())
        self.scheduler.start()
        self._reaper = asyncio.create_task(self._reap_forever(), name="hewer-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        for state in self._workers.values():
            if state.session is not None:
                state.session.close()
        await self.scheduler.stop()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Errors of calls whose caller went away surface here; others reached the caller.
            logger.log(
                logging.ERROR if not isinstance(exc, HewerError) else logging.DEBUG,
                "background task %s failed",
                task.get_name(),
                exc_info=exc,
            )

    async def _finish(
        self,
        coro: Coroutine[Any, Any, T],
        name: str,
        on_abandon: Callable[[T], None] | None = None,
    ) -> T:
        """Run ``coro`` to its end even if the caller is cancelled (a client deadline or
        disconnect): a committed write must always be followed by its in-memory effects."""
        task = self._spawn(coro, name)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if on_abandon is not None:
                task.add_done_callback(
                    lambda t: (
                        on_abandon(t.result())
                        if not t.cancelled() and t.exception() is None
                        else None
                    )
                )
            raise

    # ------------------------------------------------------------------ workflows and runs

    async def put_workflow(
        self,
        tenant_id: str,
        name: str,
        tasks: Sequence[TaskDef],
        default_priority: int | None,
        sticky: StickyStrategy | None = None,
        concurrency: Sequence[ConcurrencySpec] = (),
    ) -> Workflow:
        if not name.strip():
            raise InvalidInput("workflow name must not be empty")
        if not tasks:
            raise InvalidInput(f"workflow {name!r} has no tasks")
        seen: set[str] = set()
        for t in tasks:
            if not t.readable_id or not t.action_id:
                raise InvalidInput(f"workflow {name!r}: every task needs a readable_id and action")
            if t.readable_id in seen:
                raise InvalidInput(f"workflow {name!r}: duplicate task {t.readable_id!r}")
            seen.add(t.readable_id)
            if t.retries < 0:
                raise InvalidInput(f"task {t.readable_id!r}: retries must be >= 0")
            if any(n <= 0 for n in t.slot_requests.values()):
                raise InvalidInput(f"task {t.readable_id!r}: slot requests must be positive")
            for label, value in (
                ("backoff_factor", t.backoff_factor),
                ("backoff_max", t.backoff_max_s),
            ):
                if value is not None and not (math.isfinite(value) and value > 0):
                    raise InvalidInput(f"task {t.readable_id!r}: {label} must be positive")
        for t in tasks:
            for p in t.parents:
                if p not in seen:
                    raise InvalidInput(f"task {t.readable_id!r}: unknown parent {p!r}")
        _check_acyclic(name, tasks)
        for spec in (*concurrency, *(c for t in tasks for c in t.concurrency)):
            _check_concurrency(spec)
        for t in tasks:
            for rate in t.rate_limits:
                _check_rate_limit(t.readable_id, rate)
        priority = default_priority or MIN_PRIORITY
        _check_priority(priority)
        return await self.store.workflow_upsert(
            tenant_id,
            name,
            tasks,
            priority,
            self.clock.now(),
            sticky=sticky,
            concurrency=concurrency,
        )

    async def trigger(self, tenant_id: str, specs: Sequence[TriggerSpec]) -> list[str]:
        """Create runs durably, then queue their root tasks; returns run ids in order."""
        return await self._finish(self._trigger(tenant_id, specs), "trigger")

    async def _trigger(self, tenant_id: str, specs: Sequence[TriggerSpec]) -> list[str]:
        workflows: dict[str, Workflow] = {}
        runs: list[NewRun] = []
        for spec in specs:
            wf = workflows.get(spec.workflow_name)
            if wf is None:
                found = await self.store.workflow_get_by_name(tenant_id, spec.workflow_name)
                if found is None:
                    raise NotFound(f"workflow {spec.workflow_name!r} not found")
                wf = workflows[spec.workflow_name] = found
            input_text = _json_object_text(spec.input, "input")
            meta = (
                _json_object_text(spec.additional_metadata, "additional_metadata")
                if spec.additional_metadata
                else None
            )
            priority = spec.priority if spec.priority else wf.default_priority
            _check_priority(priority)
            run_id = str(uuid.uuid4())
            # A one-task run shares its id with the task, so either id names both.
            task_ids = (
                (run_id,) if len(wf.tasks) == 1 else tuple(str(uuid.uuid4()) for _ in wf.tasks)
            )
            if spec.desired_worker_id is not None:
                self._check_sticky_child(tenant_id, wf, spec.desired_worker_id)
            gates = _gate_claims(tenant_id, wf, run_id, task_ids, input_text, meta)
            rates = self._rate_claims(tenant_id, wf, input_text, meta)
            runs.append(
                NewRun(
                    run_id,
                    wf,
                    input_text,
                    meta,
                    priority,
                    task_ids,
                    spec.desired_labels,
                    spec.desired_worker_id,
                    gates,
                    rates,
                )
            )
        queued = await self.store.runs_create(runs, self.clock.now())
        self.scheduler.enqueue(queued)
        return [r.id for r in runs]

    async def put_rate_limit(
        self, tenant_id: str, key: str, limit: int, duration_s: float
    ) -> RateLimitRecord:
        """Declare a static rate limit: ``limit`` units per ``duration_s``."""
        if not key.strip():
            raise InvalidInput("rate limit key must not be empty")
        if limit < 1:
            raise InvalidInput(f"rate limit {key!r}: limit must be at least 1")
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise InvalidInput(f"rate limit {key!r}: duration must be positive")
        record = RateLimitRecord(tenant_id, key, limit, duration_s)
        await self._finish(self.store.rate_limit_put(record, self.clock.now()), "rate-limit")
        self._rate_limits[(tenant_id, key)] = record
        self.scheduler.set_rate_limit(tenant_id, key, limit, duration_s)
        return record

    def _rate_claims(
        self, tenant_id: str, wf: Workflow, input_text: str, meta_text: str | None
    ) -> tuple[tuple[RateClaim, ...], ...]:
        """Each task's rate-limit units, keys and limits evaluated from the run's input."""
        if not any(t.rate_limits for t in wf.tasks):
            return ()
        data = json.loads(input_text)
        meta = json.loads(meta_text) if meta_text else {}

        def claim(spec: RateLimitSpec) -> RateClaim:
            units = spec.units if spec.units is not None else 1
            if spec.units_expr:
                units = cel.compile_expression(spec.units_expr).integer(data, meta)
            if units < 1:
                raise InvalidInput(f"rate limit units must be at least 1, got {units}")
            if spec.key_expr:
                key = cel.compile_expression(spec.key_expr).key(data, meta)
                limit = _limit_value(spec.limit_expr, data, meta)
                return RateClaim(key, units, limit, spec.duration_s)
            assert spec.key is not None
            if (tenant_id, spec.key) not in self._rate_limits:
                raise InvalidInput(
                    f"rate limit {spec.key!r} is not declared (PutRateLimit / "
                    "hw.rate_limits.put) for this tenant"
                )
            return RateClaim(spec.key, units, None, spec.duration_s)

        return tuple(tuple(claim(spec) for spec in t.rate_limits) for t in wf.tasks)

    def _check_sticky_child(self, tenant_id: str, wf: Workflow, worker_id: str) -> None:
        """A run may start on a given worker only if its workflow is sticky and that worker
        runs its tasks (as upstream requires for sticky child runs)."""
        if wf.sticky is None:
            raise InvalidInput(
                f"workflow {wf.name!r} cannot be sticky: it declares no sticky strategy"
            )
        state = self._workers.get(worker_id)
        if state is None or state.record.tenant_id != tenant_id:
            raise InvalidInput(f"sticky worker {worker_id!r} is not connected")
        missing = {t.action_id for t in wf.tasks} - set(state.record.actions)
        if missing:
            raise InvalidInput(
                f"workflow {wf.name!r} cannot be sticky to worker {worker_id!r}: it does not "
                f"run {sorted(missing)}"
            )

    async def run_details(self, tenant_id: str, run_id: str) -> RunDetails:
        details = await self.store.run_get(tenant_id, run_id)
        if details is None:
            raise NotFound(f"run {run_id!r} not found")
        return details

    def watch_run(
        self,
        tenant_id: str,
        run_id: str,
        callback: Callable[[RunDetails], None],
        on_missing: Callable[[], None] | None = None,
    ) -> Callable[[], None]:
        """Call ``callback`` once with the run's details when it is done (at once if it is);
        ``on_missing`` instead if the tenant has no such run. Returns an unwatch function.
        """
        fired = False

        def deliver(details: RunDetails) -> None:
            nonlocal fired
            if not fired and details.tenant_id == tenant_id:
                fired = True
                unwatch()
                callback(details)

        # Register before reading, so a run finishing in between is not missed.
        unwatch = self._run_watchers.add(run_id, tenant_id, deliver)

        async def check_now() -> None:
            details = await self.store.run_get(tenant_id, run_id)
            if details is None:
                unwatch()
                if on_missing is not None:
                    on_missing()
            elif details.done:
                deliver(details)

        self._spawn(check_now(), f"watch-{run_id}")
        return unwatch

    async def _notify_finished(self, run_ids: Sequence[str]) -> None:
        for run_id in run_ids:
            try:
                await self._notify_one(run_id)
            except Exception:
                logger.exception("could not notify waiters of run %s", run_id)

    async def _notify_one(self, run_id: str) -> None:
        for _, queue in self._streams.get(run_id):
            queue.put_nowait(None)
        watchers = self._run_watchers.get(run_id)
        details: dict[str, RunDetails | None] = {}
        for tenant_id, deliver in watchers:
            if tenant_id not in details:
                details[tenant_id] = await self.store.run_get(tenant_id, run_id)
            found = details[tenant_id]
            if found is not None:
                deliver(found)

    async def put_stream_event(
        self, tenant_id: str, task_id: str, data: bytes, index: int | None
    ) -> None:
        run_id = await self.store.task_run_id(tenant_id, task_id)
        if run_id is None:
            raise NotFound(f"task {task_id!r} not found")
        event = StreamEvent(run_id, task_id, data, index, self.clock.now())
        for _, queue in self._streams.get(run_id, tenant_id):
            queue.put_nowait(event)

    async def subscribe_stream(
        self, tenant_id: str, run_id: str
    ) -> tuple[asyncio.Queue[StreamEvent | None], Callable[[], None]]:
        """A queue of the run's stream events, ending with None once the run is done."""
        queue: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
        # Register before reading, so a run finishing in between still ends the stream.
        unsubscribe = self._streams.add(run_id, tenant_id, queue)
        try:
            details = await self.run_details(tenant_id, run_id)
        except BaseException:
            unsubscribe()
            raise
        if details.done:
            queue.put_nowait(None)
        return queue, unsubscribe

    async def cancel(self, tenant_id: str, ids: Sequence[str], reason: str) -> list[str]:
        """Cancel runs or tasks by id; returns the ids of the tasks cancelled."""
        return await self._finish(self._cancel(tenant_id, ids, reason), "cancel")

    async def _cancel(self, tenant_id: str, ids: Sequence[str], reason: str) -> list[str]:
        outcome = await self.store.tasks_cancel(
            tenant_id, ids, reason, self.clock.now(), self._slot_keepers()
        )
        self.scheduler.remove(outcome.cancelled)
        self._after(outcome)
        return list(outcome.cancelled)

    def _cancel_for_scheduler(self, tenant_id: str, ids: list[str], reason: str) -> None:
        """A concurrency strategy decided to cancel runs or tasks (the scheduler cannot
        await the store itself)."""
        targets = [holder.split(":", 1)[1] for holder in ids]
        self._spawn(self._cancel(tenant_id, targets, reason), "concurrency-cancel")

    def _slot_keepers(self) -> frozenset[str]:
        """Workers whose cancelled attempts keep their slots until they report the end."""
        return frozenset(wid for wid, st in self._workers.items() if st.reports_cancellation)

    # ------------------------------------------------------------------ task reports

    async def task_event(self, event: TaskEvent) -> EventOutcome:
        """Apply a worker's report; the store fences it on (task, attempt, worker, tenant)."""
        return await self._finish(self._task_event(event), "task-event")

    async def _task_event(self, event: TaskEvent) -> EventOutcome:
        self._sent_on.pop((event.task_id, event.retry_count), None)
        outcome = await self.store.task_apply_event(event, self.clock.now())
        if not outcome.applied:
            logger.info(
                "ignored %s for task %s attempt %d from worker %s: %s",
                event.type,
                event.task_id,
                event.retry_count,
                event.worker_id,
                outcome.reason,
            )
        self._after(outcome)
        return outcome

    def _after(self, outcome: EventOutcome) -> None:
        self.scheduler.free(outcome.freed)
        # Concurrency keys first, so a retried task queues behind its own release.
        self.scheduler.release(
            [task_holder(t) for t in outcome.ended] + [run_holder(r) for r in outcome.finished_runs]
        )
        self.scheduler.enqueue(outcome.queued)
        for held in outcome.stop:
            self._send_cancel(held)
        if outcome.finished_runs:
            self._spawn(self._notify_finished(outcome.finished_runs), "notify-finished")

    async def release_slot(self, tenant_id: str, task_id: str) -> None:
        await self._finish(self._release_slot(tenant_id, task_id), "release-slot")

    async def _release_slot(self, tenant_id: str, task_id: str) -> None:
        held = await self.store.task_release_slot(tenant_id, task_id)
        if held is None:
            raise NotFound(f"no running task {task_id!r} holding a slot")
        self.scheduler.free([held])

    async def refresh_timeout(self, tenant_id: str, task_id: str, seconds: float) -> float:
        if seconds <= 0 or not math.isfinite(seconds):
            raise InvalidInput("timeout increment must be positive")
        timeout_at = await self.store.task_refresh_timeout(
            tenant_id, task_id, seconds, self.clock.now()
        )
        if timeout_at is None:
            raise NotFound(f"no running task {task_id!r}")
        return timeout_at

    async def put_logs(self, tenant_id: str, lines: Sequence[LogLine]) -> None:
        await self.store.logs_insert(tenant_id, lines)

    # ------------------------------------------------------------------ workers

    async def register_worker(
        self,
        tenant_id: str,
        name: str,
        actions: Sequence[str],
        slot_config: dict[str, int],
        labels: dict[str, str | int],
        runtime_info: dict[str, object],
    ) -> WorkerRecord:
        if not name.strip():
            raise InvalidInput("worker name must not be empty")
        if any(n < 0 for n in slot_config.values()):
            raise InvalidInput("slot counts must not be negative")
        now = self.clock.now()
        slots = worker_slots(str(uuid.uuid4()), tenant_id, actions, slot_config, labels)
        record = WorkerRecord(
            id=slots.id,
            tenant_id=tenant_id,
            name=name,
            actions=tuple(dict.fromkeys(actions)),
            slot_config=slots.capacity,
            labels=dict(labels),
            status=WorkerStatus.ACTIVE,
            status_reason="registered",
            status_changed_at=now,
            last_heartbeat_at=now,
            created_at=now,
            runtime_info=dict(runtime_info),
        )
        await self._finish(self._register(record, slots), "register")
        logger.info(
            "worker %r registered as %s with %d action(s), slots %s",
            name,
            record.id,
            len(record.actions),
            record.slot_config,
            extra={"worker_id": record.id, "worker_name": name, "actions": list(actions)},
        )
        return record

    async def _register(self, record: WorkerRecord, slots: WorkerSlots) -> None:
        # Row and memory together: a worker whose caller went away mid-call must still be
        # known to the reaper, or it would stay ACTIVE forever.
        await self.store.worker_insert(record)
        self._workers[record.id] = _WorkerState(
            record, WorkerStatus.ACTIVE, last_seen=self.clock.monotonic()
        )
        self.scheduler.worker_up(slots)

    def _worker(self, tenant_id: str, worker_id: str) -> _WorkerState:
        state = self._workers.get(worker_id)
        if state is None or state.record.tenant_id != tenant_id:
            raise NotFound(f"worker {worker_id!r} not found")
        return state

    async def open_session(self, tenant_id: str, worker_id: str) -> Session:
        """Make ``session`` the worker's action stream (replacing an older one)."""
        return await self._finish(
            self._open_session(tenant_id, worker_id), "open-session", self.close_session
        )

    async def _open_session(self, tenant_id: str, worker_id: str) -> Session:
        state = self._workers.get(worker_id)
        if state is None:
            record = await self.store.worker_get(tenant_id, worker_id)
            if record is None:
                raise NotFound(f"worker {worker_id!r} not found")
            state = self._workers.setdefault(
                worker_id, _WorkerState(record, record.status, last_seen=self.clock.monotonic())
            )
            r = state.record
            self.scheduler.worker_up(
                worker_slots(r.id, r.tenant_id, r.actions, r.slot_config, r.labels)
            )
        elif state.record.tenant_id != tenant_id:
            raise NotFound(f"worker {worker_id!r} not found")
        state.last_seen = self.clock.monotonic()
        if state.session is not None:
            self._requeue_undelivered(state.session.close())
        session = Session(worker_id, tenant_id)
        state.session = session
        stale: list[RunningTask] = []
        if state.status is WorkerStatus.INACTIVE:
            # Back from the dead (a stalled process, a network cut): the attempts taken from
            # it may still run there. Tell it to stop them and, if it reports when they end,
            # count their slots until then, so it is never given more than it can run.
            keep = state.reports_cancellation
            # Its tasks were given back just before it was marked INACTIVE.
            since = state.record.status_changed_at - self.inactive_after
            stale = await self.store.attempts_recall(worker_id, keep, since)
            if keep:
                self.scheduler.hold(stale)
        if state.status is not WorkerStatus.ACTIVE and state.status is not WorkerStatus.PAUSED:
            await self._set_status(state, WorkerStatus.ACTIVE, "listener connected")
        for held in stale:
            session.send(
                Action(ActionKind.CANCEL, task_id=held.task_id, retry_count=held.retry_count)
            )
        self.scheduler.set_assignable(worker_id, state.status is WorkerStatus.ACTIVE)
        return session

    def close_session(self, session: Session) -> None:
        state = self._workers.get(session.worker_id)
        undelivered = session.close()
        if state is not None and state.session is session:
            state.session = None
            self.scheduler.set_assignable(session.worker_id, False)
        self._requeue_undelivered(undelivered)

    def _requeue_undelivered(self, infos: Sequence[DispatchInfo]) -> None:
        if infos:
            held = [
                RunningTask(i.task_id, i.worker_id, i.retry_count, {}, slot_released=False)
                for i in infos
            ]
            self._spawn(self._requeue(held, "not delivered to the worker", count=False), "requeue")

    async def _requeue(self, held: Sequence[RunningTask], reason: str, count: bool = True) -> int:
        """New attempts for attempts that were lost (``count``: as a reassignment, capped);
        the store frees exactly what each held. Returns how many attempts ended."""
        outcome = await self.store.tasks_requeue(
            held,
            reason,
            self.clock.now(),
            max_reassignments=self.max_reassignments,
            count=count,
        )
        self._after(outcome)
        if outcome.queued or outcome.failed:
            logger.warning(
                "re-queued %d task(s), failed %d at the reassignment cap: %s",
                len(outcome.queued),
                len(outcome.failed),
                reason,
            )
        return len(outcome.queued) + len(outcome.failed)

    async def heartbeat(self, tenant_id: str, worker_id: str) -> None:
        state = self._workers.get(worker_id)
        if state is None or state.record.tenant_id != tenant_id:
            record = await self.store.worker_get(tenant_id, worker_id)
            if record is None:
                raise NotFound(f"worker {worker_id!r} not found")
            # Declared lost (or stopped) but alive after all: it must reopen its stream.
            raise FailedPrecondition(f"worker {worker_id!r} is {record.status}; reconnect")
        state.last_seen = self.clock.monotonic()
        await self.store.worker_heartbeat(worker_id, self.clock.now())
        if state.session is None or state.session.closed:
            # Tells the SDK to reopen its action stream (it may have gone deaf).
            raise FailedPrecondition(f"worker {worker_id!r} has no open action listener")

    async def unsubscribe(self, tenant_id: str, worker_id: str) -> None:
        await self._finish(self._unsubscribe(tenant_id, worker_id), "unsubscribe")

    async def _unsubscribe(self, tenant_id: str, worker_id: str) -> None:
        state = self._workers.get(worker_id)
        if state is None or state.record.tenant_id != tenant_id:
            if await self.store.worker_get(tenant_id, worker_id) is None:
                raise NotFound(f"worker {worker_id!r} not found")
            now = self.clock.now()
            await self.store.worker_set_status(worker_id, WorkerStatus.STOPPED, "unsubscribed", now)
            return
        if state.session is not None:
            self.close_session(state.session)
        await self._give_back_tasks(worker_id, "worker stopped with the task unfinished")
        await self._set_status(state, WorkerStatus.STOPPED, "worker unsubscribed")
        await self._forget(worker_id)

    async def _forget(self, worker_id: str) -> None:
        """Drop a worker that is gone from memory; it comes back through its stream."""
        await self.store.worker_drop_attempts(worker_id, self.clock.now())
        self.scheduler.worker_remove(worker_id)
        self._workers.pop(worker_id, None)

    async def upsert_labels(
        self, tenant_id: str, worker_id: str, labels: dict[str, str | int]
    ) -> None:
        state = self._worker(tenant_id, worker_id)
        merged = {**state.record.labels, **labels}
        await self.store.worker_set_labels(worker_id, merged)
        state.record = replace(state.record, labels=merged)
        self.scheduler.set_labels(worker_id, merged)

    async def _set_status(self, state: _WorkerState, status: WorkerStatus, reason: str) -> None:
        if state.status is status:
            return
        await self.store.worker_set_status(state.record.id, status, reason, self.clock.now())
        state.status = status
        logger.info(
            "worker %s is %s (%s)",
            state.record.id,
            status,
            reason,
            extra={"worker_id": state.record.id, "status": str(status)},
        )

    async def _give_back_tasks(self, worker_id: str, reason: str) -> None:
        # A task whose slot was released manually stays with its worker (as upstream).
        held = [t for t in await self.store.tasks_running(worker_id) if not t.slot_released]
        if held:
            await self._requeue(held, f"{reason} (worker {worker_id})")

    # ------------------------------------------------------------------ reaper

    async def reap(self) -> list[str]:
        """Declare silent workers INACTIVE and re-queue their tasks; returns their ids."""
        now = self.clock.monotonic()
        lost = [
            state
            for state in self._workers.values()
            if state.status in (WorkerStatus.ACTIVE, WorkerStatus.PAUSED)
            and now - state.last_seen > self.inactive_after
        ]
        for state in lost:
            worker_id = state.record.id
            if state.session is not None:
                self.close_session(state.session)
            self.scheduler.set_assignable(worker_id, False)
            # Tasks first: if this fails, the worker is still ACTIVE and the next pass retries.
            await self._give_back_tasks(worker_id, "worker lost (no heartbeat)")
            await self._set_status(
                state, WorkerStatus.INACTIVE, f"no heartbeat for {now - state.last_seen:.1f}s"
            )
            await self._forget(worker_id)
        return [s.record.id for s in lost]

    async def expire(self) -> int:
        """Time-based endings, each fenced on the attempt it judged:

        - an attempt past its execution timeout fails (retried if retries remain) and its
          worker is told to cancel it;
        - a start no worker acknowledged within the liveness window was lost on the way and
          gets a new attempt;
        - a queued task no worker took within its schedule timeout is cancelled.

        Returns how many tasks or attempts ended.
        """
        now = self.clock.now()
        ended = 0
        keepers = self._slot_keepers()
        for _ in range(MAX_SWEEPS):
            batch = await self.store.tasks_timed_out(now, SWEEP_BATCH)
            if batch:
                outcome = await self.store.tasks_time_out(batch, keepers, now)
                ended += len(outcome.stop)
                self._after(outcome)
            if len(batch) < SWEEP_BATCH:
                break
        self._sent_on = {k: v for k, v in self._sent_on.items() if not v.closed}
        # Starts are judged only after a full window of this engine's life: one sent before
        # a restart gets the same fresh window as its worker.
        if self.clock.monotonic() - self._started_at > self.inactive_after:
            lost = [
                held
                for held in await self.store.tasks_unstarted(now - self.inactive_after, SWEEP_BATCH)
                if not self._still_on_open_stream(held)
            ]
            for held in lost:
                self._sent_on.pop((held.task_id, held.retry_count), None)
            if lost:
                ended += await self._requeue(lost, "start never acknowledged by the worker")
        for _ in range(MAX_SWEEPS):
            expired = await self.store.tasks_schedule_expired(now, SWEEP_BATCH)
            by_tenant: dict[str, list[str]] = {}
            for tenant_id, task_id in expired:
                by_tenant.setdefault(tenant_id, []).append(task_id)
            for tenant_id, task_ids in by_tenant.items():
                reason = "schedule timeout: no worker took the task in time"
                ended += len(await self._cancel(tenant_id, task_ids, reason))
            if len(expired) < SWEEP_BATCH:
                break
        return ended

    def _send_cancel(self, held: RunningTask) -> None:
        state = self._workers.get(held.worker_id)
        if state is not None and state.session is not None:
            state.session.send(
                Action(ActionKind.CANCEL, task_id=held.task_id, retry_count=held.retry_count)
            )

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reaper_interval)
            for step in (self.reap, self.expire):
                try:
                    await step()
                except Exception:
                    logger.exception("%s pass failed; retrying next tick", step.__name__)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, infos: list[DispatchInfo]) -> None:
        undelivered: list[DispatchInfo] = []
        for info in infos:
            state = self._workers.get(info.worker_id)
            if (
                state is None
                or state.session is None
                or not state.session.send(Action(ActionKind.START, info=info))
            ):
                undelivered.append(info)
            else:
                self._sent_on[(info.task_id, info.retry_count)] = state.session
        self._requeue_undelivered(undelivered)

    def _still_on_open_stream(self, held: RunningTask) -> bool:
        """Whether a start went out on the stream its worker still has open: then it was
        delivered (the worker may just be slow to say so, e.g. a blocked event loop)."""
        session = self._sent_on.get((held.task_id, held.retry_count))
        state = self._workers.get(held.worker_id)
        return (
            session is not None
            and not session.closed
            and state is not None
            and state.session is session
        )

    # ------------------------------------------------------------------ reads and admin

    async def workers_view(self, tenant_id: str) -> list[WorkerView]:
        """Every worker of the tenant, newest last, with live slot usage."""
        usage = await self.scheduler.slot_usage()
        return [self._view(r, usage) for r in await self.store.workers_list(tenant_id)]

    async def worker_view(self, tenant_id: str, worker_id: str) -> WorkerView:
        record = await self.store.worker_get(tenant_id, worker_id)
        if record is None:
            raise NotFound(f"worker {worker_id!r} not found")
        return self._view(record, await self.scheduler.slot_usage())

    def _view(self, record: WorkerRecord, usage: dict[str, dict[str, int]]) -> WorkerView:
        state = self._workers.get(record.id)
        used = usage.get(record.id, {})
        return WorkerView(
            record=record,
            slots_used={t: used.get(t, 0) for t in record.slot_config},
            connected=state is not None and state.session is not None,
        )

    async def set_paused(self, tenant_id: str, worker_id: str, paused: bool) -> WorkerView:
        """Pause (no new tasks; running ones go on) or resume a live worker."""
        await self._finish(self._set_paused(tenant_id, worker_id, paused), "pause")
        return await self.worker_view(tenant_id, worker_id)

    async def _set_paused(self, tenant_id: str, worker_id: str, paused: bool) -> None:
        state = self._workers.get(worker_id)
        if state is None or state.record.tenant_id != tenant_id:
            record = await self.store.worker_get(tenant_id, worker_id)
            if record is None:
                raise NotFound(f"worker {worker_id!r} not found")
            raise FailedPrecondition(f"worker {worker_id!r} is {record.status}, not running")
        if paused:
            await self._set_status(state, WorkerStatus.PAUSED, "paused by request")
            self.scheduler.set_assignable(worker_id, False)
        else:
            await self._set_status(state, WorkerStatus.ACTIVE, "resumed by request")
            self.scheduler.set_assignable(worker_id, state.session is not None)

    async def cancel_matching(self, tenant_id: str, match: RunFilter, reason: str) -> list[str]:
        """Cancel every run of the tenant that matches; returns the cancelled task ids."""
        run_ids = await self.store.runs_find(tenant_id, match)
        return await self.cancel(tenant_id, run_ids, reason) if run_ids else []


def _check_priority(priority: int) -> None:
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidInput(f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}")


def _reject_constant(name: str) -> object:
    raise InvalidInput(f"{name} is not valid JSON")


def _json_object_text(text: str | None, what: str) -> str:
    """Validate that ``text`` is a JSON object (empty means ``{}``); return compact text."""
    if text is None or not text.strip():
        return "{}"
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    try:
        compact = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        compact.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} holds a lone surrogate (\\ud800-\\udfff)") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"{what} cannot be stored: {exc}") from None
    return compact


def _check_concurrency(spec: ConcurrencySpec) -> None:
    """Refuse a limit at registration if it could never be evaluated."""
    if spec.max_runs < 1:
        raise InvalidInput(f"concurrency {spec.expression!r}: max_runs must be at least 1")
    if spec.tenant_scoped and not spec.name:
        raise InvalidInput(f"concurrency {spec.expression!r}: a tenant-scoped limit needs a name")
    cel.compile_expression(spec.expression)
    if spec.max_runs_expression:
        cel.compile_expression(spec.max_runs_expression)


def _check_rate_limit(task: str, spec: RateLimitSpec) -> None:
    if spec.key_expr:
        cel.compile_expression(spec.key_expr)
        if not spec.limit_expr:
            raise InvalidInput(f"task {task!r}: a dynamic rate limit needs a limit")
        if not _is_int(spec.limit_expr):
            cel.compile_expression(spec.limit_expr)
    elif not spec.key:
        raise InvalidInput(f"task {task!r}: a rate limit needs a key or a key expression")
    if spec.units_expr:
        cel.compile_expression(spec.units_expr)
    elif spec.units is not None and spec.units < 1:
        raise InvalidInput(f"task {task!r}: rate limit units must be at least 1")
    if not spec.duration_s > 0:
        raise InvalidInput(f"task {task!r}: rate limit duration must be positive")


def _is_int(text: str) -> bool:
    try:
        int(text.strip())
    except ValueError:
        return False
    return True


def _limit_value(text: str | None, data: Any, meta: Any) -> int:
    if text is None:
        raise InvalidInput("a dynamic rate limit needs a limit")
    value = int(text.strip()) if _is_int(text) else cel.compile_expression(text).integer(data, meta)
    if value < 1:
        raise InvalidInput(f"rate limit value must be at least 1, got {value}")
    return value


def run_holder(run_id: str) -> str:
    """Concurrency holder names: a one-task run shares its id with its task, so the two
    kinds of holder are kept apart by prefix."""
    return f"run:{run_id}"


def task_holder(task_id: str) -> str:
    return f"task:{task_id}"


def _gate_claims(
    tenant_id: str,
    wf: Workflow,
    run_id: str,
    task_ids: Sequence[str],
    input_text: str,
    meta_text: str | None,
) -> tuple[tuple[GateClaim, ...], ...]:
    """Each task's concurrency claims: the workflow's limits (held by the run), then its own
    (held by the task), each key evaluated once from the run's input and metadata."""
    if not wf.concurrency and not any(t.concurrency for t in wf.tasks):
        return ()
    data = json.loads(input_text)
    meta = json.loads(meta_text) if meta_text else {}

    def claim(spec: ConcurrencySpec, gate: str, holder: str, per_run: bool) -> GateClaim:
        key = cel.compile_expression(spec.expression).key(data, meta, workflow_run_id=run_id)
        max_runs = spec.max_runs
        if spec.max_runs_expression:
            limit = cel.compile_expression(spec.max_runs_expression)
            max_runs = limit.integer(data, meta, workflow_run_id=run_id)
            if max_runs < 1:
                raise InvalidInput(f"max_runs_expression gave {max_runs}; it must be >= 1")
        if spec.tenant_scoped and spec.name:
            gate = f"scoped/{spec.name}"
        return GateClaim(gate, key, max_runs, spec.strategy, holder, per_run, tenant_id)

    run_claims = tuple(
        claim(spec, f"{wf.id}/run/{spec.name or i}", run_holder(run_id), True)
        for i, spec in enumerate(wf.concurrency)
    )
    return tuple(
        run_claims
        + tuple(
            claim(spec, f"{wf.id}/{task.readable_id}/{spec.name or i}", task_holder(task_id), False)
            for i, spec in enumerate(task.concurrency)
        )
        for task, task_id in zip(wf.tasks, task_ids, strict=True)
    )


def _check_acyclic(name: str, tasks: Sequence[TaskDef]) -> None:
    parents = {t.readable_id: t.parents for t in tasks}
    state: dict[str, int] = {}

    def visit(node: str, path: tuple[str, ...]) -> None:
        mark = state.get(node)
        if mark == 2:
            return
        if mark == 1:
            raise InvalidInput(f"workflow {name!r} has a cycle: {' -> '.join((*path, node))}")
        state[node] = 1
        for p in parents[node]:
            visit(p, (*path, node))
        state[node] = 2

    for t in tasks:
        visit(t.readable_id, ())
