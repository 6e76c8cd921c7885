"""Store conformance for durable tasks: a task's event log written whole and read back,
its waits woken by the sleep table and by events, memoised values, eviction and resume,
replay by a later invocation, stale invocations and non-determinism. Runs against every
backend."""

from __future__ import annotations

import uuid

import pytest

from hewer.domain import (
    ConditionAction,
    ConditionKind,
    ConditionSpec,
    DurableKind,
    EventRecord,
    EventType,
    NewRun,
    RunLinks,
    TaskDef,
    TaskEvent,
    TaskStatus,
)
from hewer.engine.core import durable
from hewer.engine.core.transitions import CreateRuns, Report, Wake, details
from hewer.store import Store
from tests.store.conftest import NOW, Machine, tenant

SLEEP = ConditionSpec(ConditionKind.SLEEP, ConditionAction.QUEUE, "s", "s", sleep_s=10.0)
GO = ConditionSpec(
    ConditionKind.EVENT, ConditionAction.QUEUE, "e", "e", expression="input.ok", event_key="go"
)


async def _running(machine: Machine, t: str) -> str:
    wf = await machine.workflow(
        t, "durable", [TaskDef("d", "durable:d", durable=True, slot_requests={"durable": 1})]
    )
    new = await machine.run(wf)
    await machine.assign(new.id, t)
    return new.id


def _event(t: str, id: str, ok: bool, at: float) -> CreateRuns:
    payload = '{"ok":true}' if ok else '{"ok":false}'
    return CreateRuns([], [EventRecord(id, t, "go", payload, None, None, None, at)])


async def test_a_durable_sleep_is_woken_and_its_log_kept(store: Store, machine: Machine) -> None:
    t = await tenant(store)
    task = await _running(machine, t)
    node = await machine.one(durable.WaitFor(t, "w1", task, 1, [SLEEP], "nap"))
    assert node == 1
    log = await store.durable_get(t, task)
    assert log is not None and not log.evicted
    (entry,) = log.entries.values()
    assert (entry.kind, entry.done, entry.label, entry.created_at) == (
        DurableKind.WAIT,
        False,
        "nap",
        NOW,
    )
    assert await store.durable_get("another-tenant", task) is None
    # Waiting is not running: no execution deadline meanwhile.
    assert [r.timeout_at for r in await store.tasks_list(t)] == [None]
    assert [r.id for r in await store.tasks_wake_due(NOW + 9, 10)] == []
    assert [r.id for r in await store.tasks_wake_due(NOW + 10, 10)] == [task]
    machine.now = NOW + 10
    wake = Wake([task])
    await machine.one(wake)
    assert wake.outcome.durable == [(t, task)]
    log = await store.durable_get(t, task)
    assert log is not None
    assert log.entries[1].done and log.entries[1].order == 1
    assert log.entries[1].payload == '{"CREATE":{"s":[{"sleep_duration":"10s"}]}}'
    assert await store.tasks_wake_due(NOW + 100, 10) == []
    # Running again: the timeout counts from now.
    (row,) = await store.tasks_list(t)
    assert row.status is TaskStatus.RUNNING and row.timeout_at == NOW + 10 + 60


async def test_an_event_satisfies_a_durable_wait_that_matches(
    store: Store, machine: Machine
) -> None:
    t = await tenant(store)
    task = await _running(machine, t)
    await machine.one(durable.WaitFor(t, "w1", task, 1, [GO], None))
    await machine.one(_event(t, "e1", False, NOW + 1))
    log = await store.durable_get(t, task)
    assert log is not None and not log.entries[1].done
    await machine.one(_event(t, "e2", True, NOW + 2))
    log = await store.durable_get(t, task)
    assert log is not None and log.entries[1].done
    assert log.entries[1].payload == '{"CREATE":{"e":[{"ok":true}]}}'
    # The task still runs (a durable wait does not take it off its worker).
    (row,) = await store.tasks_list(t)
    assert row.status is TaskStatus.RUNNING


async def test_a_later_invocation_replays_the_log(store: Store, machine: Machine) -> None:
    t = await tenant(store)
    task = await _running(machine, t)
    ack = await machine.one(durable.Memo(t, "w1", task, 1, b"k1"))
    assert ack == durable.MemoAck(1, False, None)
    await machine.one(durable.CompleteMemo(t, "w1", task, 1, 1, b"k1", b"42"))
    assert await machine.one(durable.WaitFor(t, "w1", task, 1, [SLEEP], None)) == 2
    # An invocation that is not the live one is refused as stale.
    with pytest.raises(durable.StaleInvocation):
        await machine.one(durable.Memo(t, "w1", task, 2, b"k1"))
    with pytest.raises(durable.StaleInvocation):
        await machine.one(durable.Memo(t, "w2", task, 1, b"k1"))
    # Evicted, then resumed once its sleep is due: invocation 2 replays nodes 1 and 2.
    assert await machine.one(durable.Evict(t, "w1", task, 1)) is True
    log = await store.durable_get(t, task)
    assert log is not None and log.evicted
    assert await store.durable_evicted(10) == [(t, task)]
    (row,) = await store.tasks_list(t)
    assert (row.status, row.worker_id, row.retry_count) == (TaskStatus.PENDING, None, 1)
    machine.now = NOW + 10
    wake = Wake([task])
    await machine.one(wake)
    assert [q.task_id for q in wake.outcome.queued] == [task]
    (row,) = await store.tasks_list(t)
    assert row.status is TaskStatus.QUEUED
    assert await store.durable_evicted(10) == []
    await machine.assign(task, t, worker="w2", retry=1)
    # Asking at a node for another kind of thing than the log holds is non-determinism,
    # as is a memo of other arguments; a refused request changes nothing.
    for refused in (
        durable.WaitFor(t, "w2", task, 2, [SLEEP], None),
        durable.Memo(t, "w2", task, 2, b"k2"),
    ):
        with pytest.raises(durable.NonDeterminism):
            await machine.one(refused)
    assert await machine.one(durable.Memo(t, "w2", task, 2, b"k1")) == durable.MemoAck(
        1, True, b"42"
    )
    assert await machine.one(durable.WaitFor(t, "w2", task, 2, [SLEEP], None)) == 2
    log = await store.durable_get(t, task)
    assert log is not None and log.entries[2].done
    # Past the log's end, nodes are new.
    assert await machine.one(durable.WaitFor(t, "w2", task, 2, [GO], None)) == 3


async def test_an_evicted_task_resumes_when_its_child_run_finishes(
    store: Store, machine: Machine
) -> None:
    t = await tenant(store)
    task = await _running(machine, t)
    child_wf = await machine.workflow(t, "child", [TaskDef("c", "child:c")])
    child_id = str(uuid.uuid4())
    new = NewRun(
        child_id, child_wf, "{}", None, 1, (child_id,), links=RunLinks(parent_task_id=task)
    )
    entries = await machine.one(durable.TriggerChildren(t, "w1", task, 1, [new]))
    assert entries == [(1, child_id)]
    await machine.one(durable.Evict(t, "w1", task, 1))
    await machine.assign(child_id, t, worker="w3")
    await machine.one(
        Report(TaskEvent(t, child_id, 0, "w3", EventType.COMPLETED, '{"r":2}', False))
    )
    found = await store.run_get(t, child_id)
    assert found is not None
    done = durable.ChildDone.of(task, details(*found))
    assert done.payload == '{"c":{"r":2}}' and not done.failure
    op = durable.ChildrenDone([done])
    assert await machine.one(op) == 1
    (row,) = [r for r in await store.tasks_list(t) if r.id == task]
    assert row.status is TaskStatus.QUEUED
    log = await store.durable_get(t, task)
    assert log is not None and not log.evicted and log.entries[1].done
