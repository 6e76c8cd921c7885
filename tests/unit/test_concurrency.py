"""Concurrency limits in the engine core: keys from CEL, strategies, no leaked keys."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hewer.domain import (
    ConcurrencySpec,
    ConcurrencyStrategy,
    EventType,
    RunStatus,
    TaskDef,
)
from hewer.engine.core.service import ActionKind, Session, TriggerSpec
from hewer.errors import InvalidInput
from tests.unit.test_core import Rig, next_action

S = ConcurrencyStrategy


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path / "core.db")
    await r.start()
    yield r
    await r.core.stop()
    await r.store.close()


async def limited(
    rig: Rig, strategy: S, max_runs: int = 1, per_run: bool = False, dag: bool = False
) -> None:
    spec = ConcurrencySpec("input.group", max_runs, strategy)
    tasks = [TaskDef("a", "lim:a", concurrency=() if per_run else (spec,))]
    if dag:
        tasks.append(TaskDef("b", "lim:b", parents=("a",)))
    await rig.core.put_workflow(
        rig.tenant, "lim", tasks, None, concurrency=(spec,) if per_run else ()
    )


async def worker(rig: Rig, slots: int = 10) -> tuple[str, Session]:
    record = await rig.core.register_worker(
        rig.tenant, "w", ["lim:a", "lim:b"], {"default": slots}, {}, {}
    )
    return record.id, await rig.core.open_session(rig.tenant, record.id)


async def trigger(rig: Rig, group: str) -> str:
    (run_id,) = await rig.core.trigger(
        rig.tenant, [TriggerSpec("lim", json.dumps({"group": group}))]
    )
    return run_id


async def drain(session: Session) -> list[tuple[ActionKind, str]]:
    out = []
    while not session._queue.empty():
        action = await session.next()
        assert action is not None
        out.append((action.kind, action.info.run_id if action.info else action.task_id))
    return out


async def test_round_robin_admits_one_per_key_and_keys_take_turns(rig: Rig) -> None:
    await limited(rig, S.GROUP_ROUND_ROBIN)
    runs = {g: [await trigger(rig, g) for _ in range(3)] for g in ("a", "b")}
    worker_id, session = await worker(rig)
    await rig.settle()
    started = await drain(session)
    assert sorted(r for _, r in started) == sorted([runs["a"][0], runs["b"][0]])
    # Finish one of each in turn: the next of the same key gets in, never two of a key.
    for round_ in range(1, 3):
        for g in ("a", "b"):
            prev = runs[g][round_ - 1]
            await rig.report(worker_id, prev, 0, EventType.STARTED)
            await rig.report(worker_id, prev, 0, EventType.COMPLETED)
        await rig.settle()
        started = await drain(session)
        assert sorted(r for _, r in started) == sorted([runs["a"][round_], runs["b"][round_]])
    for g in ("a", "b"):
        await rig.report(worker_id, runs[g][2], 0, EventType.COMPLETED)
    await rig.settle()
    assert rig.core.scheduler.gate_holders() == {}, "no key stays held after the drain"


async def test_round_robin_is_fair_across_keys(rig: Rig) -> None:
    await limited(rig, S.GROUP_ROUND_ROBIN, max_runs=1)
    order = [await trigger(rig, g) for g in ("a", "a", "a", "a", "b", "c")]
    worker_id, session = await worker(rig, slots=1)  # one at a time: admission order shows
    seen = []
    for _ in range(6):
        kind, task_id, _ = await next_action(session)
        assert kind is ActionKind.START
        seen.append(task_id)
        await rig.report(worker_id, task_id, 0, EventType.COMPLETED)
    # Keys take turns: b and c do not wait behind all of a's backlog.
    assert seen.index(order[4]) < 3 and seen.index(order[5]) < 4


async def test_cancel_newest_refuses_the_newcomer(rig: Rig) -> None:
    await limited(rig, S.CANCEL_NEWEST)
    _, session = await worker(rig)
    first = await trigger(rig, "g")
    await rig.settle()
    second = await trigger(rig, "g")
    other = await trigger(rig, "h")
    await rig.settle()
    await rig.settle()
    assert [r for _, r in await drain(session)] == [first, other]
    details = await rig.core.run_details(rig.tenant, second)
    assert details.status is RunStatus.CANCELLED
    assert "CANCEL_NEWEST" in (details.tasks[0].error or "")


async def test_cancel_in_progress_lets_the_newest_win(rig: Rig) -> None:
    await limited(rig, S.CANCEL_IN_PROGRESS)
    worker_id, session = await worker(rig)
    first = await trigger(rig, "g")
    kind, task_id, _ = await next_action(session)
    assert (kind, task_id) == (ActionKind.START, first)
    await rig.report(worker_id, first, 0, EventType.STARTED)
    second = await trigger(rig, "g")
    kind, cancelled, _ = await next_action(session)
    assert (kind, cancelled) == (ActionKind.CANCEL, first)
    kind, started, _ = await next_action(session)
    assert (kind, started) == (ActionKind.START, second)
    assert (await rig.core.run_details(rig.tenant, first)).status is RunStatus.CANCELLED


@pytest.mark.parametrize(
    ("strategy", "survivor"),
    [(S.CANCEL_QUEUED_EXCEPT_NEWEST, -1), (S.CANCEL_QUEUED_EXCEPT_OLDEST, 0)],
)
async def test_cancel_queued_keeps_one_waiting(rig: Rig, strategy: S, survivor: int) -> None:
    await limited(rig, strategy)
    worker_id, session = await worker(rig)
    running = await trigger(rig, "g")
    await rig.settle()
    queued = [await trigger(rig, "g") for _ in range(3)]
    await rig.settle()
    await rig.settle()
    statuses = [(await rig.core.run_details(rig.tenant, r)).status for r in queued]
    keep = queued[survivor]
    assert statuses.count(RunStatus.CANCELLED) == 2
    assert (await rig.core.run_details(rig.tenant, keep)).status is RunStatus.QUEUED
    await rig.report(worker_id, running, 0, EventType.COMPLETED)
    await rig.settle()
    assert [r for k, r in await drain(session) if k is ActionKind.START] == [running, keep]


async def test_a_workflow_limit_holds_its_key_for_the_whole_run(rig: Rig) -> None:
    await limited(rig, S.GROUP_ROUND_ROBIN, per_run=True, dag=True)
    worker_id, session = await worker(rig)
    first = await trigger(rig, "g")
    second = await trigger(rig, "g")
    _, a_task, _ = await next_action(session)
    await rig.report(worker_id, a_task, 0, EventType.COMPLETED)
    # Between "a" and "b" the first run still holds the key: "b" of run 1 comes, run 2 waits.
    _, b_task, _ = await next_action(session)
    details = await rig.core.run_details(rig.tenant, first)
    assert b_task == next(t.task_id for t in details.tasks if t.readable_id == "b")
    await rig.settle()
    assert session._queue.empty()
    await rig.report(worker_id, b_task, 0, EventType.COMPLETED)
    _, next_task, _ = await next_action(session)
    second_details = await rig.core.run_details(rig.tenant, second)
    assert next_task == second_details.tasks[0].task_id


async def test_keys_held_survive_an_engine_restart(rig: Rig) -> None:
    await limited(rig, S.GROUP_ROUND_ROBIN)
    _, session = await worker(rig)
    await trigger(rig, "g")
    await next_action(session)
    waiting = await trigger(rig, "g")
    await rig.core.stop()
    from hewer.engine.core.service import EngineCore

    restarted = EngineCore(rig.store, rig.clock, inactive_after=30.0)
    await restarted.start()
    try:
        await restarted.scheduler.slot_usage()
        await restarted.scheduler.slot_usage()
        holders = restarted.scheduler.gate_holders()
        assert sum(holders.values()) == 1, "the running task still holds its key"
        details = await restarted.run_details(rig.tenant, waiting)
        assert details.status is RunStatus.QUEUED
    finally:
        await restarted.stop()


async def test_invalid_expressions_are_refused_at_registration(rig: Rig) -> None:
    bad = ConcurrencySpec("input.group +", 1)
    with pytest.raises(InvalidInput, match=r"input\.group \+"):
        await rig.core.put_workflow(
            rig.tenant, "bad", [TaskDef("a", "bad:a")], None, concurrency=(bad,)
        )
    with pytest.raises(InvalidInput, match="max_runs"):
        await rig.core.put_workflow(
            rig.tenant,
            "bad",
            [TaskDef("a", "bad:a", concurrency=(ConcurrencySpec("'x'", 0),))],
            None,
        )
