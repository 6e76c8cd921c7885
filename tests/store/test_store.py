"""Conformance suite for the store Protocol: every backend must pass it unchanged.

Each Protocol method is exercised here or, for the hot path (``write``: load, stage,
commit), in ``test_transitions.py`` through the engine's own state machine.
"""

from __future__ import annotations

import uuid

import pytest

from hewer.domain import (
    ApiToken,
    Changes,
    ConcurrencyStrategy,
    GateClaim,
    Keys,
    LogLine,
    LogQuery,
    NewRun,
    QueuePage,
    RateLimitRecord,
    RunFilter,
    RunStatus,
    TaskDef,
    TaskStatus,
    WorkerRecord,
    WorkerStatus,
    Workflow,
)
from hewer.engine.core.transitions import CreateRuns
from hewer.errors import StoreError
from hewer.store import Store
from tests.store.conftest import NOW, Machine, tenant


async def test_close_is_idempotent(store: Store) -> None:
    await store.close()
    await store.close()
    with pytest.raises(StoreError):
        await store.tenant_get("x")
    await store.open()


async def test_ping_answers_on_an_open_store(store: Store) -> None:
    await store.ping()
    await store.ping()


async def test_tenant_ensure_is_idempotent(store: Store) -> None:
    a = await store.tenant_ensure("acme", NOW)
    b = await store.tenant_ensure("acme", NOW + 5)
    assert a == b
    assert await store.tenant_get(a.id) == a
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
    assert await store.token_get("nope") is None


async def test_workflow_versions_are_immutable_and_deduplicated(store: Store) -> None:
    tid = await tenant(store)
    draft = Workflow("", tid, "dag", "", (TaskDef("a", "dag:a"),))
    first = await store.workflow_put(draft, "sum-1", NOW)
    same = await store.workflow_put(draft, "sum-1", NOW + 1)
    assert (same.id, same.version_id) == (first.id, first.version_id)
    changed = Workflow("", tid, "dag", "", (TaskDef("a", "dag:a", retries=2),))
    second = await store.workflow_put(changed, "sum-2", NOW + 2)
    assert second.id == first.id and second.version_id != first.version_id
    current = await store.workflow_get_by_name(tid, "dag")
    assert current is not None and current.version_id == second.version_id
    assert current.tasks[0].retries == 2
    old, _ = sorted(
        await store.workflow_versions([first.version_id, second.version_id]),
        key=lambda w: w.tasks[0].retries,
    )
    assert old.version_id == first.version_id and old.tasks[0].retries == 0
    assert await store.workflow_get_by_name(await tenant(store, "other"), "dag") is None


async def test_run_reads(store: Store, machine: Machine) -> None:
    tid = await tenant(store)
    other = await tenant(store, "other")
    wf = await machine.workflow(
        tid, "dag", [TaskDef("a", "a:a"), TaskDef("b", "a:b", parents=("a",))]
    )
    first = await machine.run(wf)
    second = await machine.run(wf)
    found = await store.run_get(tid, first.id)
    assert found is not None
    run, tasks = found
    assert (run.id, run.version_id, run.task_count) == (first.id, wf.version_id, 2)
    assert [t.id for t in tasks] == list(first.task_ids)
    assert await store.run_get(other, first.id) is None
    both = await store.runs_get(tid, [first.id, second.id, "nope"])
    assert {r.id: [t.id for t in ts] for r, ts in both} == {
        first.id: list(first.task_ids),
        second.id: list(second.task_ids),
    }
    assert await store.runs_get(other, [first.id]) == []
    assert await store.task_run_id(tid, first.task_ids[1]) == first.id
    assert await store.task_run_id(other, first.task_ids[1]) is None
    assert [r.id for r in await store.runs_list(tid)] == [first.id, second.id]
    assert len(await store.tasks_list(tid)) == 4 and await store.tasks_list(other) == []


async def test_runs_find_filters(store: Store, machine: Machine) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t")])
    queued = await machine.run(wf)
    machine.now = NOW + 10
    started = await machine.run(wf)
    await machine.assign(started.task_ids[0], tid)
    newest_first = await store.runs_find(tid, RunFilter())
    assert newest_first == [started.id, queued.id]
    assert await store.runs_find(tid, RunFilter(statuses=(RunStatus.RUNNING,))) == [started.id]
    assert await store.runs_find(tid, RunFilter(statuses=(RunStatus.QUEUED,))) == [queued.id]
    assert await store.runs_find(tid, RunFilter(since=NOW + 5)) == [started.id]
    assert await store.runs_find(tid, RunFilter(until=NOW + 5)) == [queued.id]
    assert await store.runs_find(tid, RunFilter(workflows=("one",), limit=1)) == [started.id]
    assert await store.runs_find(tid, RunFilter(workflows=("other",))) == []


async def test_runs_find_matches_additional_metadata(store: Store, machine: Machine) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t")])
    ids = []
    for meta in (
        '{"customer": "42", "n": 1}',
        '{"customer": "7"}',
        None,
        "not json",
        '{"customer": "42"}',
    ):
        rid = str(uuid.uuid4())
        await machine.one(CreateRuns([NewRun(rid, wf, "{}", meta, 1, (rid,))]))
        ids.append(rid)
        machine.now += 1
    customer = (("customer", "42"),)
    assert await store.runs_find(tid, RunFilter(additional_metadata=customer)) == [ids[4], ids[0]]
    assert await store.runs_find(tid, RunFilter(additional_metadata=customer, limit=1)) == [ids[4]]
    both = (("customer", "42"), ("n", "1"))
    assert await store.runs_find(tid, RunFilter(additional_metadata=both)) == [ids[0]]
    assert await store.runs_find(tid, RunFilter(additional_metadata=(("x", "1"),))) == []


async def test_queue_pages_in_queue_order(store: Store, machine: Machine) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t")])
    low1 = await machine.run(wf, priority=1)
    high = await machine.run(wf, priority=3)
    low2 = await machine.run(wf, priority=1)
    assert await store.queue_keys() == [(tid, "one:t")]
    page = await store.tasks_queued_page(QueuePage(tid, "one:t", None, 2))
    assert [r.task.id for r in page] == [high.id, low1.id]
    assert all(r.version_id == wf.version_id for r in page)
    after = (page[-1].task.priority, page[-1].task.seq)
    rest = await store.tasks_queued_page(QueuePage(tid, "one:t", after, 10))
    assert [r.task.id for r in rest] == [low2.id]
    assert await store.tasks_queued_page(QueuePage(tid, "other:t", None, 10)) == []


async def test_gates_held_by_running_tasks_and_started_runs(store: Store, machine: Machine) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t")])
    claim = GateClaim("g", "k", 1, ConcurrencyStrategy.GROUP_ROUND_ROBIN, "task:x", False, tid)
    per_run = GateClaim("r", "k", 1, ConcurrencyStrategy.GROUP_ROUND_ROBIN, "run:y", True, tid)
    held = await machine.run(wf, gates=((claim, per_run),))
    await machine.run(wf, gates=((claim,),))  # queued: holds nothing
    assert await store.gates_held() == []
    await machine.assign(held.id, tid)
    assert sorted(g.holder for g in await store.gates_held()) == ["run:y", "task:x"]


async def test_rate_limits(store: Store) -> None:
    tid = await tenant(store)
    await store.rate_limit_put(RateLimitRecord(tid, "api", 10, 60.0), NOW)
    await store.rate_limit_put(RateLimitRecord(tid, "api", 5, 1.0), NOW + 1)
    assert await store.rate_limits_list() == [RateLimitRecord(tid, "api", 5, 1.0)]


def _worker(wid: str, tenant_id: str) -> WorkerRecord:
    return WorkerRecord(
        wid,
        tenant_id,
        "worker",
        ("a:b",),
        {"default": 5},
        {"gpu": 1},
        WorkerStatus.ACTIVE,
        "registered",
        NOW,
        NOW,
        NOW,
        {"sdk_version": "1"},
    )


async def test_workers_are_written_in_batches_and_tenant_scoped(store: Store) -> None:
    tid = await tenant(store)
    other = await tenant(store, "other")
    rec = _worker("w1", tid)
    async with store.write() as tx:
        tx.stage(Changes(new_workers=[rec, _worker("w2", tid)]))
    assert await store.worker_get(tid, "w1") == rec
    assert await store.worker_get(other, "w1") is None
    async with store.write() as tx:
        tx.stage(
            Changes(
                worker_status={"w1": (WorkerStatus.INACTIVE, "silent", NOW + 1)},
                heartbeats={"w1": NOW + 3},
                worker_labels={"w1": {"gpu": 2, "zone": "a"}},
            )
        )
    got = await store.worker_get(tid, "w1")
    assert got is not None and got.status is WorkerStatus.INACTIVE
    assert (got.status_reason, got.status_changed_at) == ("silent", NOW + 1)
    assert got.last_heartbeat_at == NOW + 3 and got.labels == {"gpu": 2, "zone": "a"}
    assert [w.id for w in await store.workers_list(tid)] == ["w1", "w2"]
    assert await store.workers_list(other) == []
    assert {w.id for w in await store.workers_list()} == {"w1", "w2"}


async def test_logs_are_tenant_scoped(store: Store) -> None:
    tid = await tenant(store)
    other = await tenant(store, "other")
    async with store.write() as tx:
        tx.stage(Changes(logs=[(tid, LogLine("t1", NOW, "hello", "INFO", 0))]))
    assert [line.message for line in await store.logs_list(LogQuery(tid, "t1"))] == ["hello"]
    assert await store.logs_list(LogQuery(other, "t1")) == []


async def test_a_failed_transaction_writes_nothing(store: Store, machine: Machine) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t")])
    run = await machine.run(wf)
    with pytest.raises(RuntimeError):
        async with store.write() as tx:
            ws = await tx.load(Keys(task_ids={run.id}), machine.versions.cache)
            row = ws.tasks[run.id]
            row.status = TaskStatus.CANCELLED
            ws.changes.task(row)
            tx.stage(ws.changes)
            raise RuntimeError("the core broke")
    [row] = await store.tasks_list(tid)
    assert row.status is TaskStatus.QUEUED
    # And the store is usable afterwards.
    assert await machine.assign(run.id, tid)


async def test_load_brings_whole_runs_and_missing_versions(store: Store, machine: Machine) -> None:
    tid = await tenant(store)
    wf = await machine.workflow(
        tid, "dag", [TaskDef("a", "d:a"), TaskDef("b", "d:b", parents=("a",))]
    )
    run = await machine.run(wf)
    async with store.write() as tx:
        ws = await tx.load(Keys(task_ids={run.task_ids[0]}), known_versions=(), seqs=3)
        assert set(ws.tasks) == set(run.task_ids)  # the rest of its (multi-task) run
        assert [t.id for t in ws.run_tasks[run.id]] == list(run.task_ids)
        assert set(ws.versions) == {wf.version_id}
        assert ws.next_seq > max(t.seq for t in ws.tasks.values())
        ws2 = await tx.load(Keys(run_ids={run.id}), known_versions={wf.version_id})
        assert ws2.versions == {} and set(ws2.tasks) == set(run.task_ids)
        ws3 = await tx.load(Keys(task_ids={str(uuid.uuid4())}), known_versions=())
        assert ws3.tasks == {} and ws3.runs == {}
