"""Fault 7: the reaper's decisions, just inside and just outside each threshold.

The engine core runs on an injected clock over a real SQLite store; the background reaper
is parked (``reaper_interval`` of an hour), and each case calls the reaper's two steps,
``core.reap()`` (silent workers) and ``core.expire()`` (execution timeouts, unacknowledged
starts, schedule timeouts), itself. Nothing waits for real time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hewer.domain import EventType, RunDetails, TaskDef, TaskEvent
from hewer.engine.core.clock import ManualClock
from hewer.engine.core.service import Action, ActionKind, EngineCore, Session, TriggerSpec
from hewer.engine.core.sweeps import RECONNECT_ALLOWANCE
from tests.helpers import GatedStore

INACTIVE_AFTER = 30.0
TIMEOUT = 60.0
SCHEDULE_TIMEOUT = 300.0
EPS = 0.001
BATCH = 500  # the store's page size for timed-out and unacknowledged attempts
PARKED = 3600.0  # the background reaper never ticks during a test


class Rig:
    def __init__(self, path: Path, **core: object) -> None:
        self.clock = ManualClock()
        self.store = GatedStore(path, lambda changes: bool(changes.new_workers))
        self.core = self._core(**core)
        self.tenant = ""

    def _core(self, **core: object) -> EngineCore:
        return EngineCore(
            self.store,
            self.clock,
            inactive_after=INACTIVE_AFTER,
            reaper_interval=PARKED,
            **core,  # type: ignore[arg-type]
        )

    async def start(self) -> None:
        await self.store.open()
        self.tenant = (await self.store.tenant_ensure("t", self.clock.now())).id
        await self.core.start()
        await self.workflow("job")

    async def workflow(self, name: str, **opts: object) -> None:
        opts.setdefault("timeout_s", TIMEOUT)
        opts.setdefault("schedule_timeout_s", SCHEDULE_TIMEOUT)
        task = TaskDef(name, f"{name}:{name}", **opts)  # type: ignore[arg-type]
        await self.core.put_workflow(self.tenant, name, [task], None)

    async def settle(self) -> None:
        await self.core.settled()

    async def worker(self, name: str = "w", slots: int = 1) -> tuple[str, Session]:
        runtime = {"extra": json.dumps({"reports_cancellation": True})}
        record = await self.core.register_worker(
            self.tenant,
            name,
            ["job:job", "long:long", "retry:retry"],
            {"default": slots},
            {},
            runtime,
        )
        return record.id, await self.core.open_session(self.tenant, record.id)

    async def trigger(self, workflow: str = "job", n: int = 1) -> list[str]:
        return await self.core.trigger(self.tenant, [TriggerSpec(workflow, "{}")] * n)

    async def report(self, worker_id: str, task_id: str, retry: int, kind: EventType) -> None:
        await self.core.task_event(TaskEvent(self.tenant, task_id, retry, worker_id, kind))

    async def run(self, run_id: str) -> RunDetails:
        return await self.core.run_details(self.tenant, run_id)

    async def status(self, run_id: str) -> tuple[str, int]:
        task = (await self.run(run_id)).tasks[0]
        return str(task.status), task.retry_count

    async def worker_status(self, worker_id: str) -> str:
        record = await self.store.worker_get(self.tenant, worker_id)
        assert record is not None
        return str(record.status)

    async def used(self, worker_id: str) -> int:
        return (await self.core.scheduler.slot_usage()).get(worker_id, {}).get("default", 0)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path / "core.db")
    await r.start()
    yield r
    await r.core.stop()
    await r.store.close()


async def next_action(session: Session, timeout: float = 5.0) -> Action:
    action = await asyncio.wait_for(session.next(), timeout)
    assert action is not None
    return action


async def no_action(rig: Rig, session: Session) -> bool:
    await rig.settle()
    try:
        await asyncio.wait_for(session.next(), 0.05)
    except TimeoutError:
        return True
    return False


async def started(rig: Rig, worker_id: str, session: Session) -> tuple[str, int]:
    """Take the next START off the session and acknowledge it."""
    action = await next_action(session)
    assert action.kind is ActionKind.START and action.info is not None
    task_id, retry = action.info.task_id, action.info.retry_count
    await rig.report(worker_id, task_id, retry, EventType.STARTED)
    return task_id, retry


# --------------------------------------------------------------------------- liveness


@pytest.mark.parametrize(
    ("silence", "lost"), [(INACTIVE_AFTER - EPS, False), (INACTIVE_AFTER + EPS, True)]
)
async def test_silent_worker(rig: Rig, silence: float, lost: bool) -> None:
    worker_id, session = await rig.worker()
    (run_id,) = await rig.trigger()
    await started(rig, worker_id, session)
    rig.clock.advance(silence)
    assert await rig.core.reap() == ([worker_id] if lost else [])
    assert await rig.core.expire() == 0
    if lost:
        assert await rig.worker_status(worker_id) == "inactive"
        assert await rig.status(run_id) == ("queued", 1)
        assert await rig.used(worker_id) == 0
    else:
        assert await rig.worker_status(worker_id) == "active"
        assert await rig.status(run_id) == ("running", 0)
        assert await rig.used(worker_id) == 1


async def test_a_heartbeat_restarts_the_window(rig: Rig) -> None:
    worker_id, _ = await rig.worker()
    rig.clock.advance(INACTIVE_AFTER - EPS)
    await rig.core.heartbeat(rig.tenant, worker_id)
    rig.clock.advance(INACTIVE_AFTER - EPS)
    assert await rig.core.reap() == []
    rig.clock.advance(2 * EPS)
    assert await rig.core.reap() == [worker_id]


@pytest.mark.parametrize(
    ("silence", "lost"), [(INACTIVE_AFTER - EPS, False), (INACTIVE_AFTER + EPS, True)]
)
async def test_engine_restart_gives_a_fresh_window(rig: Rig, silence: float, lost: bool) -> None:
    worker_id, _ = await rig.worker()
    rig.clock.advance(10 * INACTIVE_AFTER)  # silent for long before the restart
    await rig.core.stop()
    rig.core = rig._core()
    await rig.core.start()
    rig.clock.advance(silence)
    assert await rig.core.reap() == ([worker_id] if lost else [])


async def test_worker_whose_register_caller_vanished_is_still_reaped(rig: Rig) -> None:
    """Register commits the worker row, but the caller (a worker killed mid-call) is
    cancelled before the in-memory follow-up: the row must not stay ACTIVE forever."""
    rig.store.gate = asyncio.Event()
    caller = asyncio.create_task(
        rig.core.register_worker(rig.tenant, "ghost", ["job:job"], {"default": 1}, {}, {})
    )
    await rig.store.entered.wait()
    caller.cancel()
    rig.store.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    rig.store.gate = None
    await rig.settle()
    (ghost,) = [w for w in await rig.store.workers_list() if w.name == "ghost"]
    rig.clock.advance(INACTIVE_AFTER + EPS)
    await rig.core.reap()
    assert await rig.worker_status(ghost.id) != "active", (
        "a worker whose registration caller vanished stays ACTIVE forever"
    )


# --------------------------------------------------------------------------- execution timeout


@pytest.mark.parametrize(("age", "fired"), [(TIMEOUT - EPS, False), (TIMEOUT + EPS, True)])
async def test_execution_timeout(rig: Rig, age: float, fired: bool) -> None:
    worker_id, session = await rig.worker()
    (run_id,) = await rig.trigger()
    task_id, _ = await started(rig, worker_id, session)
    rig.clock.advance(age)
    await rig.core.heartbeat(rig.tenant, worker_id)
    assert await rig.core.reap() == []
    assert await rig.core.expire() == (1 if fired else 0)
    if fired:
        status, retry = await rig.status(run_id)
        assert (status, retry) == ("failed", 0)
        assert "timeout" in ((await rig.run(run_id)).tasks[0].error or "")
        action = await next_action(session)
        assert (action.kind, action.task_id) == (ActionKind.CANCEL, task_id)
    else:
        assert await rig.status(run_id) == ("running", 0)
        assert await no_action(rig, session)


async def test_execution_timeout_with_retries_left_requeues(rig: Rig) -> None:
    await rig.workflow("retry", retries=1)
    worker_id, session = await rig.worker(slots=2)
    (run_id,) = await rig.trigger("retry")
    await started(rig, worker_id, session)
    rig.clock.advance(TIMEOUT + EPS)
    await rig.core.heartbeat(rig.tenant, worker_id)
    assert await rig.core.expire() == 1
    assert (await rig.status(run_id))[1] == 1
    kinds = {(await next_action(session)).kind for _ in range(2)}
    assert kinds == {ActionKind.CANCEL, ActionKind.START}


async def test_a_long_per_task_timeout_is_honoured(rig: Rig) -> None:
    await rig.workflow("long", timeout_s=3600.0)
    worker_id, session = await rig.worker()
    (run_id,) = await rig.trigger("long")
    await started(rig, worker_id, session)
    for _ in range(119):  # 59.5 minutes of heartbeats every 30 s
        rig.clock.advance(INACTIVE_AFTER - EPS)
        await rig.core.heartbeat(rig.tenant, worker_id)
        assert await rig.core.reap() == []
        assert await rig.core.expire() == 0
    assert await rig.status(run_id) == ("running", 0)


async def test_one_sweep_ends_a_batch_plus_one_timed_out_attempts(rig: Rig) -> None:
    worker_id, session = await rig.worker(slots=BATCH + 1)
    run_ids = await rig.trigger(n=BATCH + 1)
    for _ in range(BATCH + 1):
        await started(rig, worker_id, session)
    rig.clock.advance(TIMEOUT + EPS)
    await rig.core.heartbeat(rig.tenant, worker_id)
    assert await rig.core.expire() == BATCH + 1, "one sweep leaves timed-out attempts behind"
    assert {await rig.status(r) for r in run_ids} == {("failed", 0)}


# --------------------------------------------------------------------------- unacknowledged start


@pytest.mark.parametrize(
    ("age", "requeued"), [(INACTIVE_AFTER - EPS, False), (INACTIVE_AFTER + EPS, True)]
)
async def test_unacknowledged_start(rig: Rig, age: float, requeued: bool) -> None:
    worker_id, session = await rig.worker()
    (run_id,) = await rig.trigger()
    action = await next_action(session)  # sent, never acknowledged
    assert action.kind is ActionKind.START
    # The stream it went out on breaks; the worker reconnects without acknowledging it.
    # (A start on a stream that stays open was delivered and is never sent twice.)
    session = await rig.core.open_session(rig.tenant, worker_id)
    rig.clock.advance(age)
    await rig.core.heartbeat(rig.tenant, worker_id)
    assert await rig.core.expire() == (1 if requeued else 0)
    if requeued:
        again = await next_action(session)
        assert again.info is not None and again.info.retry_count == 1
        assert await rig.used(worker_id) == 1, "the lost start's slot was given back"
    else:
        assert await rig.status(run_id) == ("running", 0)


@pytest.mark.parametrize(
    ("after_restart", "requeued"),
    [
        (INACTIVE_AFTER + RECONNECT_ALLOWANCE - EPS, False),
        (INACTIVE_AFTER + RECONNECT_ALLOWANCE + EPS, True),
    ],
)
async def test_engine_restart_gives_unacknowledged_starts_a_fresh_window(
    rig: Rig, after_restart: float, requeued: bool
) -> None:
    """A start delivered just before the engine went down: the worker's STARTED report is
    being retried through the outage. After the restart it gets a full window to land, as
    the worker's liveness does, plus the time a worker takes to reconnect."""
    worker_id, session = await rig.worker()
    (run_id,) = await rig.trigger()
    await next_action(session)  # delivered; the STARTED report is lost with the engine
    await rig.core.stop()
    rig.clock.advance(INACTIVE_AFTER / 2)  # an outage shorter than the window
    rig.core = rig._core()
    await rig.core.start()
    await rig.core.open_session(rig.tenant, worker_id)  # the worker reconnects
    rig.clock.advance(after_restart)
    await rig.core.heartbeat(rig.tenant, worker_id)
    assert await rig.core.expire() == (1 if requeued else 0), (
        "a start was re-queued before the worker had a full window after the restart"
    )
    assert (await rig.status(run_id))[1] == (1 if requeued else 0)


async def test_an_acknowledged_start_is_not_requeued(rig: Rig) -> None:
    worker_id, session = await rig.worker()
    (run_id,) = await rig.trigger()
    await started(rig, worker_id, session)
    rig.clock.advance(INACTIVE_AFTER + EPS)
    await rig.core.heartbeat(rig.tenant, worker_id)
    assert await rig.core.expire() == 0
    assert await rig.status(run_id) == ("running", 0)


# --------------------------------------------------------------------------- schedule timeout


@pytest.mark.parametrize(
    ("age", "cancelled"), [(SCHEDULE_TIMEOUT - EPS, False), (SCHEDULE_TIMEOUT + EPS, True)]
)
async def test_schedule_timeout(rig: Rig, age: float, cancelled: bool) -> None:
    (run_id,) = await rig.trigger()  # no worker serves it
    rig.clock.advance(age)
    assert await rig.core.expire() == (1 if cancelled else 0)
    details = await rig.run(run_id)
    if cancelled:
        assert str(details.tasks[0].status) == "cancelled"
        assert "schedule timeout" in (details.tasks[0].error or "")
    else:
        assert str(details.tasks[0].status) == "queued"


# --------------------------------------------------------------------------- reassignment cap


@pytest.mark.parametrize("cap", [0, 1, 3])
async def test_reassignment_cap(tmp_path: Path, cap: int) -> None:
    rig = Rig(tmp_path / "cap.db", max_reassignments=cap)
    await rig.start()
    try:
        (run_id,) = await rig.trigger()
        for loss in range(cap + 1):
            worker_id, session = await rig.worker(f"w{loss}")
            _, retry = await started(rig, worker_id, session)
            assert retry == loss
            rig.clock.advance(INACTIVE_AFTER + EPS)
            assert await rig.core.reap() == [worker_id]
            status, _ = await rig.status(run_id)
            assert status == ("failed" if loss == cap else "queued"), (loss, status)
        error = (await rig.run(run_id)).tasks[0].error or ""
        assert "lost" in error.lower(), error
    finally:
        await rig.core.stop()
        await rig.store.close()


# --------------------------------------------------------------------------- terminal tasks


async def test_a_cancelled_task_is_not_requeued_when_its_worker_is_lost(rig: Rig) -> None:
    worker_id, session = await rig.worker()
    (run_id,) = await rig.trigger()
    await started(rig, worker_id, session)
    await rig.core.cancel(rig.tenant, [run_id], "by test")
    rig.clock.advance(INACTIVE_AFTER + EPS)
    assert await rig.core.reap() == [worker_id]
    assert await rig.status(run_id) == ("cancelled", 0)
    assert await rig.used(worker_id) == 0


async def test_a_completed_task_stays_completed_when_its_worker_is_lost(rig: Rig) -> None:
    worker_id, session = await rig.worker()
    (run_id,) = await rig.trigger()
    task_id, retry = await started(rig, worker_id, session)
    await rig.report(worker_id, task_id, retry, EventType.COMPLETED)
    rig.clock.advance(max(INACTIVE_AFTER, TIMEOUT) + EPS)
    assert await rig.core.reap() == [worker_id]
    assert await rig.core.expire() == 0
    assert await rig.status(run_id) == ("completed", 0)
