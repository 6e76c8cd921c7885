"""The task state machine: every write of the hot path, as an operation over loaded rows.

An :class:`Op` names the rows it needs (:meth:`Op.keys`), then decides on the working copies
the store loaded for its batch (:meth:`Op.apply`): it edits rows, marks them changed, and
records what the rest of the engine must do once the batch is committed (slots to free,
tasks to queue, runs that finished, attempts to cancel on their workers) in its
:class:`Outcome`. Ops of one batch are applied in arrival order to the same working set, so
a later one sees what an earlier one did (a STARTED and a COMPLETED for one attempt end up
as one row update). Nothing here does I/O.

Fencing: a report changes a task only while ``(task, attempt, worker)`` is its live attempt
(status RUNNING with that ``retry_count`` and ``worker_id``); anything else is ignored.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from hewer.domain import (
    Assignment,
    AttemptRow,
    DesiredLabel,
    DispatchInfo,
    EventOutcome,
    EventRecord,
    EventType,
    GateClaim,
    IdempotencyMethod,
    IdempotencyRow,
    Keys,
    LogLine,
    NewRun,
    QueueItem,
    RateClaim,
    RunDetails,
    RunningTask,
    RunRow,
    RunStatus,
    StickyStrategy,
    TaskDef,
    TaskEvent,
    TaskResult,
    TaskRow,
    TaskStatus,
    WorkerRecord,
    WorkerStatus,
    Workflow,
    WorkingSet,
    merge_labels,
    metadata_object,
)
from hewer.engine.core import conditions, dag, retry
from hewer.errors import HewerError, NotFound

R = TypeVar("R")

TIMEOUT_ERROR = "task exceeded its execution timeout"


@dataclass(frozen=True, slots=True)
class Context:
    """What every op of a batch decides with."""

    now: float
    versions: Mapping[str, Workflow]
    max_reassignments: int | None
    # Workers whose cancelled or timed-out attempts keep their slots until they report that
    # the body returned (Hewer's SDK does; hatchet-sdk does not).
    keepers: Collection[str] = frozenset()


@dataclass(slots=True)
class Outcome:
    """What an op changed, for the scheduler, the workers and waiting clients."""

    applied: bool = False
    freed: list[RunningTask] = field(default_factory=list)
    queued: list[QueueItem] = field(default_factory=list)
    finished: list[RunDetails] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    stop: list[RunningTask] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    reason: str = ""
    # (tenant, task): durable tasks with entries newly satisfied (their workers are told)
    durable: list[tuple[str, str]] = field(default_factory=list)
    # child runs that finished, for the durable tasks that may have spawned them
    children_done: list[tuple[str, RunDetails]] = field(default_factory=list)

    def freeze(self) -> EventOutcome:
        return EventOutcome(
            self.applied,
            tuple(self.freed),
            tuple(self.queued),
            tuple(self.finished),
            tuple(self.cancelled),
            tuple(self.stop),
            tuple(self.failed),
            tuple(self.ended),
            self.reason,
        )


class Op(Generic[R]):
    """One write, answered once the batch it is in has committed."""

    weight = 1  # its share of a batch's size cap
    seqs = 0  # queue positions it needs for new tasks

    def __init__(self) -> None:
        self.outcome = Outcome()
        self.error: BaseException | None = None
        self._result: R | None = None

    def keys(self, keys: Keys) -> None:
        """Add the rows this op needs to ``keys``."""

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        raise NotImplementedError

    @property
    def result(self) -> R:
        if self.error is not None:
            raise self.error
        return self._result  # type: ignore[return-value]


# ---------------------------------------------------------------------- helpers


def definition(ctx: Context, ws: WorkingSet, row: TaskRow) -> TaskDef:
    return ctx.versions[ws.runs[row.run_id].version_id].step(row.readable_id)


def running(row: TaskRow, slot_requests: dict[str, int]) -> RunningTask:
    return RunningTask(
        row.id, row.worker_id or "", row.retry_count, slot_requests, row.slot_released
    )


@functools.lru_cache(maxsize=4096)
def _labels(text: str) -> tuple[DesiredLabel, ...]:
    return tuple(DesiredLabel.from_json(d) for d in json.loads(text))


@functools.lru_cache(maxsize=4096)
def claims_of(text: str | None) -> tuple[tuple[GateClaim, ...], tuple[RateClaim, ...]]:
    if not text:
        return (), ()
    data = json.loads(text)
    return (
        tuple(GateClaim.from_json(c) for c in data.get("gates", ())),
        tuple(RateClaim.from_json(r) for r in data.get("rates", ())),
    )


def claims_json(gates: Sequence[GateClaim], rates: Sequence[RateClaim]) -> str | None:
    if not gates and not rates:
        return None
    return json.dumps(
        {"gates": [g.to_json() for g in gates], "rates": [r.to_json() for r in rates]},
        separators=(",", ":"),
    )


def labels_json(labels: Sequence[DesiredLabel]) -> str | None:
    return json.dumps([d.to_json() for d in labels]) if labels else None


def queue_item(row: TaskRow, run: RunRow, tdef: TaskDef) -> QueueItem:
    """What the scheduler keeps of a queued task."""
    return queued_item(row, tdef, run.sticky, run.sticky_worker_id, run.desired_labels)


def queued_item(
    row: TaskRow,
    tdef: TaskDef,
    sticky: StickyStrategy | None,
    sticky_worker_id: str | None,
    run_labels: str | None,
) -> QueueItem:
    """What the scheduler keeps of a queued task, from its row and its run's fields."""
    labels = tdef.desired_labels
    if run_labels:
        labels = merge_labels(labels, _labels(run_labels))
    gates, rates = claims_of(row.claims)
    # A retried task of a sticky run goes back to the run's worker.
    pinned = row.desired_worker_id or (sticky_worker_id if sticky else None)
    return QueueItem(
        task_id=row.id,
        tenant_id=row.tenant_id,
        action_id=row.action_id,
        priority=row.priority,
        seq=row.seq,
        retry_count=row.retry_count,
        slot_requests=tdef.slot_requests,
        available_at=row.available_at,
        schedule_deadline=row.schedule_deadline,
        desired_labels=labels,
        desired_worker_id=pinned,
        sticky=sticky,
        gates=gates,
        rates=rates,
    )


def details(run: RunRow, tasks: Sequence[TaskRow]) -> RunDetails:
    """A run as clients see it (RUNNING once a task has left the queue)."""
    status = run.status
    if status is RunStatus.QUEUED and dag.started(tasks):
        status = RunStatus.RUNNING
    return RunDetails(
        id=run.id,
        tenant_id=run.tenant_id,
        workflow_name=run.workflow_name,
        status=status,
        input=run.input,
        additional_metadata=run.additional_metadata,
        tasks=tuple(
            TaskResult(t.id, t.readable_id, t.status, t.output, t.error, t.retry_count)
            for t in tasks
        ),
    )


def _queue(ws: WorkingSet, row: TaskRow, tdef: TaskDef, now: float, available_at: float) -> None:
    row.status = TaskStatus.QUEUED
    row.worker_id = None
    row.acked = False
    row.slot_released = False
    row.queued_at = now
    row.available_at = available_at
    row.schedule_deadline = max(now, available_at) + tdef.schedule_timeout_s
    row.assigned_at = row.started_at = row.timeout_at = None
    ws.changes.task(row)


def end_attempt(
    ws: WorkingSet, row: TaskRow, outcome: str, now: float, *, holds_slot: bool
) -> AttemptRow:
    """Keep the live attempt as a row of its own (its task goes on without it, or its body
    may still run)."""
    attempt = AttemptRow(
        row.id,
        row.retry_count,
        row.worker_id or "",
        row.assigned_at,
        row.started_at,
        now,
        outcome,
        holds_slot,
        row.error,
    )
    key = (row.id, row.retry_count)
    ws.attempts[key] = attempt
    ws.changes.new_attempts[key] = attempt
    return attempt


def _retry(
    ws: WorkingSet,
    row: TaskRow,
    tdef: TaskDef,
    now: float,
    *,
    delay: float,
    app_failure: bool,
    lost: bool,
    error: str,
) -> QueueItem:
    """A new attempt: later reports carrying the old attempt number are fenced off."""
    row.retry_count += 1
    row.app_retries += int(app_failure)
    row.reassignments += int(lost)
    row.error = error
    _queue(ws, row, tdef, now, now + delay)
    return queue_item(row, ws.runs[row.run_id], tdef)


def _finish_task(
    ws: WorkingSet,
    row: TaskRow,
    status: TaskStatus,
    now: float,
    *,
    output: str | None = None,
    error: str | None = None,
) -> None:
    row.status = status
    row.finished_at = now
    if row.waiting is not None:
        stop_waiting(ws, row)
    if status is TaskStatus.COMPLETED:
        row.output = output
        row.started_at = row.started_at or now
    if error is not None:
        row.error = error
    ws.changes.task(row)


def stop_waiting(ws: WorkingSet, row: TaskRow) -> None:
    row.waiting = None
    ws.changes.waits_dropped.add(row.id)
    ws.changes.wakes[row.id] = None


def enqueue(ctx: Context, ws: WorkingSet, run: RunRow, row: TaskRow, out: Outcome) -> None:
    tdef = ctx.versions[run.version_id].step(row.readable_id)
    if run.sticky and run.sticky_worker_id is not None:
        row.desired_worker_id = run.sticky_worker_id
    _queue(ws, row, tdef, ctx.now, ctx.now)
    out.queued.append(queue_item(row, run, tdef))


def _judge(
    ctx: Context, ws: WorkingSet, run: RunRow, row: TaskRow, state: conditions.WaitState
) -> conditions.Verdict:
    """Judge a task's conditions now; a task left waiting records what it waits for. A
    condition that cannot be evaluated fails the task, saying why."""
    tdef = ctx.versions[run.version_id].step(row.readable_id)
    parents: dict[str, tuple[TaskStatus, Any]] = {}
    for t in ws.run_tasks.get(run.id, ()):
        if t.readable_id in tdef.parents:
            parents[t.readable_id] = (t.status, json.loads(t.output) if t.output else None)
    try:
        decision = conditions.decide(
            tdef.conditions,
            state,
            ctx.now,
            parents,
            json.loads(run.input),
            metadata_object(run.additional_metadata),
        )
    except HewerError as exc:
        row.error = f"a condition of task {row.readable_id!r} could not be evaluated: {exc}"
        return conditions.Verdict.FAIL
    if decision.verdict is conditions.Verdict.WAIT:
        row.waiting = state.to_text()
        ws.changes.wakes[row.id] = decision.wake_at
        ws.changes.task(row)
        ws.changes.waits_added.extend((row.tenant_id, k, row.id) for k in decision.event_keys)
    return decision.verdict


def _settle_judged(
    ctx: Context,
    ws: WorkingSet,
    run: RunRow,
    row: TaskRow,
    verdict: conditions.Verdict,
    out: Outcome,
) -> bool:
    """Apply a verdict other than WAIT; True if the task ended (its run must advance)."""
    if row.waiting is not None:
        stop_waiting(ws, row)
        ws.changes.task(row)
    if verdict is conditions.Verdict.QUEUE:
        enqueue(ctx, ws, run, row, out)
        return False
    if verdict is conditions.Verdict.SKIP:
        _finish_task(ws, row, TaskStatus.COMPLETED, ctx.now, output=conditions.SKIPPED_OUTPUT)
    elif verdict is conditions.Verdict.FAIL:
        _finish_task(ws, row, TaskStatus.FAILED, ctx.now)
        out.failed.append(row.id)
    else:
        _finish_task(ws, row, TaskStatus.CANCELLED, ctx.now, error=conditions.CANCELLED_ERROR)
        out.cancelled.append(row.id)
    return True


def _rejudge(
    ctx: Context, ws: WorkingSet, row: TaskRow, state: conditions.WaitState, out: Outcome
) -> None:
    """A waiting task's sleep fell due or an event reached it: judge it again."""
    run = ws.runs[row.run_id]
    if run.status is not RunStatus.QUEUED:
        return
    verdict = _judge(ctx, ws, run, row, state)
    if verdict is not conditions.Verdict.WAIT and _settle_judged(ctx, ws, run, row, verdict, out):
        _advance(ctx, ws, run, out)


def _advance(ctx: Context, ws: WorkingSet, run: RunRow, out: Outcome) -> None:
    """Queue the tasks whose parents all completed (once their conditions allow), skip those
    below a failure, and settle the run once every task is terminal."""
    if run.status is not RunStatus.QUEUED:
        return  # already finished
    tasks = ws.run_tasks[run.id]
    wf = ctx.versions[run.version_id]
    while True:
        to_queue, to_skip = dag.ready(tasks, wf)
        for row in to_skip:
            _finish_task(ws, row, TaskStatus.SKIPPED, ctx.now, error=dag.SKIPPED_ERROR)
        ended = False
        for row in to_queue:
            if not wf.step(row.readable_id).conditions:
                enqueue(ctx, ws, run, row, out)
                continue
            verdict = _judge(ctx, ws, run, row, conditions.WaitState(ctx.now))
            if verdict is not conditions.Verdict.WAIT:
                ended = _settle_judged(ctx, ws, run, row, verdict, out) or ended
        if not ended:
            break  # a task a condition ended may have made its children ready
    status = dag.run_status(tasks)
    if status is not None:
        run.status = status
        run.finished_at = ctx.now
        ws.changes.run(run)
        done = details(run, tasks)
        out.finished.append(done)
        if run.parent_task_id:
            out.children_done.append((run.parent_task_id, done))


def _fail_or_retry(
    ctx: Context,
    ws: WorkingSet,
    row: TaskRow,
    error: str,
    out: Outcome,
    *,
    should_not_retry: bool = False,
    retry_after_ms: int | None = None,
    holds_slot: bool = False,
    attempt_outcome: str = "failed",
) -> None:
    """An attempt failed in user code (or timed out): retry while retries remain, else the
    task fails and its run moves on."""
    tdef = definition(ctx, ws, row)
    if retry.may_retry(row, tdef, should_not_retry):
        delay = retry.retry_delay(
            row.app_retries + 1, tdef.backoff_factor, tdef.backoff_max_s, retry_after_ms
        )
        row.error = error
        end_attempt(ws, row, attempt_outcome, ctx.now, holds_slot=holds_slot)
        out.queued.append(
            _retry(ws, row, tdef, ctx.now, delay=delay, app_failure=True, lost=False, error=error)
        )
        return
    if holds_slot:
        row.error = error
        end_attempt(ws, row, attempt_outcome, ctx.now, holds_slot=True)
    _finish_task(ws, row, TaskStatus.FAILED, ctx.now, error=error)
    out.failed.append(row.id)
    _advance(ctx, ws, ws.runs[row.run_id], out)


def _live(
    ws: WorkingSet, tenant_id: str, task_id: str, retry_count: int, worker_id: str
) -> TaskRow | None:
    row = ws.tasks.get(task_id)
    if (
        row is None
        or row.tenant_id != tenant_id
        or row.status is not TaskStatus.RUNNING
        or row.retry_count != retry_count
        or row.worker_id != worker_id
    ):
        return None
    return row


def _free_ended(
    ctx: Context, ws: WorkingSet, task_id: str, retry_count: int, worker_id: str
) -> RunningTask | None:
    """The body of an attempt the engine already ended has returned: the slot it kept is
    free now."""
    attempt = ws.attempts.get((task_id, retry_count))
    if attempt is None or not attempt.holds_slot or attempt.worker_id != worker_id:
        return None
    attempt.holds_slot = False
    ws.changes.attempt(attempt)
    row = ws.tasks[task_id]
    return RunningTask(
        task_id, worker_id, retry_count, definition(ctx, ws, row).slot_requests, False
    )


# ---------------------------------------------------------------------- runs


def _create_run(ctx: Context, ws: WorkingSet, new: NewRun, seq: int, out: Outcome) -> None:
    """Add a new run with every task of its definition; its root tasks are queued."""
    now = ctx.now
    wf = new.workflow
    links = new.links
    run = RunRow(
        first_seq=seq,
        id=new.id,
        tenant_id=wf.tenant_id,
        workflow_id=wf.id,
        workflow_name=wf.name,
        version_id=wf.version_id,
        status=RunStatus.QUEUED,
        input=new.input,
        additional_metadata=new.additional_metadata,
        priority=new.priority,
        task_count=len(wf.tasks),
        sticky=wf.sticky,
        # A sticky child run is pinned to its parent's worker from the start.
        sticky_worker_id=new.desired_worker_id if wf.sticky else None,
        desired_labels=labels_json(new.desired_labels),
        created_at=now,
        parent_run_id=links.parent_run_id,
        parent_task_id=links.parent_task_id,
        child_index=links.child_index,
        child_key=links.child_key,
        event_id=links.event_id,
        event_key=links.event_key,
        triggered_by=links.triggered_by,
        filter_payload=links.filter_payload,
    )
    gates = new.gates or tuple(() for _ in new.task_ids)
    rates = new.rates or tuple(() for _ in new.task_ids)
    rows: list[TaskRow] = []
    judged = False  # a root task with conditions is judged at once
    for task_id, tdef, g, r in zip(new.task_ids, wf.tasks, gates, rates, strict=True):
        root = not tdef.parents and not tdef.on_failure
        if root and tdef.conditions:
            root, judged = False, True
        row = TaskRow(
            seq=seq,
            id=task_id,
            tenant_id=wf.tenant_id,
            run_id=new.id,
            readable_id=tdef.readable_id,
            action_id=tdef.action_id,
            status=TaskStatus.QUEUED if root else TaskStatus.PENDING,
            priority=new.priority,
            desired_worker_id=new.desired_worker_id if root else None,
            claims=claims_json(g, r),
            created_at=now,
        )
        seq += 1
        if root:
            row.queued_at = now
            row.schedule_deadline = now + tdef.schedule_timeout_s
        rows.append(row)
    ws.add_run(run, rows)
    for row, tdef in zip(rows, wf.tasks, strict=True):
        if row.status is TaskStatus.QUEUED:
            out.queued.append(queue_item(row, run, tdef))
    if judged:
        _advance(ctx, ws, run, out)


def _idempotency_key(new: NewRun) -> tuple[str, str, str] | None:
    claim = new.idempotency
    return None if claim is None else (new.workflow.tenant_id, claim.workflow_id, claim.key)


def _take_key(ctx: Context, ws: WorkingSet, new: NewRun) -> str | None:
    """Take the run's idempotency key; returns the run holding it instead, if one does."""
    claim = new.idempotency
    key = _idempotency_key(new)
    if claim is None or key is None:
        return None
    held = ws.idempotency.get(key)
    if (
        held is not None
        and held.expires_at > ctx.now
        and (held.method != IdempotencyMethod.STATUS or not held.run_finished)
    ):
        return held.run_id
    row = IdempotencyRow(key[0], key[1], key[2], new.id, claim.expires_at, str(claim.method))
    ws.idempotency[key] = row
    ws.changes.idempotency.append(row)
    return None


def _child_key(new: NewRun) -> tuple[str, str, str] | None:
    links = new.links
    if links.child_key is None or not links.parent_task_id:
        return None
    return (new.workflow.tenant_id, links.parent_task_id, links.child_key)


def create_run(
    ctx: Context,
    ws: WorkingSet,
    new: NewRun,
    seq: int,
    out: Outcome,
    collisions: list[Collision],
) -> str:
    """Create one run, at queue positions from ``seq``; returns its id. A child run whose
    key its parent task spawned already is not created again (its id is the existing
    run's); a run refused for an idempotency key another run holds is recorded in
    ``collisions`` (its id is "")."""
    key = _child_key(new)
    existing = ws.children.get(key) if key is not None else None
    if existing is not None:
        return existing
    holder = _take_key(ctx, ws, new)
    if holder is not None:
        collisions.append(Collision(holder, new.id))
        return ""
    _create_run(ctx, ws, new, seq, out)
    if key is not None:
        ws.children[key] = new.id
    return new.id


class CreateRuns(Op[list[str]]):
    """Write new runs with all their tasks (and the events that started them); the root
    tasks are queued. A child run whose key its parent task spawned already is not created
    again: its id is the existing run's."""

    def __init__(self, runs: Sequence[NewRun], events: Sequence[EventRecord] = ()) -> None:
        super().__init__()
        self.runs = runs
        self.events = events
        self.collisions: list[Collision] = []
        """Runs refused for an idempotency key another run holds (their ids are "")."""
        self.seqs = sum(len(r.task_ids) for r in runs)
        self.weight = max(1, self.seqs + len(events))

    def keys(self, keys: Keys) -> None:
        keys.event_waits.update((e.tenant_id, e.key) for e in self.events)
        for new in self.runs:
            key = _child_key(new)
            if key is not None:
                keys.child_keys.add(key)
            idem = _idempotency_key(new)
            if idem is not None:
                keys.idempotency_keys.add(idem)

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        out = self.outcome
        seq = ws.next_seq
        ws.next_seq += self.seqs
        ids: list[str] = []
        for new in self.runs:
            ids.append(create_run(ctx, ws, new, seq, out, self.collisions))
            seq += len(new.task_ids)
        ws.changes.new_events.extend(self.events)
        for event in self.events:
            _deliver(ctx, ws, event, out)
        out.applied = True
        self._result = ids


def _deliver(ctx: Context, ws: WorkingSet, event: EventRecord, out: Outcome) -> None:
    """Hand an event to the tasks waiting for its key."""
    arrived = conditions.ArrivedEvent(
        event.key,
        json.loads(event.payload),
        metadata_object(event.additional_metadata),
        event.scope,
        event.created_at,
    )
    from hewer.engine.core import durable  # it builds on this module

    for task_id in ws.waiters.get((event.tenant_id, event.key), ()):
        row = ws.tasks.get(task_id)
        log = ws.durable.get(task_id)
        if row is not None and log is not None and log.invocation:
            if durable.alive(row, log):
                durable.deliver(ctx, ws, row, log, arrived, out)
            else:
                durable.drop(ws, row)
            continue
        if row is None or row.waiting is None or row.status is not TaskStatus.PENDING:
            ws.changes.waits_dropped.add(task_id)  # a wait left behind: tidy it
            continue
        tdef = definition(ctx, ws, row)
        try:
            state = conditions.hit(
                tdef.conditions, conditions.WaitState.from_text(row.waiting), arrived
            )
        except HewerError:
            continue  # an expression this payload cannot satisfy: not a match
        _rejudge(ctx, ws, row, state, out)


class Wake(Op[int]):
    """Waiting tasks whose next sleep condition fell due are judged again."""

    def __init__(self, task_ids: Sequence[str]) -> None:
        super().__init__()
        self.task_ids = list(task_ids)
        self.weight = max(1, len(self.task_ids))

    def keys(self, keys: Keys) -> None:
        keys.task_ids.update(self.task_ids)
        keys.durable.update(self.task_ids)

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        from hewer.engine.core import durable  # it builds on this module

        woken = 0
        for task_id in self.task_ids:
            row = ws.tasks.get(task_id)
            log = ws.durable.get(task_id)
            if row is not None and log is not None and log.invocation:
                woken += 1
                if durable.alive(row, log):
                    durable.wake(ctx, ws, row, log, self.outcome)
                else:
                    durable.drop(ws, row)
                continue
            if row is None or row.waiting is None or row.status is not TaskStatus.PENDING:
                continue
            woken += 1
            _rejudge(ctx, ws, row, conditions.WaitState.from_text(row.waiting), self.outcome)
        self.outcome.applied = woken > 0
        self._result = woken


@dataclass(frozen=True, slots=True)
class Collision:
    """A run not created: the run holding its idempotency key, and the id it would have had."""

    existing_run_id: str
    colliding_run_id: str


@dataclass(frozen=True, slots=True)
class Firing:
    """A run a scheduled run or a cron tick starts, if it is still due when applied: the
    scheduled run not fired yet, the cron's next tick still ``tick`` (then ``next_tick``).
    Without a run (its workflow is gone) the scheduled run or tick is used up all the same."""

    run: NewRun | None
    schedule_id: str | None = None
    cron_id: str | None = None
    tick: float = 0.0
    next_tick: float = 0.0


class FireTriggers(Op[list[str]]):
    """Start the runs of due scheduled runs and cron ticks, each at most once: fenced on the
    row it fires (locked by the load), in the transaction that creates its run."""

    def __init__(self, firings: Sequence[Firing]) -> None:
        super().__init__()
        self.firings = firings
        self.seqs = sum(len(f.run.task_ids) for f in firings if f.run is not None)
        self.weight = max(1, self.seqs)

    def keys(self, keys: Keys) -> None:
        for f in self.firings:
            idem = _idempotency_key(f.run) if f.run is not None else None
            if idem is not None:
                keys.idempotency_keys.add(idem)
            if f.schedule_id is not None:
                keys.schedule_ids.add(f.schedule_id)
            if f.cron_id is not None:
                keys.cron_ids.add(f.cron_id)

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        out = self.outcome
        seq = ws.next_seq
        ws.next_seq += self.seqs
        started: list[str] = []
        for f in self.firings:
            if f.schedule_id is not None:
                schedule = ws.schedules.get(f.schedule_id)
                if schedule is None or schedule.run_id is not None:
                    continue  # deleted, or fired already
                schedule.run_id = f.run.id if f.run is not None else ""
                ws.changes.schedules_fired[schedule.id] = schedule.run_id
            elif f.cron_id is not None:
                cron = ws.crons.get(f.cron_id)
                if cron is None or not cron.enabled or cron.next_at != f.tick:
                    continue  # deleted, or this tick fired already
                cron.next_at = f.next_tick
                ws.changes.cron_next[cron.id] = f.next_tick
            if f.run is None or _take_key(ctx, ws, f.run) is not None:
                continue  # nothing to start, or its key is held: the tick is used up
            _create_run(ctx, ws, f.run, seq, out)
            seq += len(f.run.task_ids)
            started.append(f.run.id)
        out.applied = bool(started)
        self._result = started


class Assign(Op[list[DispatchInfo]]):
    """Scheduler decisions; a task no longer queued at that attempt is refused."""

    def __init__(self, assignments: Sequence[Assignment]) -> None:
        super().__init__()
        self.assignments = assignments
        self.refused: list[Assignment] = []

    def keys(self, keys: Keys) -> None:
        keys.task_ids.update(a.task_id for a in self.assignments)

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        now = ctx.now
        out: list[DispatchInfo] = []
        for a in self.assignments:
            row = ws.tasks.get(a.task_id)
            if (
                row is None
                or row.status is not TaskStatus.QUEUED
                or row.retry_count != a.retry_count
            ):
                self.refused.append(a)
                continue
            run = ws.runs[row.run_id]
            wf = ctx.versions[run.version_id]
            tdef = wf.step(row.readable_id)
            row.status = TaskStatus.RUNNING
            row.worker_id = a.worker_id
            row.acked = False
            row.slot_released = False
            row.assigned_at = now
            row.started_at = None
            row.timeout_at = now + tdef.timeout_s
            ws.changes.task(row)
            if run.sticky is not None and run.sticky_worker_id is None:
                # A sticky run is pinned to the worker of its first assigned task.
                run.sticky_worker_id = a.worker_id
                ws.changes.run(run)
            parents: dict[str, str] = {}
            if tdef.parents:
                wanted = set(tdef.parents)
                for t in ws.run_tasks.get(run.id, ()):
                    if t.readable_id in wanted and t.status is TaskStatus.COMPLETED:
                        parents[t.readable_id] = t.output or "{}"
            errors = None
            if tdef.on_failure:
                errors = {
                    t.readable_id: t.error or "failed"
                    for t in ws.run_tasks.get(run.id, ())
                    if t.status is TaskStatus.FAILED
                }
            out.append(
                DispatchInfo(
                    task_id=row.id,
                    tenant_id=row.tenant_id,
                    worker_id=a.worker_id,
                    run_id=run.id,
                    step_id=f"{wf.id}:{row.readable_id}",
                    workflow_id=wf.id,
                    workflow_version_id=wf.version_id,
                    readable_id=row.readable_id,
                    action_id=row.action_id,
                    retry_count=row.retry_count,
                    priority=row.priority,
                    input=run.input,
                    parents=parents,
                    additional_metadata=run.additional_metadata,
                    links=run.links,
                    errors=errors,
                )
            )
        self.outcome.applied = bool(out)
        self._result = out


# ---------------------------------------------------------------------- reports


class Report(Op[EventOutcome]):
    """A worker's report about one attempt."""

    def __init__(self, event: TaskEvent) -> None:
        super().__init__()
        self.event = event

    def keys(self, keys: Keys) -> None:
        keys.task_ids.add(self.event.task_id)

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        e = self.event
        out = self.outcome
        row = _live(ws, e.tenant_id, e.task_id, e.retry_count, e.worker_id)
        if row is None:
            out.reason = "attempt is not live"
            known = ws.tasks.get(e.task_id)
            # The engine already ended this attempt; its body has now really returned.
            if (
                e.type is not EventType.STARTED
                and known is not None
                and known.tenant_id == e.tenant_id
                and (freed := _free_ended(ctx, ws, e.task_id, e.retry_count, e.worker_id))
            ):
                out.freed.append(freed)
            self._result = out.freeze()
            return
        if e.type is EventType.STARTED:
            if not row.acked:
                row.acked = True
                row.started_at = ctx.now
                ws.changes.task(row)
            out.applied = True
            self._result = out.freeze()
            return
        if e.type is EventType.CANCELLED:
            out.reason = "CANCELLED for a live attempt"
            self._result = out.freeze()
            return
        tdef = definition(ctx, ws, row)
        if not row.slot_released:
            out.freed.append(running(row, tdef.slot_requests))
        out.applied = True
        out.ended.append(row.id)
        if e.type is EventType.COMPLETED:
            _finish_task(ws, row, TaskStatus.COMPLETED, ctx.now, output=e.payload)
            _advance(ctx, ws, ws.runs[row.run_id], out)
        else:
            _fail_or_retry(
                ctx,
                ws,
                row,
                e.payload,
                out,
                should_not_retry=e.should_not_retry,
                retry_after_ms=e.retry_after_ms,
            )
        self._result = out.freeze()


# ---------------------------------------------------------------------- time-based endings


@dataclass(frozen=True, slots=True)
class Judged:
    """An attempt a sweep judged (fenced on exactly this attempt)."""

    tenant_id: str
    task_id: str
    retry_count: int
    worker_id: str


class TimeOut(Op[EventOutcome]):
    """Attempts past their execution timeout fail (retried if retries remain); their
    workers are told to cancel them."""

    def __init__(self, judged: Sequence[Judged]) -> None:
        super().__init__()
        self.judged = judged
        self.weight = max(1, len(judged))

    def keys(self, keys: Keys) -> None:
        keys.task_ids.update(j.task_id for j in self.judged)

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        out = self.outcome
        for j in self.judged:
            row = _live(ws, j.tenant_id, j.task_id, j.retry_count, j.worker_id)
            if row is None:
                continue
            tdef = definition(ctx, ws, row)
            held = running(row, tdef.slot_requests)
            out.stop.append(held)
            out.ended.append(row.id)
            keeps = j.worker_id in ctx.keepers and not row.slot_released
            if not keeps and not row.slot_released:
                out.freed.append(held)
            _fail_or_retry(
                ctx, ws, row, TIMEOUT_ERROR, out, holds_slot=keeps, attempt_outcome="timed_out"
            )
        out.applied = bool(out.stop)
        self._result = out.freeze()


class Requeue(Op[EventOutcome]):
    """Attempts that were lost get a new attempt, fenced on (task, attempt, worker). With
    ``count`` the loss counts as a reassignment (capped: at the cap the task fails). Given
    ``worker_id`` instead of attempts: every running task of that worker whose slot was not
    released (those stay with their worker, as upstream)."""

    def __init__(
        self,
        reason: str,
        *,
        attempts: Sequence[Judged] = (),
        worker_id: str | None = None,
        count: bool = True,
    ) -> None:
        super().__init__()
        self.reason = reason
        self.attempts = attempts
        self.worker_id = worker_id
        self.count = count
        self.weight = max(1, len(attempts))

    def keys(self, keys: Keys) -> None:
        keys.task_ids.update(a.task_id for a in self.attempts)
        if self.worker_id is not None:
            keys.running_on.add(self.worker_id)

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        out = self.outcome
        targets: list[tuple[Judged, TaskRow | None]] = [
            (j, _live(ws, j.tenant_id, j.task_id, j.retry_count, j.worker_id))
            for j in self.attempts
        ]
        if self.worker_id is not None:
            targets.extend(
                (Judged(t.tenant_id, t.id, t.retry_count, self.worker_id), t)
                for t in ws.running_on.get(self.worker_id, ())
                if t.status is TaskStatus.RUNNING and not t.slot_released
            )
        for j, row in targets:
            if row is None:
                # A start that never reached its worker, for a task the engine has since
                # ended: nothing runs it, so its slot is free.
                attempt = ws.attempts.get((j.task_id, j.retry_count))
                if attempt is not None and attempt.started_at is None:
                    freed = _free_ended(ctx, ws, j.task_id, j.retry_count, j.worker_id)
                    if freed is not None:
                        out.freed.append(freed)
                continue
            tdef = definition(ctx, ws, row)
            out.ended.append(row.id)
            if not row.slot_released:
                out.freed.append(running(row, tdef.slot_requests))
            reason = f"{self.reason} (worker {j.worker_id})" if self.worker_id else self.reason
            end_attempt(ws, row, "lost", ctx.now, holds_slot=False)
            if self.count and retry.gives_up(row, ctx.max_reassignments):
                error = f"worker lost: {reason}; gave up after {row.reassignments} reassignment(s)"
                _finish_task(ws, row, TaskStatus.FAILED, ctx.now, error=error)
                out.failed.append(row.id)
                _advance(ctx, ws, ws.runs[row.run_id], out)
                continue
            out.queued.append(
                _retry(
                    ws,
                    row,
                    tdef,
                    ctx.now,
                    delay=0.0,
                    app_failure=False,
                    lost=self.count,
                    error=reason,
                )
            )
        out.applied = bool(out.queued) or bool(out.failed)
        self._result = out.freeze()


class Cancel(Op[EventOutcome]):
    """Cancel tasks (and runs, given run ids) that are not terminal yet. Running attempts on
    keeper workers keep their slots until those workers report that the body returned."""

    def __init__(self, tenant_id: str, ids: Sequence[str], reason: str) -> None:
        super().__init__()
        self.tenant_id = tenant_id
        self.ids = list(dict.fromkeys(ids))
        self.reason = reason
        self.weight = max(1, len(self.ids))

    def keys(self, keys: Keys) -> None:
        keys.task_ids.update(self.ids)
        keys.run_ids.update(self.ids)

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        out = self.outcome
        targets: list[TaskRow] = []
        for ident in self.ids:
            run = ws.runs.get(ident)
            if run is not None and run.tenant_id == self.tenant_id:
                targets.extend(ws.run_tasks.get(ident, ()))
            elif (row := ws.tasks.get(ident)) is not None:
                targets.append(row)
        touched: dict[str, RunRow] = {}
        seen: set[str] = set()
        for row in targets:
            if row.id in seen or row.tenant_id != self.tenant_id or row.status.terminal:
                continue
            seen.add(row.id)
            was_running = row.status is TaskStatus.RUNNING
            if was_running:
                tdef = definition(ctx, ws, row)
                held = running(row, tdef.slot_requests)
                out.stop.append(held)
                keeps = row.worker_id in ctx.keepers and not row.slot_released
                if keeps:
                    end_attempt(ws, row, "cancelled", ctx.now, holds_slot=True)
                elif not row.slot_released:
                    out.freed.append(held)
            _finish_task(ws, row, TaskStatus.CANCELLED, ctx.now, error=self.reason)
            out.cancelled.append(row.id)
            touched[row.run_id] = ws.runs[row.run_id]
        for run in touched.values():
            _advance(ctx, ws, run, out)
        out.ended.extend(out.cancelled)
        out.applied = bool(out.cancelled)
        self._result = out.freeze()


class ReleaseSlot(Op[RunningTask]):
    """The task gives its slot back while it runs on."""

    def __init__(self, tenant_id: str, task_id: str) -> None:
        super().__init__()
        self.tenant_id = tenant_id
        self.task_id = task_id

    def keys(self, keys: Keys) -> None:
        keys.task_ids.add(self.task_id)

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        row = ws.tasks.get(self.task_id)
        if (
            row is None
            or row.tenant_id != self.tenant_id
            or row.status is not TaskStatus.RUNNING
            or row.slot_released
        ):
            self.error = NotFound(f"no running task {self.task_id!r} holding a slot")
            return
        held = running(row, definition(ctx, ws, row).slot_requests)
        row.slot_released = True
        ws.changes.task(row)
        self.outcome.freed.append(held)
        self.outcome.applied = True
        self._result = held


class RefreshTimeout(Op[float]):
    def __init__(self, tenant_id: str, task_id: str, seconds: float) -> None:
        super().__init__()
        self.tenant_id = tenant_id
        self.task_id = task_id
        self.seconds = seconds

    def keys(self, keys: Keys) -> None:
        keys.task_ids.add(self.task_id)

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        row = ws.tasks.get(self.task_id)
        if row is None or row.tenant_id != self.tenant_id or row.status is not TaskStatus.RUNNING:
            self.error = NotFound(f"no running task {self.task_id!r}")
            return
        row.timeout_at = max(row.timeout_at or ctx.now, ctx.now) + self.seconds
        ws.changes.task(row)
        self._result = row.timeout_at


# ---------------------------------------------------------------------- lost workers


class Recall(Op[list[RunningTask]]):
    """A worker declared lost is back: the attempts taken from it (lost since ``since``)
    may still run there; with ``hold`` they take their slots again until it reports that
    they ended."""

    def __init__(self, worker_id: str, hold: bool, since: float) -> None:
        super().__init__()
        self.worker_id = worker_id
        self.hold = hold
        self.since = since

    def keys(self, keys: Keys) -> None:
        keys.attempts_of.add(self.worker_id)

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        out: list[RunningTask] = []
        for a in ws.attempts_of.get(self.worker_id, ()):
            if a.outcome != "lost" or (a.finished_at or 0.0) < self.since:
                continue
            a.holds_slot = self.hold
            ws.changes.attempt(a)
            row = ws.tasks[a.task_id]
            out.append(
                RunningTask(
                    a.task_id,
                    self.worker_id,
                    a.retry_count,
                    definition(ctx, ws, row).slot_requests,
                    False,
                )
            )
        self._result = out


class DropAttempts(Op[int]):
    """The worker is gone: none of its ended attempts holds a slot any more."""

    def __init__(self, worker_id: str) -> None:
        super().__init__()
        self.worker_id = worker_id

    def keys(self, keys: Keys) -> None:
        keys.attempts_of.add(self.worker_id)

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        n = 0
        for a in ws.attempts_of.get(self.worker_id, ()):
            if a.holds_slot:
                a.holds_slot = False
                a.finished_at = a.finished_at or ctx.now
                ws.changes.attempt(a)
                n += 1
        self._result = n


# ---------------------------------------------------------------------- workers and logs


class InsertWorker(Op[None]):
    def __init__(self, record: WorkerRecord) -> None:
        super().__init__()
        self.record = record

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        ws.changes.new_workers.append(self.record)


class SetWorkerStatus(Op[None]):
    def __init__(self, worker_id: str, status: WorkerStatus, reason: str) -> None:
        super().__init__()
        self.worker_id = worker_id
        self.status = status
        self.reason = reason

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        ws.changes.worker_status[self.worker_id] = (self.status, self.reason, ctx.now)


class Heartbeat(Op[None]):
    def __init__(self, worker_id: str) -> None:
        super().__init__()
        self.worker_id = worker_id

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        ws.changes.heartbeats[self.worker_id] = ctx.now


class SetLabels(Op[None]):
    def __init__(self, worker_id: str, labels: dict[str, str | int]) -> None:
        super().__init__()
        self.worker_id = worker_id
        self.labels = labels

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        ws.changes.worker_labels[self.worker_id] = self.labels


class PutLogs(Op[None]):
    def __init__(self, tenant_id: str, lines: Sequence[LogLine]) -> None:
        super().__init__()
        self.tenant_id = tenant_id
        self.lines = lines
        self.weight = max(1, len(lines))

    def apply(self, ctx: Context, ws: WorkingSet) -> None:
        ws.changes.logs.extend((self.tenant_id, line) for line in self.lines)


__all__ = [
    "Assign",
    "Cancel",
    "Collision",
    "Context",
    "CreateRuns",
    "DropAttempts",
    "FireTriggers",
    "Firing",
    "Heartbeat",
    "InsertWorker",
    "Judged",
    "Op",
    "Outcome",
    "PutLogs",
    "Recall",
    "RefreshTimeout",
    "ReleaseSlot",
    "Report",
    "Requeue",
    "SetLabels",
    "SetWorkerStatus",
    "TimeOut",
    "Wake",
    "details",
    "queue_item",
    "queued_item",
]
