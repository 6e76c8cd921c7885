"""EngineCore with an injected clock: liveness thresholds, lost starts, cancelled callers.

No sockets: the core is driven directly, with a real SQLite file underneath.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hewer.domain import (
    EventType,
    RunStatus,
    StickyStrategy,
    TaskDef,
    TaskEvent,
    TaskStatus,
    WorkerStatus,
)
from hewer.engine.core.clock import ManualClock
from hewer.engine.core.service import (
    ActionKind,
    EngineCore,
    FailedPrecondition,
    Session,
    TriggerSpec,
)
from hewer.errors import InvalidInput, NotFound
from tests.helpers import GatedStore

INACTIVE_AFTER = 30.0
TIMEOUT = 60.0
SCHEDULE_TIMEOUT = 300.0


class Rig:
    def __init__(self, path: Path) -> None:
        self.clock = ManualClock()
        self.store = GatedStore(path, lambda changes: bool(changes.new_runs))
        self.core = EngineCore(
            self.store, self.clock, inactive_after=INACTIVE_AFTER, max_reassignments=1
        )
        self.tenant = ""

    async def start(self) -> None:
        await self.store.open()
        self.tenant = (await self.store.tenant_ensure("t", self.clock.now())).id
        await self.core.start()
        task = TaskDef("job", "job:job", timeout_s=TIMEOUT, schedule_timeout_s=SCHEDULE_TIMEOUT)
        await self.core.put_workflow(self.tenant, "job", [task], None)

    async def settle(self) -> None:
        await self.core.settled()

    async def worker(
        self, name: str = "w", slots: int = 1, reports_cancellation: bool = False
    ) -> tuple[str, Session]:
        runtime = {"extra": json.dumps({"reports_cancellation": reports_cancellation})}
        record = await self.core.register_worker(
            self.tenant, name, ["job:job"], {"default": slots}, {}, runtime
        )
        return record.id, await self.core.open_session(self.tenant, record.id)

    async def used(self, worker_id: str) -> int:
        return (await self.core.scheduler.slot_usage()).get(worker_id, {}).get("default", 0)

    async def report(self, worker_id: str, task_id: str, retry: int, kind: EventType) -> None:
        await self.core.task_event(TaskEvent(self.tenant, task_id, retry, worker_id, kind))


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path / "core.db")
    await r.start()
    yield r
    await r.core.stop()
    await r.store.close()


async def next_action(session: Session) -> tuple[ActionKind, str, int]:
    action = await asyncio.wait_for(session.next(), 5)
    assert action is not None
    task_id = action.info.task_id if action.info else action.task_id
    retry = action.info.retry_count if action.info else action.retry_count
    return action.kind, task_id, retry


async def test_worker_is_lost_just_outside_the_window_not_inside(rig: Rig) -> None:
    worker_id, session = await rig.worker()
    await rig.core.trigger(rig.tenant, [_spec()])
    kind, task_id, _ = await next_action(session)
    assert kind is ActionKind.START
    rig.clock.advance(INACTIVE_AFTER - 0.001)
    assert await rig.core.reap() == []
    await rig.core.heartbeat(rig.tenant, worker_id)
    rig.clock.advance(INACTIVE_AFTER - 0.001)
    assert await rig.core.reap() == []
    rig.clock.advance(0.002)
    assert await rig.core.reap() == [worker_id]
    worker = await rig.store.worker_get(rig.tenant, worker_id)
    assert worker is not None and worker.status is WorkerStatus.INACTIVE
    assert "no heartbeat" in worker.status_reason
    # Its task went back to the queue as a new attempt and the slot is no longer held.
    _, other = await rig.worker("other")
    kind, again, retry = await next_action(other)
    assert (kind, again, retry) == (ActionKind.START, task_id, 1)
    # The lost worker comes back: told to reconnect, then ACTIVE again.
    with pytest.raises(FailedPrecondition):
        await rig.core.heartbeat(rig.tenant, worker_id)
    await rig.core.open_session(rig.tenant, worker_id)
    worker = await rig.store.worker_get(rig.tenant, worker_id)
    assert worker is not None and worker.status is WorkerStatus.ACTIVE


async def test_engine_restart_gives_every_worker_a_fresh_window(rig: Rig, tmp_path: Path) -> None:
    worker_id, _ = await rig.worker()
    rig.clock.advance(INACTIVE_AFTER * 10)  # silent for long before the restart
    await rig.core.stop()
    restarted = EngineCore(rig.store, rig.clock, inactive_after=INACTIVE_AFTER)
    await restarted.start()
    try:
        rig.clock.advance(INACTIVE_AFTER - 0.001)
        assert await restarted.reap() == []
        rig.clock.advance(0.002)
        assert await restarted.reap() == [worker_id]
    finally:
        await restarted.stop()


async def test_a_start_never_acknowledged_is_sent_again(rig: Rig) -> None:
    worker_id, session = await rig.worker()
    await rig.core.trigger(rig.tenant, [_spec()])
    _, task_id, retry = await next_action(session)
    assert retry == 0
    # The stream breaks and the worker reconnects without ever saying STARTED: the start
    # may have been lost on the way.
    session = await rig.core.open_session(rig.tenant, worker_id)
    rig.clock.advance(INACTIVE_AFTER / 2)
    await rig.core.heartbeat(rig.tenant, worker_id)
    assert await rig.core.expire() == 0
    rig.clock.advance(INACTIVE_AFTER / 2 + 0.01)
    await rig.core.heartbeat(rig.tenant, worker_id)
    assert await rig.core.expire() == 1
    kind, again, retry = await next_action(session)
    assert (kind, again, retry) == (ActionKind.START, task_id, 1)


async def test_a_start_on_a_stream_still_open_is_not_sent_again(rig: Rig) -> None:
    worker_id, session = await rig.worker()
    await rig.core.trigger(rig.tenant, [_spec()])
    await next_action(session)
    # Delivered on a stream that is still open: the worker is just slow to acknowledge
    # (a blocked event loop), so a second copy would only run the body twice.
    rig.clock.advance(INACTIVE_AFTER * 1.5)  # past the window, before the 60 s timeout
    await rig.core.heartbeat(rig.tenant, worker_id)
    assert await rig.core.expire() == 0
    await rig.settle()
    assert session._queue.empty()


async def test_a_cancelled_trigger_still_queues_what_it_wrote(rig: Rig) -> None:
    _, session = await rig.worker()
    rig.store.gate = asyncio.Event()
    caller = asyncio.create_task(rig.core.trigger(rig.tenant, [_spec()]))
    await rig.store.entered.wait()
    caller.cancel()  # e.g. the client's deadline passed
    rig.store.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    kind, _, _ = await next_action(session)
    assert kind is ActionKind.START, "the committed run was scheduled anyway"


def _spec() -> TriggerSpec:
    return TriggerSpec("job", "{}")


async def test_a_task_that_keeps_losing_its_worker_fails_at_the_cap(rig: Rig) -> None:
    (run_id,) = await rig.core.trigger(rig.tenant, [_spec()])
    for attempt in range(2):  # the cap is 1 reassignment: the second loss is final
        worker_id, session = await rig.worker(f"w{attempt}")
        kind, task_id, retry = await next_action(session)
        assert (kind, retry) == (ActionKind.START, attempt)
        await rig.report(worker_id, task_id, retry, EventType.STARTED)
        rig.clock.advance(INACTIVE_AFTER + 1)
        assert await rig.core.reap() == [worker_id]
    details = await rig.core.run_details(rig.tenant, run_id)
    assert details.status is RunStatus.FAILED
    assert details.tasks[0].error is not None and "worker lost" in details.tasks[0].error


async def test_schedule_timeout_cancels_a_task_nobody_takes(rig: Rig) -> None:
    (run_id,) = await rig.core.trigger(rig.tenant, [_spec()])
    rig.clock.advance(SCHEDULE_TIMEOUT - 0.01)
    assert await rig.core.expire() == 0
    rig.clock.advance(0.02)
    assert await rig.core.expire() == 1
    details = await rig.core.run_details(rig.tenant, run_id)
    assert details.status is RunStatus.CANCELLED
    assert "schedule timeout" in (details.tasks[0].error or "")
    _, session = await rig.worker()
    await rig.settle()
    assert session._queue.empty(), "a cancelled task is never assigned"


@pytest.mark.parametrize("reports", [True, False])
async def test_cancelled_attempt_keeps_its_slot_until_its_body_returns(
    rig: Rig, reports: bool
) -> None:
    worker_id, session = await rig.worker(slots=1, reports_cancellation=reports)
    (first,) = await rig.core.trigger(rig.tenant, [_spec()])
    _, task_id, retry = await next_action(session)
    await rig.report(worker_id, task_id, retry, EventType.STARTED)
    await rig.core.trigger(rig.tenant, [_spec()])
    await rig.core.cancel(rig.tenant, [first], "by test")
    kind, cancelled, _ = await next_action(session)
    assert (kind, cancelled) == (ActionKind.CANCEL, task_id)
    await rig.settle()
    if reports:
        # The body may still be running: the slot stays taken and nothing new arrives.
        assert await rig.used(worker_id) == 1
        assert session._queue.empty()
        await rig.report(worker_id, task_id, retry, EventType.CANCELLED)
    kind, _, _ = await next_action(session)
    assert kind is ActionKind.START
    assert await rig.used(worker_id) == 1


async def test_timed_out_attempt_is_retried_and_keeps_its_slot_until_it_returns(
    rig: Rig,
) -> None:
    await rig.core.put_workflow(
        rig.tenant, "job", [TaskDef("job", "job:job", retries=1, timeout_s=TIMEOUT)], None
    )
    worker_id, session = await rig.worker(slots=1, reports_cancellation=True)
    (run_id,) = await rig.core.trigger(rig.tenant, [_spec()])
    _, task_id, retry = await next_action(session)
    await rig.report(worker_id, task_id, retry, EventType.STARTED)
    rig.clock.advance(TIMEOUT - 0.01)
    await rig.core.heartbeat(rig.tenant, worker_id)
    assert await rig.core.expire() == 0
    rig.clock.advance(0.02)
    assert await rig.core.expire() == 1
    kind, _, _ = await next_action(session)
    assert kind is ActionKind.CANCEL
    await rig.settle()
    assert await rig.used(worker_id) == 1 and session._queue.empty()
    # A late COMPLETED from the timed-out attempt is not its result, but it frees the slot.
    await rig.report(worker_id, task_id, retry, EventType.COMPLETED)
    kind, again, retry2 = await next_action(session)
    assert (kind, again, retry2) == (ActionKind.START, task_id, 1)
    details = await rig.core.run_details(rig.tenant, run_id)
    assert details.tasks[0].status is TaskStatus.RUNNING


async def test_a_task_that_released_its_slot_is_not_requeued_when_its_worker_is_lost(
    rig: Rig,
) -> None:
    worker_id, session = await rig.worker(slots=1)
    (run_id,) = await rig.core.trigger(rig.tenant, [_spec()])
    _, task_id, retry = await next_action(session)
    await rig.report(worker_id, task_id, retry, EventType.STARTED)
    await rig.core.release_slot(rig.tenant, task_id)
    await rig.settle()
    assert await rig.used(worker_id) == 0
    rig.clock.advance(INACTIVE_AFTER + 1)
    assert await rig.core.reap() == [worker_id]
    details = await rig.core.run_details(rig.tenant, run_id)
    assert details.tasks[0].status is TaskStatus.RUNNING  # stays with its worker, as upstream
    assert details.tasks[0].retry_count == 0


async def _sticky_rig(rig: Rig, sticky: StickyStrategy) -> None:
    tasks = [TaskDef("a", "dag:a"), TaskDef("b", "dag:b", parents=("a",))]
    await rig.core.put_workflow(rig.tenant, "dag", tasks, None, sticky)


async def _dag_worker(rig: Rig, name: str, slots: int) -> tuple[str, Session]:
    record = await rig.core.register_worker(
        rig.tenant, name, ["dag:a", "dag:b", "job:job"], {"default": slots}, {}, {}
    )
    return record.id, await rig.core.open_session(rig.tenant, record.id)


@pytest.mark.parametrize("sticky", [StickyStrategy.SOFT, StickyStrategy.HARD])
async def test_sticky_runs_keep_their_tasks_on_one_worker(rig: Rig, sticky: StickyStrategy) -> None:
    await _sticky_rig(rig, sticky)
    small_id, small = await _dag_worker(rig, "small", slots=1)
    await rig.core.trigger(rig.tenant, [TriggerSpec("dag", "{}")])
    _, a_id, _ = await next_action(small)
    _, big = await _dag_worker(rig, "big", slots=10)  # more room: spreading would pick it
    await rig.core.trigger(rig.tenant, [TriggerSpec("job", "{}")])
    await rig.report(small_id, a_id, 0, EventType.STARTED)
    _, job_id, _ = await next_action(big)  # the unrelated task goes to the free worker
    await rig.report(small_id, a_id, 0, EventType.COMPLETED)
    kind, b_id, _ = await next_action(small)  # "b" follows "a" to the same worker
    assert kind is ActionKind.START and b_id not in (a_id, job_id)
    assert big._queue.empty()


async def test_hard_sticky_waits_for_its_worker(rig: Rig) -> None:
    await _sticky_rig(rig, StickyStrategy.HARD)
    one_id, one = await _dag_worker(rig, "one", slots=1)
    await rig.core.trigger(rig.tenant, [TriggerSpec("dag", "{}")])
    _, a_id, _ = await next_action(one)
    await rig.core.trigger(rig.tenant, [TriggerSpec("job", "{}")])  # waits for "one" too
    await rig.report(one_id, a_id, 0, EventType.STARTED)
    _, other = await _dag_worker(rig, "other", slots=5)
    _, job_id, _ = await next_action(other)
    await rig.report(one_id, a_id, 0, EventType.COMPLETED)
    # "one" is free again: "b" must go there, never to "other", even though it has room.
    _, b_id, _ = await next_action(one)
    await rig.settle()
    assert other._queue.empty() and b_id != job_id


async def test_sticky_child_runs_need_a_sticky_workflow_on_that_worker(rig: Rig) -> None:
    await _sticky_rig(rig, StickyStrategy.SOFT)
    w_id, w = await _dag_worker(rig, "parent-worker", slots=2)
    await _dag_worker(rig, "elsewhere", slots=10)
    await rig.core.trigger(rig.tenant, [TriggerSpec("dag", "{}", desired_worker_id=w_id)])
    kind, _, _ = await next_action(w)
    assert kind is ActionKind.START
    with pytest.raises(InvalidInput, match="cannot be sticky"):
        await rig.core.trigger(rig.tenant, [TriggerSpec("job", "{}", desired_worker_id=w_id)])
    with pytest.raises(InvalidInput, match="not connected"):
        await rig.core.trigger(rig.tenant, [TriggerSpec("dag", "{}", desired_worker_id="nope")])


async def test_a_cancelled_start_that_never_reached_its_worker_frees_its_slot(rig: Rig) -> None:
    worker_id, session = await rig.worker(slots=1, reports_cancellation=True)
    (run_id,) = await rig.core.trigger(rig.tenant, [_spec()])
    await rig.settle()
    assert not session._queue.empty()  # the START waits on the stream, unread
    await rig.core.cancel(rig.tenant, [run_id], "by test")
    await rig.settle()
    assert await rig.used(worker_id) == 1  # kept: the worker might be running it
    # The stream breaks before the worker read anything: the start never arrived.
    await rig.core.open_session(rig.tenant, worker_id)
    for _ in range(500):  # the give-back runs in the background: poll, with a bound
        if await rig.used(worker_id) == 0:
            break
        await asyncio.sleep(0.01)
    assert await rig.used(worker_id) == 0


async def test_a_retried_task_of_a_sticky_run_returns_to_the_run_worker(rig: Rig) -> None:
    tasks = [TaskDef("a", "dag:a", retries=1), TaskDef("b", "dag:b", parents=("a",))]
    await rig.core.put_workflow(rig.tenant, "dag", tasks, None, StickyStrategy.HARD)
    one_id, one = await _dag_worker(rig, "one", slots=1)
    await rig.core.trigger(rig.tenant, [TriggerSpec("dag", "{}")])
    _, a_id, _ = await next_action(one)
    _, other = await _dag_worker(rig, "other", slots=10)
    await rig.report(one_id, a_id, 0, EventType.FAILED)
    kind, again, retry = await next_action(one)
    assert (kind, again, retry) == (ActionKind.START, a_id, 1)
    await rig.settle()
    assert other._queue.empty()


async def test_stream_events_reach_the_run_subscribers_then_end(rig: Rig) -> None:
    worker_id, session = await rig.worker()
    (run_id,) = await rig.core.trigger(rig.tenant, [_spec()])
    _, task_id, _ = await next_action(session)
    queue, unsubscribe = await rig.core.subscribe_stream(rig.tenant, run_id)
    other = (await rig.store.tenant_ensure("other", rig.clock.now())).id
    with pytest.raises(NotFound):
        await rig.core.subscribe_stream(other, run_id)
    with pytest.raises(NotFound):
        await rig.core.put_stream_event(other, task_id, b"x", 0)
    await rig.core.put_stream_event(rig.tenant, task_id, b"chunk", 0)
    event = await asyncio.wait_for(queue.get(), 5)
    assert event is not None and (event.data, event.index, event.run_id) == (b"chunk", 0, run_id)
    await rig.report(worker_id, task_id, 0, EventType.COMPLETED)
    assert await asyncio.wait_for(queue.get(), 5) is None  # the run is done
    unsubscribe()
