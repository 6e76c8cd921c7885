"""Durable tasks: each task's event log (:class:`~hewer.domain.DurableLog`), as operations.

A durable task's body asks the engine, through its worker's durable stream, to wait (for
sleeps and user events), to memoise a value, or to spawn child runs. Each request is a node
of the task's log, numbered from 1 in each invocation (an invocation is an attempt: the
first run, a retry, a resume on another worker or after an eviction). A node the log holds
already is replayed: a wait that was satisfied is satisfied again at once, a memoised value
is handed back, a child run is the same run, so a later invocation does not redo what an
earlier one did. Asking at a node for another kind of thing than the log holds there is a
non-determinism error.

- A wait's sleeps count from when the node was first reached, not from its replay.
- While a task waits (sleep or event) its execution timeout does not run; it runs again,
  from the start, once the wait is satisfied.
- A worker may evict an invocation that waits (hatchet-sdk does after a TTL, or when its
  durable slots run short): its slot is freed at once and the task is queued again, as a
  new invocation, when an entry it waits on is satisfied.
- A request from an invocation that is no longer the task's live one is refused as stale
  (the worker is told to drop it).

Nothing here does I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hewer.domain import (
    ConditionKind,
    ConditionSpec,
    DurableEntry,
    DurableKind,
    DurableLog,
    Keys,
    NewRun,
    RunDetails,
    RunStatus,
    TaskRow,
    TaskStatus,
    WorkingSet,
)
from hewer.engine.core import conditions
from hewer.engine.core import transitions as tx
from hewer.errors import HewerError, NotFound

BRANCH = 1  # one branch per log: branching a log (upstream's reset) is not offered


class StaleInvocation(HewerError):
    """The invocation named is no longer its task's live one."""


class NonDeterminism(HewerError):
    """An invocation asked, at a node of the log, for another thing than the log holds."""

    def __init__(self, message: str, node: int) -> None:
        super().__init__(message)
        self.node = node


@dataclass(frozen=True, slots=True)
class ChildDone:
    """A child run finished: what its parent's log records for the node that spawned it."""

    tenant_id: str
    parent_task_id: str
    run_id: str
    payload: str
    failure: bool
    error: str | None

    @classmethod
    def of(cls, parent_task_id: str, details: RunDetails) -> ChildDone:
        outputs = {
            t.readable_id: json.loads(t.output) if t.output else None
            for t in details.tasks
            if t.status is TaskStatus.COMPLETED
        }
        failure = details.status is not RunStatus.COMPLETED
        error = None
        if failure:
            error = (
                next(
                    (t.error for t in details.tasks if t.status is TaskStatus.FAILED and t.error),
                    None,
                )
                or f"child run {details.status.name.lower()}"
            )
        return cls(
            details.tenant_id,
            parent_task_id,
            details.id,
            json.dumps(outputs, separators=(",", ":")),
            failure,
            error,
        )


@dataclass(frozen=True, slots=True)
class MemoAck:
    node: int
    existed: bool
    payload: bytes | None


# ---------------------------------------------------------------------- helpers


def _live(ws: WorkingSet, tenant_id: str, task_id: str, invocation: int, worker_id: str) -> TaskRow:
    row = ws.tasks.get(task_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"task {task_id} not found")
    if (
        row.status is not TaskStatus.RUNNING
        or row.retry_count + 1 != invocation
        or row.worker_id != worker_id
    ):
        raise StaleInvocation(
            f"invocation {invocation} of task {task_id} is no longer its live one"
        )
    return row


def _log(ws: WorkingSet, row: TaskRow) -> DurableLog:
    log = ws.durable.get(row.id)
    if log is None:
        log = ws.durable[row.id] = DurableLog(row.id, row.tenant_id)
    return log


def _changed(ws: WorkingSet, log: DurableLog) -> None:
    ws.changes.durable[log.task_id] = log


def _next(log: DurableLog, invocation: int, ahead: int = 1) -> int:
    """The node an invocation's next request (``ahead`` = 2: the one after...) is at."""
    return (log.cursor if log.invocation == invocation else 0) + ahead


def _reach(log: DurableLog, invocation: int, node: int) -> None:
    log.invocation, log.cursor = invocation, node


def _replayed(log: DurableLog, node: int, kind: DurableKind) -> DurableEntry | None:
    entry = log.entries.get(node)
    if entry is not None and entry.kind is not kind:
        raise NonDeterminism(
            f"node {node} of task {log.task_id} was a {entry.kind} in an earlier invocation; "
            f"this one asks for a {kind} there (the task's body must reach its waits, memos "
            "and child runs in the same order every time)",
            node,
        )
    return entry


def _satisfy(
    ws: WorkingSet,
    log: DurableLog,
    entry: DurableEntry,
    payload: str | None,
    out: tx.Outcome,
    *,
    failure: bool = False,
    error: str | None = None,
) -> None:
    entry.done = True
    log.orders += 1
    entry.order = log.orders
    entry.payload = payload
    entry.failure = failure
    entry.error = error
    _changed(ws, log)
    out.durable.append((log.tenant_id, log.task_id))


def sleep_text(seconds: float) -> str:
    """A duration as the Go-style text hatchet-sdk parses back (``10s``, ``1.5s``)."""
    if seconds == math.floor(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:.3f}".rstrip("0") + "s"


def _judge_wait(
    ctx: tx.Context, ws: WorkingSet, log: DurableLog, entry: DurableEntry, out: tx.Outcome
) -> None:
    """Satisfy a wait whose conditions now hold."""
    state = conditions.WaitState(entry.created_at, frozenset(entry.hits))
    decision = conditions.decide(entry.conditions, state, ctx.now, {}, {}, {})
    if decision.verdict is conditions.Verdict.WAIT:
        return
    matched: dict[str, list[Any]] = {}
    for c in entry.conditions:
        if c.kind is ConditionKind.SLEEP:
            if ctx.now >= entry.created_at + (c.sleep_s or 0.0):
                matched[c.key] = [{"sleep_duration": sleep_text(c.sleep_s or 0.0)}]
        elif c.key in entry.hits:
            matched[c.key] = [entry.hits[c.key]]
    _satisfy(ws, log, entry, json.dumps({"CREATE": matched}, separators=(",", ":")), out)


def _pending(log: DurableLog) -> list[DurableEntry]:
    return [e for e in log.entries.values() if not e.done]


def sync_waits(ctx: tx.Context, ws: WorkingSet, row: TaskRow, log: DurableLog) -> None:
    """Record what the task's open waits wake it for (its next sleep, the events)."""
    wakes: list[float] = []
    keys: set[str] = set()
    for e in _pending(log):
        if e.kind is not DurableKind.WAIT:
            continue
        for c in e.conditions:
            if c.kind is ConditionKind.SLEEP:
                wakes.append(e.created_at + (c.sleep_s or 0.0))
            elif c.event_key and c.key not in e.hits:
                keys.add(c.event_key)
    ws.changes.waits_dropped.add(row.id)
    ws.changes.waits_added.extend((row.tenant_id, k, row.id) for k in sorted(keys))
    ws.changes.wakes[row.id] = min(wakes) if wakes else None


def _waiting(log: DurableLog) -> bool:
    return any(e.kind is DurableKind.WAIT for e in _pending(log))


def _running_again(ctx: tx.Context, ws: WorkingSet, row: TaskRow, log: DurableLog) -> None:
    """A running task none of whose waits is open any more: its timeout runs again."""
    if row.status is TaskStatus.RUNNING and row.timeout_at is None and not _waiting(log):
        row.timeout_at = ctx.now + tx.definition(ctx, ws, row).timeout_s
        ws.changes.task(row)


def _resume(
    ctx: tx.Context, ws: WorkingSet, row: TaskRow, log: DurableLog, out: tx.Outcome
) -> None:
    """Queue an evicted task again once an entry was satisfied since it left its worker
    (or once nothing it could wait on is open)."""
    if not log.evicted or row.status is not TaskStatus.PENDING:
        return
    open_waits = [e for e in _pending(log) if e.kind is not DurableKind.MEMO]
    if log.orders <= log.evicted_orders and open_waits:
        return
    run = ws.runs[row.run_id]
    log.evicted = False
    _changed(ws, log)
    tx.stop_waiting(ws, row)
    tx.enqueue(ctx, ws, run, row, out)
    sync_waits(ctx, ws, row, log)


def settle(ctx: tx.Context, ws: WorkingSet, row: TaskRow, log: DurableLog, out: tx.Outcome) -> None:
    """After a log changed: its waits, its timeout, and its resume if it was evicted."""
    sync_waits(ctx, ws, row, log)
    _running_again(ctx, ws, row, log)
    _resume(ctx, ws, row, log, out)


def alive(row: TaskRow | None, log: DurableLog | None) -> bool:
    """Whether ``log`` belongs to a task that can still use it (running, or evicted)."""
    if row is None or log is None:
        return False
    return row.status is TaskStatus.RUNNING or (log.evicted and row.status is TaskStatus.PENDING)


def wake(ctx: tx.Context, ws: WorkingSet, row: TaskRow, log: DurableLog, out: tx.Outcome) -> None:
    """A sleep of one of the task's waits may have fallen due."""
    for entry in _pending(log):
        if entry.kind is DurableKind.WAIT:
            _judge_wait(ctx, ws, log, entry, out)
    settle(ctx, ws, row, log, out)


def deliver(
    ctx: tx.Context,
    ws: WorkingSet,
    row: TaskRow,
    log: DurableLog,
    event: conditions.ArrivedEvent,
    out: tx.Outcome,
) -> None:
    """An event arrived that one of the task's waits may listen for."""
    for entry in _pending(log):
        if entry.kind is DurableKind.WAIT:
            _hit(entry, event)
            _judge_wait(ctx, ws, log, entry, out)
    _changed(ws, log)
    settle(ctx, ws, row, log, out)


def _hit(entry: DurableEntry, event: conditions.ArrivedEvent) -> None:
    state = conditions.WaitState(entry.created_at, frozenset(entry.hits))
    try:
        hits = conditions.hit(entry.conditions, state, event).hits
    except HewerError:
        return  # an expression this payload cannot satisfy: not a match
    for key in hits - entry.hits.keys():
        entry.hits[key] = dict(event.payload)


def drop(ws: WorkingSet, row: TaskRow) -> None:
    """Waits left behind by a task that finished: tidy them."""
    ws.changes.waits_dropped.add(row.id)
    ws.changes.wakes[row.id] = None


# ---------------------------------------------------------------------- operations


class _DurableOp(tx.Op[Any]):
    def __init__(self, tenant_id: str, worker_id: str, task_id: str, invocation: int) -> None:
        super().__init__()
        self.tenant_id = tenant_id
        self.worker_id = worker_id
        self.task_id = task_id
        self.invocation = invocation

    def keys(self, keys: Keys) -> None:
        keys.task_ids.add(self.task_id)
        keys.durable.add(self.task_id)

    def live(self, ws: WorkingSet) -> tuple[TaskRow, DurableLog]:
        row = _live(ws, self.tenant_id, self.task_id, self.invocation, self.worker_id)
        return row, _log(ws, row)

    def apply(self, ctx: tx.Context, ws: WorkingSet) -> None:
        # Each check comes before any change, so a refused request changes nothing.
        try:
            self.decide(ctx, ws)
        except (StaleInvocation, NonDeterminism, NotFound) as exc:
            self.error = exc

    def decide(self, ctx: tx.Context, ws: WorkingSet) -> None:
        raise NotImplementedError


class WaitFor(_DurableOp):
    """A wait on sleeps and user events; answers the node it is at. ``recent``: events
    pushed before the wait that its conditions consider (``consider_events_since``)."""

    def __init__(
        self,
        tenant_id: str,
        worker_id: str,
        task_id: str,
        invocation: int,
        specs: Sequence[ConditionSpec],
        label: str | None,
        recent: Sequence[conditions.ArrivedEvent] = (),
    ) -> None:
        super().__init__(tenant_id, worker_id, task_id, invocation)
        self.specs = tuple(specs)
        self.label = label
        self.recent = recent

    def decide(self, ctx: tx.Context, ws: WorkingSet) -> None:
        row, log = self.live(ws)
        node = _next(log, self.invocation)
        entry = _replayed(log, node, DurableKind.WAIT)
        _reach(log, self.invocation, node)
        _changed(ws, log)
        if entry is None:
            entry = DurableEntry(node, DurableKind.WAIT, ctx.now, self.specs, label=self.label)
            log.entries[node] = entry
            for event in self.recent:
                _hit(entry, event)
            _judge_wait(ctx, ws, log, entry, self.outcome)
        if not entry.done and row.timeout_at is not None:
            row.timeout_at = None  # waiting is not running: the timeout stops meanwhile
            ws.changes.task(row)
        settle(ctx, ws, row, log, self.outcome)
        self.outcome.applied = True
        self._result = node


class Memo(_DurableOp):
    """A memoised value: the node, and the value if an earlier invocation stored it."""

    def __init__(
        self, tenant_id: str, worker_id: str, task_id: str, invocation: int, key: bytes
    ) -> None:
        super().__init__(tenant_id, worker_id, task_id, invocation)
        self.key = key.hex()

    def decide(self, ctx: tx.Context, ws: WorkingSet) -> None:
        _, log = self.live(ws)
        node = _next(log, self.invocation)
        entry = _replayed(log, node, DurableKind.MEMO)
        if entry is not None and entry.memo_key != self.key:
            raise NonDeterminism(
                f"node {node} of task {log.task_id} memoised a call with other arguments in "
                "an earlier invocation",
                node,
            )
        _reach(log, self.invocation, node)
        _changed(ws, log)
        if entry is None:
            log.entries[node] = DurableEntry(node, DurableKind.MEMO, ctx.now, memo_key=self.key)
        elif entry.done and entry.payload is not None:
            self._result = MemoAck(node, True, bytes.fromhex(entry.payload))
            self.outcome.applied = True
            return
        self._result = MemoAck(node, False, None)
        self.outcome.applied = True


class CompleteMemo(_DurableOp):
    """The value a memo node's call returned."""

    def __init__(
        self,
        tenant_id: str,
        worker_id: str,
        task_id: str,
        invocation: int,
        node: int,
        key: bytes,
        payload: bytes,
    ) -> None:
        super().__init__(tenant_id, worker_id, task_id, invocation)
        self.node = node
        self.key = key.hex()
        self.payload = payload.hex()

    def decide(self, ctx: tx.Context, ws: WorkingSet) -> None:
        _, log = self.live(ws)
        entry = log.entries.get(self.node)
        if entry is None or entry.kind is not DurableKind.MEMO or entry.memo_key != self.key:
            raise NonDeterminism(
                f"node {self.node} of task {log.task_id} is not that memo", self.node
            )
        if not entry.done:
            _satisfy(ws, log, entry, self.payload, self.outcome)
        self.outcome.applied = True
        self._result = None


class TriggerChildren(_DurableOp):
    """Child runs spawned by a durable task, one node each: a node the log holds already
    names its run (not created again). Answers (node, run id) per child, in order."""

    def __init__(
        self,
        tenant_id: str,
        worker_id: str,
        task_id: str,
        invocation: int,
        runs: Sequence[NewRun],
    ) -> None:
        super().__init__(tenant_id, worker_id, task_id, invocation)
        self.runs = runs
        self.collisions: list[tx.Collision] = []
        self.creates = tx.CreateRuns(runs)
        self.seqs = self.creates.seqs
        self.weight = self.creates.weight

    def keys(self, keys: Keys) -> None:
        super().keys(keys)
        self.creates.keys(keys)

    def decide(self, ctx: tx.Context, ws: WorkingSet) -> None:
        _, log = self.live(ws)
        replayed = [
            _replayed(log, _next(log, self.invocation, i + 1), DurableKind.RUN)
            for i in range(len(self.runs))
        ]
        seq = ws.next_seq
        ws.next_seq += self.seqs
        out: list[tuple[int, str]] = []
        for new, entry in zip(self.runs, replayed, strict=True):
            node = _next(log, self.invocation)
            _reach(log, self.invocation, node)
            if entry is None:
                run_id = tx.create_run(ctx, ws, new, seq, self.outcome, self.collisions)
                seq += len(new.task_ids)
                entry = DurableEntry(node, DurableKind.RUN, ctx.now, child_run_id=run_id)
                if run_id:
                    log.entries[node] = entry
            out.append((node, entry.child_run_id or ""))
        _changed(ws, log)
        self.outcome.applied = True
        self._result = out


class Evict(_DurableOp):
    """The worker gave up an invocation that waits: its slot is free, and the task is
    queued again once what it waits on is satisfied."""

    def decide(self, ctx: tx.Context, ws: WorkingSet) -> None:
        try:
            row, log = self.live(ws)
        except StaleInvocation:
            self._result = False
            return
        out = self.outcome
        tdef = tx.definition(ctx, ws, row)
        if not row.slot_released:
            out.freed.append(tx.running(row, tdef.slot_requests))
        out.ended.append(row.id)
        tx.end_attempt(ws, row, "evicted", ctx.now, holds_slot=False)
        row.retry_count += 1  # the next invocation; reports of this one are fenced off
        row.status = TaskStatus.PENDING
        row.worker_id = None
        row.acked = False
        row.slot_released = False
        row.assigned_at = row.started_at = row.timeout_at = None
        row.waiting = conditions.WaitState(ctx.now).to_text()
        ws.changes.task(row)
        log.evicted = True
        log.evicted_orders = log.orders
        _changed(ws, log)
        settle(ctx, ws, row, log, out)
        out.applied = True
        self._result = True


class ChildrenDone(tx.Op[int]):
    """Child runs of durable tasks finished: their nodes are satisfied with the runs'
    outputs (or failures)."""

    def __init__(self, done: Sequence[ChildDone]) -> None:
        super().__init__()
        self.done = list(done)
        self.weight = max(1, len(self.done))

    def keys(self, keys: Keys) -> None:
        for d in self.done:
            keys.task_ids.add(d.parent_task_id)
            keys.durable.add(d.parent_task_id)

    def apply(self, ctx: tx.Context, ws: WorkingSet) -> None:
        n = 0
        for d in self.done:
            row = ws.tasks.get(d.parent_task_id)
            log = ws.durable.get(d.parent_task_id)
            if row is None or log is None or row.tenant_id != d.tenant_id:
                continue
            for entry in _pending(log):
                if entry.kind is DurableKind.RUN and entry.child_run_id == d.run_id:
                    _satisfy(
                        ws, log, entry, d.payload, self.outcome, failure=d.failure, error=d.error
                    )
                    n += 1
            if alive(row, log):
                settle(ctx, ws, row, log, self.outcome)
        self.outcome.applied = n > 0
        self._result = n


def completion_payload(entry: DurableEntry) -> bytes:
    """What a worker waiting on a satisfied entry is handed."""
    if entry.payload is None:
        return b""
    if entry.kind is DurableKind.MEMO:
        return bytes.fromhex(entry.payload)
    return entry.payload.encode()
