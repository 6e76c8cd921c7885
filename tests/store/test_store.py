"""Conformance suite for the store Protocol: every backend must pass it unchanged.

Only the ``store`` fixture knows which backend it is; add a backend by adding a param.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hewer.domain import (
    ApiToken,
    Assignment,
    EventType,
    LogLine,
    NewRun,
    RunStatus,
    TaskDef,
    TaskEvent,
    TaskStatus,
    WorkerRecord,
    WorkerStatus,
    Workflow,
)
from hewer.store import SqliteStore, Store

NOW = 1_700_000_000.0


@pytest.fixture(params=["sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    backend: Store = SqliteStore(tmp_path / "store.db")
    await backend.open()
    yield backend
    await backend.close()


async def tenant(store: Store, name: str = "t1") -> str:
    return (await store.tenant_ensure(name, NOW)).id


async def dag_workflow(store: Store, tenant_id: str, **task_opts: object) -> Workflow:
    tasks = [
        TaskDef("a", "dag:a", **task_opts),  # type: ignore[arg-type]
        TaskDef("b", "dag:b", parents=("a",)),
        TaskDef("c", "dag:c", parents=("b",)),
    ]
    return await store.workflow_upsert(tenant_id, "dag", tasks, 1, NOW)


async def create_run(
    store: Store, wf: Workflow, input: str = '{"x":1}', priority: int = 1
) -> NewRun:
    run = NewRun(
        str(uuid.uuid4()), wf, input, None, priority, tuple(str(uuid.uuid4()) for _ in wf.tasks)
    )
    await store.runs_create([run], NOW)
    return run


async def assign(store: Store, task_id: str, tenant_id: str, worker: str, retry: int = 0) -> bool:
    done = await store.tasks_assign(
        [Assignment(task_id, tenant_id, worker, retry, {"default": 1})], NOW
    )
    return bool(done)


def event(
    tenant_id: str,
    task_id: str,
    kind: EventType,
    worker: str = "w1",
    retry: int = 0,
    payload: str = "",
    **kw: object,
) -> TaskEvent:
    return TaskEvent(tenant_id, task_id, retry, worker, kind, payload, **kw)  # type: ignore[arg-type]


async def test_reopen_keeps_data_and_migrations_are_idempotent(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "x.db")
    await first.open()
    t = await first.tenant_ensure("acme", NOW)
    await first.close()
    second = SqliteStore(tmp_path / "x.db")
    await second.open()
    assert await second.tenant_get(t.id) == t
    await second.close()


async def test_tenant_ensure_is_idempotent(store: Store) -> None:
    a = await store.tenant_ensure("acme", NOW)
    b = await store.tenant_ensure("acme", NOW + 5)
    assert a == b
    assert await store.tenant_get("nope") is None


async def test_meta_keeps_first_value(store: Store) -> None:
    assert await store.meta_get_or_set("k", "one") == "one"
    assert await store.meta_get_or_set("k", "two") == "one"


async def test_tokens_revocation(store: Store) -> None:
    tid = await tenant(store)
    await store.token_insert(ApiToken("tok", tid, "ci", NOW, NOW + 100, None))
    got = await store.token_get("tok")
    assert got is not None and got.revoked_at is None
    assert await store.token_revoke("tok", NOW + 1)
    assert not await store.token_revoke("tok", NOW + 2)
    got = await store.token_get("tok")
    assert got is not None and got.revoked_at == NOW + 1


async def test_workflow_upsert_new_version_same_id(store: Store) -> None:
    tid = await tenant(store)
    first = await dag_workflow(store, tid)
    second = await dag_workflow(store, tid, retries=2)
    assert first.id == second.id and first.version_id != second.version_id
    loaded = await store.workflow_get_by_name(tid, "dag")
    assert loaded is not None and loaded.tasks[0].retries == 2
    assert await store.workflow_get_by_name(await tenant(store, "other"), "dag") is None


async def test_runs_create_queues_roots_in_priority_then_fifo_order(store: Store) -> None:
    tid = await tenant(store)
    wf = await dag_workflow(store, tid)
    low = await create_run(store, wf, priority=1)
    high = await create_run(store, wf, priority=3)
    low2 = await create_run(store, wf, priority=1)
    queued = await store.tasks_queued()
    assert [q.task_id for q in queued] == [high.task_ids[0], low.task_ids[0], low2.task_ids[0]]
    details = await store.run_get(tid, low.id)
    assert details is not None and details.status is RunStatus.QUEUED
    assert [t.status for t in details.tasks] == [
        TaskStatus.QUEUED,
        TaskStatus.PENDING,
        TaskStatus.PENDING,
    ]


async def test_assign_is_fenced_and_builds_payload(store: Store) -> None:
    tid = await tenant(store)
    wf = await dag_workflow(store, tid)
    run = await create_run(store, wf, input='{"x":7}')
    a = run.task_ids[0]
    assert not await assign(store, a, tid, "w1", retry=3)  # wrong attempt
    infos = await store.tasks_assign([Assignment(a, tid, "w1", 0, {"default": 1})], NOW)
    assert len(infos) == 1
    payload = json.loads(infos[0].payload)
    assert payload["input"] == {"x": 7} and payload["parents"] == {}
    assert infos[0].run_id == run.id and infos[0].action_id == "dag:a"
    assert not await assign(store, a, tid, "w2")  # already running
    assert [t.task_id for t in await store.tasks_running()] == [a]
    details = await store.run_get(tid, run.id)
    assert details is not None and details.status is RunStatus.RUNNING


async def test_completion_advances_dag_and_finishes_run(store: Store) -> None:
    tid = await tenant(store)
    wf = await dag_workflow(store, tid)
    run = await create_run(store, wf)
    a, b, c = run.task_ids
    await assign(store, a, tid, "w1")
    out = await store.task_apply_event(event(tid, a, EventType.COMPLETED, payload='{"v":1}'), NOW)
    assert out.applied and [q.task_id for q in out.queued] == [b]
    assert out.queued[0].tenant_id == tid
    assert [f.task_id for f in out.freed] == [a]
    infos = await store.tasks_assign([Assignment(b, tid, "w1", 0, {"default": 1})], NOW)
    assert json.loads(infos[0].payload)["parents"] == {"a": {"v": 1}}
    await store.task_apply_event(event(tid, b, EventType.COMPLETED, payload='{"v":2}'), NOW)
    await assign(store, c, tid, "w1")
    out = await store.task_apply_event(event(tid, c, EventType.COMPLETED), NOW)
    assert out.finished_runs == (run.id,)
    details = await store.run_get(tid, run.id)
    assert details is not None and details.status is RunStatus.COMPLETED and details.done


async def test_reports_from_a_dead_attempt_change_nothing(store: Store) -> None:
    tid = await tenant(store)
    wf = await dag_workflow(store, tid)
    run = await create_run(store, wf)
    a = run.task_ids[0]
    await assign(store, a, tid, "w1")
    running = await store.tasks_running("w1")
    requeued = await store.tasks_requeue(running, "worker lost", NOW)
    assert [(q.task_id, q.retry_count) for q in requeued.queued] == [(a, 1)]
    assert requeued.freed == tuple(running)
    # Second requeue of the same (old) attempt is fenced.
    again = await store.tasks_requeue(running, "again", NOW)
    assert not again.applied and again.queued == () and again.freed == ()
    await assign(store, a, tid, "w2", retry=1)
    late = await store.task_apply_event(event(tid, a, EventType.COMPLETED, "w1", 0), NOW)
    assert not late.applied
    wrong_worker = await store.task_apply_event(event(tid, a, EventType.COMPLETED, "w1", 1), NOW)
    assert not wrong_worker.applied
    other_tenant = await tenant(store, "other")
    assert not (
        await store.task_apply_event(event(other_tenant, a, EventType.COMPLETED, "w2", 1), NOW)
    ).applied
    ok = await store.task_apply_event(event(tid, a, EventType.COMPLETED, "w2", 1), NOW)
    assert ok.applied


async def test_failure_retries_with_backoff_then_fails_run_and_skips_descendants(
    store: Store,
) -> None:
    tid = await tenant(store)
    wf = await dag_workflow(store, tid, retries=1, backoff_factor=2.0, backoff_max_s=10.0)
    run = await create_run(store, wf)
    a = run.task_ids[0]
    await assign(store, a, tid, "w1")
    out = await store.task_apply_event(event(tid, a, EventType.FAILED, payload="boom"), NOW)
    assert out.applied and len(out.queued) == 1
    retry = out.queued[0]
    assert retry.retry_count == 1 and retry.available_at == NOW + 2.0
    await assign(store, a, tid, "w1", retry=1)
    out = await store.task_apply_event(event(tid, a, EventType.FAILED, retry=1, payload="x"), NOW)
    assert out.finished_runs == (run.id,)
    details = await store.run_get(tid, run.id)
    assert details is not None and details.status is RunStatus.FAILED
    assert [t.status for t in details.tasks] == [
        TaskStatus.FAILED,
        TaskStatus.SKIPPED,
        TaskStatus.SKIPPED,
    ]
    assert details.tasks[0].error == "x"


async def test_should_not_retry_and_retry_after(store: Store) -> None:
    tid = await tenant(store)
    wf = await store.workflow_upsert(tid, "one", [TaskDef("t", "one:t", retries=3)], 1, NOW)
    run = await create_run(store, wf)
    t = run.task_ids[0]
    await assign(store, t, tid, "w1")
    out = await store.task_apply_event(
        event(tid, t, EventType.FAILED, payload="later", retry_after_ms=1500), NOW
    )
    assert out.queued[0].available_at == NOW + 1.5
    await assign(store, t, tid, "w1", retry=1)
    out = await store.task_apply_event(
        event(tid, t, EventType.FAILED, retry=1, payload="no", should_not_retry=True), NOW
    )
    assert not out.queued and out.finished_runs == (run.id,)


async def test_cancel_by_run_id_frees_running_and_settles_run(store: Store) -> None:
    tid = await tenant(store)
    wf = await dag_workflow(store, tid)
    run = await create_run(store, wf)
    await assign(store, run.task_ids[0], tid, "w1")
    other = await tenant(store, "other")
    assert not (await store.tasks_cancel(other, [run.id], "nope", NOW)).applied
    out = await store.tasks_cancel(tid, [run.id], "by test", NOW)
    assert set(out.cancelled) == set(run.task_ids)
    assert [f.task_id for f in out.freed] == [run.task_ids[0]]
    assert out.finished_runs == (run.id,)
    details = await store.run_get(tid, run.id)
    assert details is not None and details.status is RunStatus.CANCELLED
    # Terminal states are final.
    assert not (await store.tasks_cancel(tid, [run.id], "again", NOW)).applied
    late = await store.task_apply_event(event(tid, run.task_ids[0], EventType.COMPLETED), NOW)
    assert not late.applied


async def test_released_slot_is_not_freed_twice(store: Store) -> None:
    tid = await tenant(store)
    wf = await store.workflow_upsert(tid, "one", [TaskDef("t", "one:t")], 1, NOW)
    run = await create_run(store, wf)
    t = run.task_ids[0]
    await assign(store, t, tid, "w1")
    released = await store.task_release_slot(tid, t)
    assert released is not None and released.worker_id == "w1"
    assert await store.task_release_slot(tid, t) is None
    out = await store.task_apply_event(event(tid, t, EventType.COMPLETED), NOW)
    assert out.applied and out.freed == ()


async def test_refresh_timeout_extends_running_task(store: Store) -> None:
    tid = await tenant(store)
    wf = await store.workflow_upsert(tid, "one", [TaskDef("t", "one:t", timeout_s=10)], 1, NOW)
    run = await create_run(store, wf)
    t = run.task_ids[0]
    assert await store.task_refresh_timeout(tid, t, 5, NOW) is None  # not running yet
    await assign(store, t, tid, "w1")
    assert await store.task_refresh_timeout(tid, t, 5, NOW) == NOW + 15


async def test_workers_are_tenant_scoped(store: Store) -> None:
    tid = await tenant(store)
    other = await tenant(store, "other")
    rec = WorkerRecord(
        "w1",
        tid,
        "worker",
        ("a:b",),
        {"default": 5},
        {"gpu": 1},
        WorkerStatus.ACTIVE,
        "registered",
        NOW,
        NOW,
        NOW,
    )
    await store.worker_insert(rec)
    assert await store.worker_get(tid, "w1") == rec
    assert await store.worker_get(other, "w1") is None
    assert await store.worker_set_status("w1", WorkerStatus.INACTIVE, "silent", NOW + 1)
    assert not await store.worker_set_status("w1", WorkerStatus.INACTIVE, "silent", NOW + 2)
    await store.worker_heartbeat("w1", NOW + 3)
    await store.worker_set_labels("w1", {"gpu": 2, "zone": "a"})
    got = await store.worker_get(tid, "w1")
    assert got is not None and got.status is WorkerStatus.INACTIVE
    assert got.last_heartbeat_at == NOW + 3 and got.labels == {"gpu": 2, "zone": "a"}
    assert [w.id for w in await store.workers_list(other)] == []


async def test_logs_are_tenant_scoped(store: Store) -> None:
    tid = await tenant(store)
    other = await tenant(store, "other")
    await store.logs_insert(tid, [LogLine("t1", NOW, "hello", "INFO", 0)])
    assert [line.message for line in await store.logs_list(tid, "t1")] == ["hello"]
    assert await store.logs_list(other, "t1") == []


async def test_lost_attempts_do_not_use_up_retries(store: Store) -> None:
    tid = await tenant(store)
    wf = await store.workflow_upsert(tid, "one", [TaskDef("t", "one:t", retries=1)], 1, NOW)
    run = await create_run(store, wf)
    t = run.task_ids[0]
    await assign(store, t, tid, "w1")
    await store.tasks_requeue(await store.tasks_running("w1"), "worker lost", NOW)
    await assign(store, t, tid, "w2", retry=1)
    out = await store.task_apply_event(event(tid, t, EventType.FAILED, "w2", 1, "boom"), NOW)
    assert [q.retry_count for q in out.queued] == [2], "the one app retry is still there"
    await assign(store, t, tid, "w2", retry=2)
    out = await store.task_apply_event(event(tid, t, EventType.FAILED, "w2", 2, "boom"), NOW)
    assert out.queued == () and out.finished_runs == (run.id,)


async def test_unacknowledged_starts_are_found(store: Store) -> None:
    tid = await tenant(store)
    wf = await dag_workflow(store, tid)
    first, second = await create_run(store, wf), await create_run(store, wf)
    await assign(store, first.task_ids[0], tid, "w1")
    await assign(store, second.task_ids[0], tid, "w1")
    await store.task_apply_event(event(tid, second.task_ids[0], EventType.STARTED), NOW)
    assert await store.tasks_unstarted(NOW) == []  # assigned at NOW, not before
    lost = await store.tasks_unstarted(NOW + 1)
    assert [t.task_id for t in lost] == [first.task_ids[0]]


async def test_timed_out_attempts_are_found(store: Store) -> None:
    tid = await tenant(store)
    wf = await store.workflow_upsert(tid, "one", [TaskDef("t", "one:t", timeout_s=10)], 1, NOW)
    run = await create_run(store, wf)
    await assign(store, run.task_ids[0], tid, "w1")
    assert await store.tasks_timed_out(NOW + 9.9) == []
    [found] = await store.tasks_timed_out(NOW + 10)
    assert found.tenant_id == tid and found.task.task_id == run.task_ids[0]
    assert found.timeout_at == NOW + 10
