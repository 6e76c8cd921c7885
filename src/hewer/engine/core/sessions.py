"""Workers: registration, their action streams (sessions), heartbeats and liveness.

Liveness is judged on the engine's clock, in memory: after a restart every known worker
starts with a fresh ``inactive_after`` window, as if it had just sent a heartbeat. A worker
silent for the window is declared INACTIVE and its running tasks get new attempts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from hewer.domain import DispatchInfo, RunningTask, WorkerRecord, WorkerStatus
from hewer.engine.core.clock import Clock
from hewer.engine.core.component import Component
from hewer.engine.core.loop import EngineLoop
from hewer.engine.core.scheduler import Scheduler, worker_slots
from hewer.engine.core.scopes import Scope
from hewer.engine.core.transitions import (
    DropAttempts,
    Heartbeat,
    InsertWorker,
    Judged,
    Recall,
    Requeue,
    SetLabels,
    SetWorkerStatus,
)
from hewer.errors import HewerError, InvalidInput, NotFound, PermissionDenied, StoreError
from hewer.store import Store

logger = logging.getLogger(__name__)


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
    """A worker's open action stream. The transport drains ``next()`` (or ``next_batch()``)
    until it returns None. Its queue holds at most what the worker's slots allow (the engine
    never assigns more) plus cancels for what runs there, so a slow reader cannot make it
    grow without bound."""

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

    async def next_batch(self, limit: int) -> list[Action] | None:
        """At least one action (waiting for it), and whatever else is ready, up to
        ``limit``; None once the session is closed and drained."""
        first = await self.next()
        if first is None:
            return None
        out = [first]
        while len(out) < limit and not self._queue.empty():
            action = self._queue.get_nowait()
            if action is None:
                self._queue.put_nowait(None)  # the end marker stays for the next call
                break
            out.append(action)
        return out

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
class WorkerState:
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


class Sessions(Component):
    """Every live worker of this engine, its stream, and what was sent on it."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        loop: EngineLoop,
        scheduler: Scheduler,
        *,
        inactive_after: float,
        spawn: Callable[..., asyncio.Task[object]],
    ) -> None:
        self.store = store
        self.clock = clock
        self.loop = loop
        self.scheduler = scheduler
        self.inactive_after = inactive_after
        self._spawn = spawn
        self.workers: dict[str, WorkerState] = {}
        # The stream each unacknowledged start went out on (forgotten once acknowledged).
        self._sent_on: dict[tuple[str, int], Session] = {}
        self.keepers: frozenset[str] = frozenset()

    # -- start --------------------------------------------------------------------------

    async def start(self) -> None:
        """Workers known at start: each gets a fresh liveness window."""
        fresh = self.clock.monotonic()
        for record in await self.store.workers_list():
            if record.status in (WorkerStatus.ACTIVE, WorkerStatus.PAUSED):
                self.workers[record.id] = WorkerState(record, record.status, last_seen=fresh)
        self._keepers_changed()

    def scheduler_workers(self) -> None:
        """Tell the scheduler about every worker in memory (at start and after a rebuild)."""
        for state in self.workers.values():
            r = state.record
            slots = worker_slots(r.id, r.tenant_id, r.actions, r.slot_config, r.labels)
            slots.assignable = state.session is not None and state.status is WorkerStatus.ACTIVE
            self.scheduler.worker_up(slots)

    def _keepers_changed(self) -> None:
        self.keepers = frozenset(wid for wid, st in self.workers.items() if st.reports_cancellation)

    # -- registration -------------------------------------------------------------------

    async def register(
        self,
        tenant_id: str,
        name: str,
        actions: Sequence[str],
        slot_config: dict[str, int],
        labels: dict[str, str | int],
        runtime_info: dict[str, object],
        owner_token: str | None = None,
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
            owner_token=owner_token,
        )
        # Memory first: a worker whose caller went away mid-call must still be known to the
        # reaper, or its row would stay ACTIVE forever.
        self.workers[record.id] = WorkerState(
            record, WorkerStatus.ACTIVE, last_seen=self.clock.monotonic()
        )
        self._keepers_changed()
        self.scheduler.worker_up(slots)
        try:
            await self.loop.run(InsertWorker(record))
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self.workers.pop(record.id, None)
                self.scheduler.worker_remove(record.id)
                self._keepers_changed()
            raise
        logger.info(
            "worker %r registered as %s with %d action(s), slots %s",
            name,
            record.id,
            len(record.actions),
            record.slot_config,
            extra={"worker_id": record.id, "worker_name": name, "actions": list(actions)},
        )
        return record

    async def check_caller(
        self, tenant_id: str, worker_id: str, token_id: str, scope: Scope = Scope.ADMIN
    ) -> None:
        """A worker's id is a capability only for the token it registered with: another
        token of the same tenant may not open its stream (and take its tasks), heartbeat
        for it or report for its attempts."""
        state = self.workers.get(worker_id)
        record = state.record if state is not None else None
        if record is None:
            record = await self.store.worker_get(tenant_id, worker_id)
        if record is None or record.tenant_id != tenant_id:
            raise NotFound(f"worker {worker_id!r} not found")
        if record.owner_token is None:
            # Registered before owners were kept (and before scopes: with an admin token).
            # Any admin token may go on acting for it; scoped tokens came later, never its.
            if scope is not Scope.ADMIN:
                raise PermissionDenied(
                    f"worker {worker_id!r} predates worker ownership: only an admin token "
                    "may act as it (restart the worker to register it anew)"
                )
            return
        if record.owner_token != token_id:
            raise PermissionDenied(
                f"worker {worker_id!r} was registered with another token: only that "
                "token's caller may act as it"
            )

    def get(self, tenant_id: str, worker_id: str) -> WorkerState:
        state = self.workers.get(worker_id)
        if state is None or state.record.tenant_id != tenant_id:
            raise NotFound(f"worker {worker_id!r} not found")
        return state

    # -- streams ------------------------------------------------------------------------

    async def open(self, tenant_id: str, worker_id: str) -> Session:
        """Make a new session the worker's action stream (replacing an older one)."""
        state = self.workers.get(worker_id)
        if state is None:
            record = await self.store.worker_get(tenant_id, worker_id)
            if record is None:
                raise NotFound(f"worker {worker_id!r} not found")
            state = self.workers.setdefault(
                worker_id, WorkerState(record, record.status, last_seen=self.clock.monotonic())
            )
            self._keepers_changed()
            r = state.record
            self.scheduler.worker_up(
                worker_slots(r.id, r.tenant_id, r.actions, r.slot_config, r.labels)
            )
        elif state.record.tenant_id != tenant_id:
            raise NotFound(f"worker {worker_id!r} not found")
        state.last_seen = self.clock.monotonic()
        if state.session is not None:
            self.requeue_undelivered(state.session.close())
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
            stale = await self.loop.run(Recall(worker_id, keep, since))
            if keep:
                self.scheduler.hold(stale)
        if state.status not in (WorkerStatus.ACTIVE, WorkerStatus.PAUSED):
            await self.set_status(state, WorkerStatus.ACTIVE, "listener connected")
        for held in stale:
            session.send(
                Action(ActionKind.CANCEL, task_id=held.task_id, retry_count=held.retry_count)
            )
        self.scheduler.set_assignable(worker_id, state.status is WorkerStatus.ACTIVE)
        return session

    def close(self, session: Session) -> None:
        state = self.workers.get(session.worker_id)
        undelivered = session.close()
        if state is not None and state.session is session:
            state.session = None
            self.scheduler.set_assignable(session.worker_id, False)
        self.requeue_undelivered(undelivered)

    def requeue_undelivered(self, infos: Sequence[DispatchInfo]) -> None:
        if infos:
            judged = [Judged(i.tenant_id, i.task_id, i.retry_count, i.worker_id) for i in infos]
            self._spawn(
                self.loop.run(Requeue("not delivered to the worker", attempts=judged, count=False)),
                "requeue-undelivered",
            )

    def dispatch(self, infos: Iterable[DispatchInfo]) -> None:
        """Committed assignments go out on their workers' streams."""
        undelivered: list[DispatchInfo] = []
        for info in infos:
            state = self.workers.get(info.worker_id)
            if (
                state is None
                or state.session is None
                or not state.session.send(Action(ActionKind.START, info=info))
            ):
                undelivered.append(info)
            else:
                self._sent_on[(info.task_id, info.retry_count)] = state.session
        self.requeue_undelivered(undelivered)

    def send_cancel(self, held: RunningTask) -> None:
        state = self.workers.get(held.worker_id)
        if state is not None and state.session is not None:
            state.session.send(
                Action(ActionKind.CANCEL, task_id=held.task_id, retry_count=held.retry_count)
            )

    def acknowledged(self, task_id: str, retry_count: int) -> None:
        self._sent_on.pop((task_id, retry_count), None)

    def still_on_open_stream(self, task_id: str, retry_count: int, worker_id: str) -> bool:
        """Whether a start went out on the stream its worker still has open: then it was
        delivered (the worker may just be slow to say so, e.g. a blocked event loop)."""
        session = self._sent_on.get((task_id, retry_count))
        state = self.workers.get(worker_id)
        return (
            session is not None
            and not session.closed
            and state is not None
            and state.session is session
        )

    def forget_sent(self, task_id: str, retry_count: int) -> None:
        self._sent_on.pop((task_id, retry_count), None)

    def prune_sent(self) -> None:
        self._sent_on = {k: v for k, v in self._sent_on.items() if not v.closed}

    # -- heartbeats and status ----------------------------------------------------------

    async def heartbeat(self, tenant_id: str, worker_id: str) -> None:
        state = self.workers.get(worker_id)
        if state is None or state.record.tenant_id != tenant_id:
            record = await self.store.worker_get(tenant_id, worker_id)
            if record is None:
                raise NotFound(f"worker {worker_id!r} not found")
            # Declared lost (or stopped) but alive after all: it must reopen its stream.
            raise FailedPrecondition(f"worker {worker_id!r} is {record.status}; reconnect")
        state.last_seen = self.clock.monotonic()
        try:
            await self.loop.run(Heartbeat(worker_id))
        except StoreError as exc:
            # Liveness is judged from the heartbeat received (above), not from its row: a
            # worker is never lost because the database could not take its heartbeat.
            logger.debug("heartbeat of %s not written: %s", worker_id, exc)
        if state.session is None or state.session.closed:
            # Tells the SDK to reopen its action stream (it may have gone deaf).
            raise FailedPrecondition(f"worker {worker_id!r} has no open action listener")

    async def set_status(self, state: WorkerState, status: WorkerStatus, reason: str) -> None:
        if state.status is status:
            return
        await self.loop.run(SetWorkerStatus(state.record.id, status, reason))
        state.status = status
        state.record = replace(
            state.record, status=status, status_reason=reason, status_changed_at=self.clock.now()
        )
        logger.info(
            "worker %s is %s (%s)",
            state.record.id,
            status,
            reason,
            extra={"worker_id": state.record.id, "status": str(status)},
        )

    async def upsert_labels(
        self, tenant_id: str, worker_id: str, labels: dict[str, str | int]
    ) -> None:
        state = self.get(tenant_id, worker_id)
        merged = {**state.record.labels, **labels}
        await self.loop.run(SetLabels(worker_id, merged))
        state.record = replace(state.record, labels=merged)
        self.scheduler.set_labels(worker_id, merged)

    async def set_paused(self, tenant_id: str, worker_id: str, paused: bool) -> None:
        """Pause (no new tasks; running ones go on) or resume a live worker."""
        state = self.workers.get(worker_id)
        if state is None or state.record.tenant_id != tenant_id:
            record = await self.store.worker_get(tenant_id, worker_id)
            if record is None:
                raise NotFound(f"worker {worker_id!r} not found")
            raise FailedPrecondition(f"worker {worker_id!r} is {record.status}, not running")
        if paused:
            await self.set_status(state, WorkerStatus.PAUSED, "paused by request")
            self.scheduler.set_assignable(worker_id, False)
        else:
            await self.set_status(state, WorkerStatus.ACTIVE, "resumed by request")
            self.scheduler.set_assignable(worker_id, state.session is not None)

    async def unsubscribe(self, tenant_id: str, worker_id: str) -> None:
        state = self.workers.get(worker_id)
        if state is None or state.record.tenant_id != tenant_id:
            if await self.store.worker_get(tenant_id, worker_id) is None:
                raise NotFound(f"worker {worker_id!r} not found")
            await self.loop.run(SetWorkerStatus(worker_id, WorkerStatus.STOPPED, "unsubscribed"))
            return
        if state.session is not None:
            self.close(state.session)
        self.scheduler.set_assignable(worker_id, False)
        await self._give_back(worker_id, "worker stopped with the task unfinished")
        await self.set_status(state, WorkerStatus.STOPPED, "worker unsubscribed")
        await self._forget(worker_id)

    async def _give_back(self, worker_id: str, reason: str) -> None:
        # A task whose slot was released manually stays with its worker (as upstream).
        outcome = await self.loop.run(Requeue(reason, worker_id=worker_id))
        if outcome.queued or outcome.failed:
            logger.warning(
                "re-queued %d task(s), failed %d at the reassignment cap: %s (worker %s)",
                len(outcome.queued),
                len(outcome.failed),
                reason,
                worker_id,
            )

    async def _forget(self, worker_id: str) -> None:
        """Drop a worker that is gone from memory; it comes back through its stream."""
        await self.loop.run(DropAttempts(worker_id))
        self.scheduler.worker_remove(worker_id)
        self.workers.pop(worker_id, None)
        self._keepers_changed()

    # -- liveness -----------------------------------------------------------------------

    def silent(self) -> list[WorkerState]:
        if self.loop.unavailable is not None:
            # Workers could not reach us through a database outage (every call answered
            # UNAVAILABLE): their silence is ours. Judged again once it is back, each with
            # a fresh window from that moment.
            return []
        now = self.clock.monotonic()
        back = self.loop.back_at or 0.0
        return [
            state
            for state in self.workers.values()
            if state.status in (WorkerStatus.ACTIVE, WorkerStatus.PAUSED)
            and now - max(state.last_seen, back) > self.inactive_after
        ]

    def next_expiry(self) -> float | None:
        """Monotonic time at which the next live worker would be declared lost."""
        seen = [
            s.last_seen
            for s in self.workers.values()
            if s.status in (WorkerStatus.ACTIVE, WorkerStatus.PAUSED)
        ]
        return min(seen) + self.inactive_after if seen else None

    async def reap(self) -> list[str]:
        """Declare silent workers INACTIVE and re-queue their tasks; returns their ids."""
        lost = self.silent()
        now = self.clock.monotonic()
        for state in lost:
            worker_id = state.record.id
            if state.session is not None:
                self.close(state.session)
            self.scheduler.set_assignable(worker_id, False)
            # Tasks first: if this fails, the worker is still ACTIVE and the next pass retries.
            await self._give_back(worker_id, "worker lost (no heartbeat)")
            await self.set_status(
                state, WorkerStatus.INACTIVE, f"no heartbeat for {now - state.last_seen:.1f}s"
            )
            await self._forget(worker_id)
        return [s.record.id for s in lost]

    # -- reads --------------------------------------------------------------------------

    def view(self, record: WorkerRecord, usage: dict[str, dict[str, int]]) -> WorkerView:
        state = self.workers.get(record.id)
        used = usage.get(record.id, {})
        return WorkerView(
            record=record,
            slots_used={t: used.get(t, 0) for t in record.slot_config},
            connected=state is not None and state.session is not None,
        )

    async def stop(self, grace: float = 0.0) -> None:
        """Close every stream (the workers reconnect to the next engine)."""
        for state in self.workers.values():
            if state.session is not None:
                state.session.close()

    def actions_of(self, tenant_id: str, worker_id: str) -> frozenset[str] | None:
        """The actions a known worker of the tenant runs (None: no such worker)."""
        state = self.workers.get(worker_id)
        if state is None or state.record.tenant_id != tenant_id:
            return None
        return frozenset(state.record.actions)
