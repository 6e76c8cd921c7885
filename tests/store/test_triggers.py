"""Store conformance for what starts runs besides a trigger: events (stored with their
runs), scheduled runs and crons (fired once, fenced on their row), child keys, idempotency
keys and on-failure tasks. Runs against every backend."""

from __future__ import annotations

import uuid

import pytest

from hewer.domain import (
    ConditionAction,
    ConditionKind,
    ConditionSpec,
    CronRecord,
    EventRecord,
    EventType,
    IdempotencyClaim,
    IdempotencyMethod,
    NewRun,
    RunLinks,
    RunStatus,
    ScheduleRecord,
    TaskDef,
    TaskEvent,
    TaskStatus,
)
from hewer.engine.core.transitions import CreateRuns, FireTriggers, Firing, Report, Wake
from hewer.errors import AlreadyExists
from hewer.store import Store
from tests.store.conftest import NOW, Machine, tenant


def _new(machine: Machine, wf: object, **kw: object) -> NewRun:
    run_id = str(uuid.uuid4())
    return NewRun(run_id, wf, "{}", None, 1, (run_id,), **kw)  # type: ignore[arg-type]


async def test_an_event_is_stored_with_the_runs_it_starts(store: Store, machine: Machine) -> None:
    t = await tenant(store)
    wf = await machine.workflow(t, "on-event", [TaskDef("a", "on-event:a")])
    event = EventRecord("e1", t, "user:new", '{"u":1}', '{"m":2}', 2, "s", NOW)
    links = RunLinks(event_id="e1", event_key="user:new", triggered_by="event")
    new = _new(machine, wf, links=links)
    (ids,) = await machine.apply(CreateRuns([new], [event]))
    assert ids == [new.id]
    (stored,) = await store.events_list(t, None, 10, 0)
    assert stored == event
    assert await store.events_list(t, ["other"], 10, 0) == []
    assert await store.event_get(t, "e1") == event
    assert await store.event_get("another-tenant", "e1") is None
    run, _ = await store.run_get(t, new.id) or (None, None)
    assert run is not None
    assert (run.event_id, run.event_key, run.triggered_by) == ("e1", "user:new", "event")


async def test_a_scheduled_run_fires_once_and_a_deleted_one_never(
    store: Store, machine: Machine
) -> None:
    t = await tenant(store)
    wf = await machine.workflow(t, "later", [TaskDef("a", "later:a")])
    due = ScheduleRecord("s1", t, "later", NOW - 1, "{}", None, None, NOW - 10)
    gone = ScheduleRecord("s2", t, "later", NOW - 1, "{}", None, None, NOW - 10)
    future = ScheduleRecord("s3", t, "later", NOW + 60, "{}", None, None, NOW - 10)
    await store.schedule_insert([due, gone, future])
    assert {s.id for s in await store.schedules_due(NOW, 10)} == {"s1", "s2"}
    assert await store.schedule_next() == NOW - 1
    assert await store.schedule_delete(t, "s2")
    assert not await store.schedule_delete(t, "s2")
    first = _new(machine, wf)
    (started,) = await machine.apply(
        FireTriggers([Firing(first, schedule_id="s1"), Firing(_new(machine, wf), "s2")])
    )
    assert started == [first.id]
    # A second firing of the same row (another engine, a retry) starts nothing.
    assert await machine.one(FireTriggers([Firing(_new(machine, wf), schedule_id="s1")])) == []
    fired = await store.schedule_get(t, "s1")
    assert fired is not None and fired.run_id == first.id
    assert [s.id for s in await store.schedules_due(NOW, 10)] == []
    assert [s.id for s in await store.schedules_list(t, "later", 10, 0)] == ["s1", "s3"]
    assert len(await store.runs_list(t)) == 1


async def test_a_cron_tick_fires_once_and_declared_crons_are_replaced(
    store: Store, machine: Machine
) -> None:
    t = await tenant(store)
    wf = await machine.workflow(t, "ticker", [TaskDef("a", "ticker:a")])

    def cron(id: str, name: str, next_at: float, declared: bool = False) -> CronRecord:
        return CronRecord(
            id, t, "ticker", name, "* * * * *", "{}", None, None, NOW, next_at, declared
        )

    await store.cron_insert(cron("c1", "api", NOW - 1))
    with pytest.raises(AlreadyExists):
        await store.cron_insert(cron("c2", "api", NOW - 1))
    await store.crons_declare(t, "ticker", [cron("d1", "0 * * * *", NOW + 30, True)])
    # Declaring again keeps the tick planned for a kept expression, drops the others.
    await store.crons_declare(
        t, "ticker", [cron("d2", "0 * * * *", NOW + 99, True), cron("d3", "5 * * * *", 1, True)]
    )
    await store.crons_declare(t, "ticker", [cron("d4", "0 * * * *", NOW + 99, True)])
    listed = {c.name: c for c in await store.crons_list(t, "ticker", 10, 0)}
    assert set(listed) == {"api", "0 * * * *"}
    assert [c.id for c in await store.crons_list(t, None, 10, 0, name="api")] == ["c1"]
    assert listed["0 * * * *"].id == "d1" and listed["0 * * * *"].next_at == NOW + 30
    assert listed["0 * * * *"].declared and not listed["api"].declared
    assert [c.id for c in await store.crons_due(NOW, 10)] == ["c1"]
    assert await store.cron_next() == NOW - 1

    run = _new(machine, wf)
    tick = Firing(run, cron_id="c1", tick=NOW - 1, next_tick=NOW + 60)
    assert await machine.one(FireTriggers([tick])) == [run.id]
    # The same tick again (a stale judgement): fenced off by the row's next tick.
    again = Firing(_new(machine, wf), cron_id="c1", tick=NOW - 1, next_tick=NOW + 60)
    assert await machine.one(FireTriggers([again])) == []
    stored = await store.cron_get(t, "c1")
    assert stored is not None and stored.next_at == NOW + 60
    assert await store.crons_due(NOW, 10) == []
    assert await store.cron_delete(t, "c1") and await store.cron_get(t, "c1") is None
    assert len(await store.runs_list(t)) == 1


async def test_a_child_key_names_one_child_per_parent_task(store: Store, machine: Machine) -> None:
    t = await tenant(store)
    wf = await machine.workflow(t, "kid", [TaskDef("a", "kid:a")])
    links = RunLinks(parent_run_id="p", parent_task_id="pt", child_index=0, child_key="k")
    a, b = _new(machine, wf, links=links), _new(machine, wf, links=links)
    (ids,) = await machine.apply(CreateRuns([a, b]))
    assert ids == [a.id, a.id]  # the same key in one batch
    c = _new(machine, wf, links=links)
    assert await machine.one(CreateRuns([c])) == [a.id]  # and in a later one
    other = _new(machine, wf, links=RunLinks(parent_task_id="pt2", child_key="k"))
    assert await machine.one(CreateRuns([other])) == [other.id]
    assert sorted(await store.runs_children(t, ["pt", "pt2"])) == sorted([a.id, other.id])


async def test_idempotency_keys_refuse_while_held(store: Store, machine: Machine) -> None:
    t = await tenant(store)
    wf = await machine.workflow(t, "once", [TaskDef("a", "once:a")])

    def claim(key: str, method: IdempotencyMethod = IdempotencyMethod.TTL) -> IdempotencyClaim:
        return IdempotencyClaim(wf.id, key, NOW + 60, method)

    first = _new(machine, wf, idempotency=claim("k"))
    op = CreateRuns([first, _new(machine, wf, idempotency=claim("k"))])
    assert await machine.one(op) == [first.id, ""]
    assert [c.existing_run_id for c in op.collisions] == [first.id]
    later = CreateRuns([_new(machine, wf, idempotency=claim("k"))])
    assert await machine.one(later) == [""]
    # Past its TTL the key is free again.
    machine.now = NOW + 61
    free = _new(machine, wf, idempotency=claim("k"))
    assert await machine.one(CreateRuns([free])) == [free.id]

    # Status based: held while the run is unfinished only.
    machine.now = NOW
    held = _new(machine, wf, idempotency=claim("s", IdempotencyMethod.STATUS))
    await machine.one(CreateRuns([held]))
    refused = CreateRuns([_new(machine, wf, idempotency=claim("s", IdempotencyMethod.STATUS))])
    assert await machine.one(refused) == [""]
    await machine.assign(held.id, t)
    await machine.one(Report(TaskEvent(t, held.id, 0, "w1", EventType.COMPLETED, "{}")))
    taken = _new(machine, wf, idempotency=claim("s", IdempotencyMethod.STATUS))
    assert await machine.one(CreateRuns([taken])) == [taken.id]


async def test_the_on_failure_task_runs_only_after_a_failure(
    store: Store, machine: Machine
) -> None:
    t = await tenant(store)
    wf = await machine.workflow(
        t,
        "guarded",
        [TaskDef("a", "guarded:a"), TaskDef("handler", "guarded:handler", on_failure=True)],
    )

    async def run_to_end(outcome: EventType) -> dict[str, TaskStatus]:
        new = NewRun(str(uuid.uuid4()), wf, "{}", None, 1, (str(uuid.uuid4()), str(uuid.uuid4())))
        await machine.one(CreateRuns([new]))
        a, handler = new.task_ids
        await machine.assign(a, t)
        await machine.one(
            Report(
                TaskEvent(t, a, 0, "w1", outcome, "{}" if outcome is EventType.COMPLETED else "bad")
            )
        )
        found = await store.run_get(t, new.id)
        assert found is not None
        status = {row.readable_id: row.status for row in found[1]}
        if status["handler"] is TaskStatus.QUEUED:
            (dispatch,) = await machine.assign(handler, t)
            assert dispatch.errors == {"a": "bad"}
            await machine.one(Report(TaskEvent(t, handler, 0, "w1", EventType.COMPLETED, "{}")))
            found = await store.run_get(t, new.id)
            assert found is not None
            assert found[0].status is RunStatus.FAILED
        else:
            assert found[0].status is RunStatus.COMPLETED
        return {row.readable_id: row.status for row in found[1]}

    assert await run_to_end(EventType.COMPLETED) == {
        "a": TaskStatus.COMPLETED,
        "handler": TaskStatus.SKIPPED,
    }
    assert await run_to_end(EventType.FAILED) == {
        "a": TaskStatus.FAILED,
        "handler": TaskStatus.COMPLETED,
    }


async def test_a_waiting_task_keeps_its_wait_in_the_store(store: Store, machine: Machine) -> None:
    """Everything a waiting task needs is in its row: a fresh engine (a new machine over
    the same store) wakes it at its time, and an event reaches it."""
    t = await tenant(store)
    sleep = ConditionSpec(ConditionKind.SLEEP, ConditionAction.QUEUE, "g1", "sleep:5s", sleep_s=5.0)
    event = ConditionSpec(
        ConditionKind.EVENT, ConditionAction.QUEUE, "g2", "go", "input.ok", event_key="go"
    )
    wf = await machine.workflow(
        t,
        "gated",
        [
            TaskDef("a", "gated:a"),
            TaskDef("b", "gated:b", parents=("a",), conditions=(sleep, event)),
        ],
    )
    new = NewRun(str(uuid.uuid4()), wf, "{}", None, 1, (str(uuid.uuid4()), str(uuid.uuid4())))
    await machine.one(CreateRuns([new]))
    a, b = new.task_ids
    await machine.assign(a, t)
    await machine.one(Report(TaskEvent(t, a, 0, "w1", EventType.COMPLETED, "{}")))
    assert [x.id for x in await store.tasks_wake_due(NOW + 4, 10)] == []
    (due,) = await store.tasks_wake_due(NOW + 5, 10)
    assert due.id == b and due.status is TaskStatus.PENDING

    fresh = Machine(store)
    fresh.now = NOW + 5
    assert await fresh.one(Wake([b])) == 1
    found = await store.run_get(t, new.id)
    assert found is not None
    assert {r.readable_id: r.status for r in found[1]}["b"] is TaskStatus.PENDING  # the event
    assert await store.tasks_wake_due(NOW + 100, 10) == []  # no sleep left to wake it for

    def push(ok: bool, id: str) -> CreateRuns:
        payload = '{"ok":true}' if ok else '{"ok":false}'
        return CreateRuns([], [EventRecord(id, t, "go", payload, None, None, None, NOW + 6)])

    fresh.now = NOW + 6
    await fresh.one(push(False, "e1"))
    found = await store.run_get(t, new.id)
    assert found is not None and found[1][1].status is TaskStatus.PENDING
    await fresh.one(push(True, "e2"))
    found = await store.run_get(t, new.id)
    assert found is not None and found[1][1].status is TaskStatus.QUEUED
    assert found[1][1].waiting is None
