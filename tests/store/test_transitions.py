"""The task state machine over every store: each transition decided by the core on rows the
store loaded, written back by the store, and read back."""

from __future__ import annotations

import json

import pytest

from hewer.domain import (
    Assignment,
    EventType,
    RunStatus,
    TaskDef,
    TaskEvent,
    TaskStatus,
)
from hewer.engine.core.history import attempts
from hewer.engine.core.transitions import (
    Assign,
    Cancel,
    Judged,
    Recall,
    RefreshTimeout,
    ReleaseSlot,
    Report,
    Requeue,
    TimeOut,
    details,
)
from hewer.errors import NotFound
from hewer.store import Store
from tests.store.conftest import Machine, tenant

DAG = [
    TaskDef("a", "dag:a"),
    TaskDef("b", "dag:b", parents=("a",)),
    TaskDef("c", "dag:c", parents=("b",)),
]


def ev(
    tenant_id: str,
    task_id: str,
    kind: EventType,
    worker: str = "w1",
    retry: int = 0,
    payload: str = "",
    **kw: object,
) -> Report:
    return Report(TaskEvent(tenant_id, task_id, retry, worker, kind, payload, **kw))  # type: ignore[arg-type]


async def run_status(
    store: Store, tenant_id: str, run_id: str
) -> tuple[RunStatus, list[TaskStatus]]:
    found = await store.run_get(tenant_id, run_id)
    assert found is not None
    d = details(*found)
    return d.status, [t.status for t in d.tasks]


async def test_create_queues_roots_and_keeps_the_rest_pending(
    store: Store, machine: Machine
) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "dag", DAG)
    run = await machine.run(wf)
    assert await run_status(store, tid, run.id) == (
        RunStatus.QUEUED,
        [TaskStatus.QUEUED, TaskStatus.PENDING, TaskStatus.PENDING],
    )


async def test_assign_is_fenced_and_carries_what_the_payload_needs(
    store: Store, machine: Machine
) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "dag", DAG)
    run = await machine.run(wf, input='{"x":7}')
    a = run.task_ids[0]
    assert await machine.assign(a, tid, retry=3) == []  # wrong attempt
    [info] = await machine.assign(a, tid)
    assert (info.run_id, info.action_id, json.loads(info.input), info.parents) == (
        run.id,
        "dag:a",
        {"x": 7},
        {},
    )
    assert info.step_id == f"{wf.id}:a" and info.workflow_version_id == wf.version_id
    assert await machine.assign(a, tid, "w2") == []  # already running
    running = await store.tasks_running()
    assert [(t.id, t.worker_id, v) for t, v in running] == [(a, "w1", wf.version_id)]
    assert (await run_status(store, tid, run.id))[0] is RunStatus.RUNNING


async def test_completion_advances_the_dag_and_finishes_the_run(
    store: Store, machine: Machine
) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "dag", DAG)
    run = await machine.run(wf)
    a, b, c = run.task_ids
    await machine.assign(a, tid)
    out = await machine.one(ev(tid, a, EventType.COMPLETED, payload='{"v":1}'))
    assert out.applied and [q.task_id for q in out.queued] == [b]
    assert out.queued[0].tenant_id == tid and [f.task_id for f in out.freed] == [a]
    [info] = await machine.assign(b, tid)
    assert info.parents == {"a": '{"v":1}'}
    await machine.one(ev(tid, b, EventType.COMPLETED, payload='{"v":2}'))
    await machine.assign(c, tid)
    out = await machine.one(ev(tid, c, EventType.COMPLETED))
    assert out.finished_runs == (run.id,)
    assert out.finished[0].status is RunStatus.COMPLETED
    assert [t.output for t in out.finished[0].tasks] == ['{"v":1}', '{"v":2}', ""]
    assert (await run_status(store, tid, run.id))[0] is RunStatus.COMPLETED


async def test_started_and_completed_in_one_batch_are_one_update(
    store: Store, machine: Machine
) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t")])
    run = await machine.run(wf)
    t = run.task_ids[0]
    await machine.assign(t, tid)
    started, completed = await machine.apply(
        ev(tid, t, EventType.STARTED), ev(tid, t, EventType.COMPLETED, payload='{"ok":1}')
    )
    assert started.applied and completed.applied
    [row] = await store.tasks_list(tid)
    assert row.status is TaskStatus.COMPLETED and row.acked and row.started_at is not None
    # A STARTED arriving after its own outcome is a no-op.
    late = await machine.one(ev(tid, t, EventType.STARTED))
    assert not late.applied and late.freed == ()


async def test_reports_from_a_dead_attempt_change_nothing(store: Store, machine: Machine) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "dag", DAG)
    run = await machine.run(wf)
    a = run.task_ids[0]
    await machine.assign(a, tid)
    lost = await machine.one(Requeue("worker lost", worker_id="w1"))
    assert [(q.task_id, q.retry_count) for q in lost.queued] == [(a, 1)]
    assert [(f.task_id, f.worker_id) for f in lost.freed] == [(a, "w1")]
    # The same (old) attempt again is fenced off.
    again = await machine.one(Requeue("again", attempts=[Judged(tid, a, 0, "w1")]))
    assert not again.applied and again.queued == () and again.freed == ()
    await machine.assign(a, tid, "w2", retry=1)
    assert not (await machine.one(ev(tid, a, EventType.COMPLETED, "w1", 0))).applied
    assert not (await machine.one(ev(tid, a, EventType.COMPLETED, "w1", 1))).applied
    other = await tenant(store, "other")
    assert not (await machine.one(ev(other, a, EventType.COMPLETED, "w2", 1))).applied
    assert (await machine.one(ev(tid, a, EventType.COMPLETED, "w2", 1))).applied
    history = attempts((await store.tasks_list(tid))[0], await store.attempts_list(tid))
    assert [(h.retry_count, h.worker_id, h.outcome) for h in history] == [
        (0, "w1", "lost"),
        (1, "w2", "completed"),
    ]


async def test_failure_retries_with_backoff_then_fails_the_run_and_skips_descendants(
    store: Store, machine: Machine
) -> None:
    tid = await tenant(store)
    tasks = [TaskDef("a", "dag:a", retries=1, backoff_factor=2.0, backoff_max_s=10.0), *DAG[1:]]
    wf = await machine.workflow(tid, "dag", tasks)
    run = await machine.run(wf)
    a = run.task_ids[0]
    await machine.assign(a, tid)
    out = await machine.one(ev(tid, a, EventType.FAILED, payload="boom"))
    assert out.applied and len(out.queued) == 1
    assert out.queued[0].retry_count == 1 and out.queued[0].available_at == machine.now + 2.0
    await machine.assign(a, tid, retry=1)
    out = await machine.one(ev(tid, a, EventType.FAILED, retry=1, payload="x"))
    assert out.finished_runs == (run.id,) and out.failed == (a,)
    assert await run_status(store, tid, run.id) == (
        RunStatus.FAILED,
        [TaskStatus.FAILED, TaskStatus.SKIPPED, TaskStatus.SKIPPED],
    )
    rows = {t.id: t for t in await store.tasks_list(tid)}
    assert rows[a].error == "x"


async def test_should_not_retry_and_retry_after(store: Store, machine: Machine) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t", retries=3)])
    run = await machine.run(wf)
    t = run.task_ids[0]
    await machine.assign(t, tid)
    out = await machine.one(ev(tid, t, EventType.FAILED, payload="later", retry_after_ms=1500))
    assert out.queued[0].available_at == machine.now + 1.5
    await machine.assign(t, tid, retry=1)
    out = await machine.one(
        ev(tid, t, EventType.FAILED, retry=1, payload="no", should_not_retry=True)
    )
    assert not out.queued and out.finished_runs == (run.id,)


async def test_cancel_by_run_id_frees_what_runs_and_settles_the_run(
    store: Store, machine: Machine
) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "dag", DAG)
    run = await machine.run(wf)
    await machine.assign(run.task_ids[0], tid)
    other = await tenant(store, "other")
    assert not (await machine.one(Cancel(other, [run.id], "nope"))).applied
    out = await machine.one(Cancel(tid, [run.id], "by test"))
    assert set(out.cancelled) == set(run.task_ids)
    assert [f.task_id for f in out.freed] == [run.task_ids[0]]
    assert [s.task_id for s in out.stop] == [run.task_ids[0]]
    assert out.finished_runs == (run.id,)
    assert (await run_status(store, tid, run.id))[0] is RunStatus.CANCELLED
    # Terminal states are final.
    assert not (await machine.one(Cancel(tid, [run.id], "again"))).applied
    assert not (await machine.one(ev(tid, run.task_ids[0], EventType.COMPLETED))).applied


async def test_a_keeper_holds_the_slot_of_a_cancelled_attempt_until_it_reports(
    store: Store, machine: Machine
) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t")])
    run = await machine.run(wf)
    t = run.task_ids[0]
    await machine.assign(t, tid)
    machine.keepers = frozenset({"w1"})
    out = await machine.one(Cancel(tid, [t], "stop"))
    assert out.freed == () and [s.task_id for s in out.stop] == [t]
    [(held, task, version)] = await store.attempts_holding()
    assert (held.task_id, held.worker_id, task.id, version) == (t, "w1", t, wf.version_id)
    done = await machine.one(ev(tid, t, EventType.CANCELLED))
    assert not done.applied and [f.task_id for f in done.freed] == [t]
    assert await store.attempts_holding() == []


async def test_released_slot_is_not_freed_twice(store: Store, machine: Machine) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t")])
    run = await machine.run(wf)
    t = run.task_ids[0]
    await machine.assign(t, tid)
    released = await machine.one(ReleaseSlot(tid, t))
    assert released.worker_id == "w1"
    with pytest.raises(NotFound):
        await machine.one(ReleaseSlot(tid, t))
    out = await machine.one(ev(tid, t, EventType.COMPLETED))
    assert out.applied and out.freed == ()


async def test_refresh_timeout_extends_a_running_task(store: Store, machine: Machine) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t", timeout_s=10)])
    run = await machine.run(wf)
    t = run.task_ids[0]
    with pytest.raises(NotFound):  # not running yet
        await machine.one(RefreshTimeout(tid, t, 5))
    await machine.assign(t, tid)
    assert await machine.one(RefreshTimeout(tid, t, 5)) == machine.now + 15


async def test_lost_attempts_do_not_use_up_retries(store: Store, machine: Machine) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t", retries=1)])
    run = await machine.run(wf)
    t = run.task_ids[0]
    await machine.assign(t, tid)
    await machine.one(Requeue("worker lost", worker_id="w1"))
    await machine.assign(t, tid, "w2", retry=1)
    out = await machine.one(ev(tid, t, EventType.FAILED, "w2", 1, "boom"))
    assert [q.retry_count for q in out.queued] == [2], "the one app retry is still there"
    await machine.assign(t, tid, "w2", retry=2)
    out = await machine.one(ev(tid, t, EventType.FAILED, "w2", 2, "boom"))
    assert out.queued == () and out.finished_runs == (run.id,)


async def test_a_task_that_keeps_losing_its_worker_fails_at_the_cap(
    store: Store, machine: Machine
) -> None:
    tid = await tenant(store)
    machine.max_reassignments = 1
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t")])
    run = await machine.run(wf)
    t = run.task_ids[0]
    await machine.assign(t, tid)
    await machine.one(Requeue("lost", worker_id="w1"))
    await machine.assign(t, tid, "w2", retry=1)
    out = await machine.one(Requeue("lost", worker_id="w2"))
    assert out.failed == (t,) and out.finished_runs == (run.id,)
    assert "gave up after 1 reassignment" in (out.finished[0].tasks[0].error or "")


async def test_timeouts_fail_or_retry_and_stop_the_attempt(store: Store, machine: Machine) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t", timeout_s=10, retries=1)])
    run = await machine.run(wf)
    t = run.task_ids[0]
    await machine.assign(t, tid)
    assert await store.tasks_timed_out(machine.now + 9.9, 10) == []
    [found] = await store.tasks_timed_out(machine.now + 10, 10)
    assert (found.tenant_id, found.id, found.timeout_at) == (tid, t, machine.now + 10)
    out = await machine.one(TimeOut([Judged(tid, t, 0, "w1")]))
    assert [s.task_id for s in out.stop] == [t] and [q.retry_count for q in out.queued] == [1]
    [ended] = await store.attempts_list(tid)
    assert (ended.retry_count, ended.outcome) == (0, "timed_out")


async def test_unacknowledged_starts_are_found(store: Store, machine: Machine) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t")])
    first, second = await machine.run(wf), await machine.run(wf)
    await machine.assign(first.task_ids[0], tid)
    await machine.assign(second.task_ids[0], tid)
    await machine.one(ev(tid, second.task_ids[0], EventType.STARTED))
    assert await store.tasks_unacked(machine.now, 10) == []  # assigned at NOW, not before
    assert [t.id for t in await store.tasks_unacked(machine.now + 1, 10)] == [first.task_ids[0]]


async def test_a_worker_back_from_the_dead_is_told_what_was_taken(
    store: Store, machine: Machine
) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t")])
    run = await machine.run(wf)
    t = run.task_ids[0]
    await machine.assign(t, tid)
    await machine.one(Requeue("lost", worker_id="w1"))
    recalled = await machine.one(Recall("w1", True, machine.now - 1))
    assert [(r.task_id, r.retry_count) for r in recalled] == [(t, 0)]
    [(held, _, _)] = await store.attempts_holding()
    assert held.task_id == t
    assert await machine.one(Recall("w1", False, machine.now + 1)) == []


async def test_schedule_deadline_is_kept_and_found(store: Store, machine: Machine) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t", schedule_timeout_s=30)])
    run = await machine.run(wf)
    assert await store.tasks_schedule_expired(machine.now + 29, 10) == []
    [row] = await store.tasks_schedule_expired(machine.now + 30, 10)
    assert row.id == run.task_ids[0]


async def test_sticky_runs_pin_their_worker(store: Store, machine: Machine) -> None:
    from hewer.domain import StickyStrategy, Workflow

    tid = await tenant(store)
    draft = Workflow("", tid, "sticky", "", tuple(DAG[:2]), sticky=StickyStrategy.SOFT)
    wf = await store.workflow_put(draft, "s", machine.now)
    machine.versions.add([wf])
    run = await machine.run(wf)
    a, b = run.task_ids
    await machine.assign(a, tid, "w7")
    out = await machine.one(ev(tid, a, EventType.COMPLETED, "w7"))
    assert [(q.task_id, q.desired_worker_id, q.sticky) for q in out.queued] == [
        (b, "w7", StickyStrategy.SOFT)
    ]
    # A refused decision for another attempt leaves the task queued for the next one.
    refused = Assign([Assignment(b, tid, "w1", 5, {"default": 1})])
    await machine.apply(refused)
    assert [r.task_id for r in refused.refused] == [b]
