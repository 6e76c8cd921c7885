"""Worker processes under signals and stalls: graceful stop, blocked loops, timeouts."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from hewer import Context, Hewer, RetryAfter, TaskRunError
from hewer.testing import EngineThread
from tests.conftest import INACTIVE_AFTER
from tests.helpers import wait_for
from tests.integration.conftest import WorkerFactory


def worker_status(engine: EngineThread, name: str) -> str | None:
    for w in engine.call(engine.engine.store.workers_list()):
        if w.name == name:
            return str(w.status)
    return None


def test_sigterm_finishes_in_flight_tasks_then_stops(
    app: Any, spawn_worker: WorkerFactory, tmp_path: Path, engine: EngineThread
) -> None:
    worker = spawn_worker("graceful", slots=2)
    refs = [app.slow.run_no_wait(app.Sleep(seconds=1.0)) for _ in range(2)]
    executions = tmp_path / "executions"
    wait_for(
        lambda: len(list(executions.glob(f"started-{worker.pid}-*"))) == 2,
        what="both tasks started",
    )
    worker.send_signal(signal.SIGTERM)
    late = app.slow.run_no_wait(app.Sleep(seconds=0.0))  # must not go to the stopping worker
    for ref in refs:
        result = ref.result()
        assert result == {"pid": worker.pid, "retry_count": 0}  # finished once, in place
    assert worker.wait(timeout=30) == 0
    wait_for(lambda: worker_status(engine, "graceful") == "stopped", what="STOPPED")
    successor = spawn_worker("successor", slots=1)
    assert late.result()["pid"] == successor.pid


def test_blocked_event_loop_does_not_make_the_worker_inactive(
    app: Any, spawn_worker: WorkerFactory, engine: EngineThread
) -> None:
    worker = spawn_worker("blocked", slots=1)
    result = app.block_loop.run(app.Sleep(seconds=2 * INACTIVE_AFTER))
    assert result == {"pid": worker.pid, "retry_count": 0}
    assert worker_status(engine, "blocked") == "active"


class Nap(BaseModel):
    seconds: float


def test_execution_timeout_fails_the_attempt_and_cancels_it(
    client: Hewer, in_process_worker: Any
) -> None:
    seen_cancel = threading.Event()
    attempts: list[int] = []

    @client.task(name="sleepy", execution_timeout=timedelta(milliseconds=300), retries=1)
    async def sleepy(input: Nap, ctx: Context) -> dict[str, bool]:
        attempts.append(ctx.retry_count)
        try:
            await asyncio.sleep(input.seconds)
        except asyncio.CancelledError:
            seen_cancel.set()
            raise
        return {"ok": True}

    in_process_worker(client, [sleepy])
    with pytest.raises(TaskRunError, match="execution timeout"):
        sleepy.run(Nap(seconds=30))
    assert attempts == [0, 1]  # timed out, retried once, timed out again
    assert seen_cancel.wait(10), "the worker was told to cancel the timed-out attempt"
    assert sleepy.run(Nap(seconds=0)) == {"ok": True}


def test_worker_reconnects_after_an_engine_restart(tmp_path: Path, database_url: str) -> None:
    first = EngineThread(
        tmp_path, database_url=database_url, inactive_after=INACTIVE_AFTER
    ).start()
    port = first.engine.port
    hw = Hewer(settings=first.client_settings(heartbeat_interval=0.1, grace_period=5))
    gate = threading.Event()

    @hw.task(name="gated")
    def gated(input: Nap, ctx: Context) -> dict[str, int]:
        gate.wait(30)
        return {"attempt": ctx.retry_count}

    @hw.task(name="quick")
    def quick(input: Nap, ctx: Context) -> dict[str, bool]:
        return {"ok": True}

    worker = hw.worker("survivor", slots=2, workflows=[gated, quick])
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    second: EngineThread | None = None
    try:
        assert worker.ready.wait(20)
        in_flight = gated.run_no_wait(Nap(seconds=0))
        wait_for(lambda: first.call(first.engine.store.tasks_running()), what="task assigned")
        first.stop()
        second = EngineThread(
            tmp_path, database_url=database_url, port=port, inactive_after=INACTIVE_AFTER
        ).start()
        gate.set()  # the task finishes while its worker reconnects; the result must land
        assert in_flight.result() == {"attempt": 0}
        assert quick.run(Nap(seconds=0)) == {"ok": True}
    finally:
        worker.stop()
        thread.join(20)
        if second is not None:
            second.stop()
        first.stop()


def test_a_sync_task_ignoring_cancellation_keeps_its_slot(
    client: Hewer, in_process_worker: Any, engine: EngineThread
) -> None:
    started = threading.Event()
    stubborn_end: list[float] = []
    quick_start: list[float] = []

    @client.task(name="stubborn")
    def stubborn(input: Nap, ctx: Context) -> dict[str, bool]:
        started.set()
        time.sleep(input.seconds)  # ignores ctx.is_cancelled on purpose
        stubborn_end.append(time.monotonic())
        return {"ok": True}

    @client.task(name="quick")
    def quick(input: Nap, ctx: Context) -> dict[str, bool]:
        quick_start.append(time.monotonic())
        return {"ok": True}

    in_process_worker(client, [stubborn, quick], slots=1)
    ref = stubborn.run_no_wait(Nap(seconds=1.0))
    assert started.wait(10)
    tenant = engine.engine.default_tenant_id
    engine.call(engine.engine.core.cancel(tenant, [ref.run_id], "by test"))
    with pytest.raises(TaskRunError, match="cancel"):
        ref.result()
    assert quick.run(Nap(seconds=0)) == {"ok": True}
    assert stubborn_end and quick_start
    assert quick_start[0] >= stubborn_end[0], "the worker ran two tasks in one slot"
    wait_for(
        lambda: (
            engine.call(engine.engine.core.scheduler.slot_usage()).get(
                next(iter(engine.call(engine.engine.core.scheduler.slot_usage())), ""), {}
            )
            == {"default": 0}
        ),
        what="slot free after drain",
    )


def test_retry_after_and_refresh_timeout(client: Hewer, in_process_worker: Any) -> None:
    attempts: list[float] = []

    @client.task(name="later", retries=1)
    def later(input: Nap, ctx: Context) -> dict[str, int]:
        attempts.append(time.monotonic())
        if ctx.retry_count == 0:
            raise RetryAfter(timedelta(seconds=input.seconds))
        return {"attempt": ctx.retry_count}

    @client.task(name="extends", execution_timeout=timedelta(milliseconds=500))
    def extends(input: Nap, ctx: Context) -> dict[str, bool]:
        ctx.refresh_timeout(timedelta(seconds=5))
        time.sleep(input.seconds)  # well past the original 0.5 s
        return {"ok": not ctx.is_cancelled}

    in_process_worker(client, [later, extends])
    assert later.run(Nap(seconds=0.6)) == {"attempt": 1}
    assert attempts[1] - attempts[0] >= 0.6, "the retry waited as it was told to"
    assert extends.run(Nap(seconds=1.2)) == {"ok": True}


def test_tasks_left_at_the_end_of_the_grace_period_are_requeued_at_once(
    app: Any, spawn_worker: WorkerFactory, tmp_path: Path, engine: EngineThread
) -> None:
    impatient = spawn_worker("impatient", slots=1, grace_period=0.3)
    ref = app.slow.run_no_wait(app.Sleep(seconds=2.0))
    executions = tmp_path / "executions"
    wait_for(lambda: list(executions.glob(f"started-{impatient.pid}-*")), what="task started")
    impatient.send_signal(signal.SIGTERM)
    assert impatient.wait(timeout=20) == 0
    assert worker_status(engine, "impatient") == "stopped"
    tenant = engine.engine.default_tenant_id

    def requeued() -> bool:
        details = engine.call(engine.engine.core.run_details(tenant, ref.run_id))
        task = details.tasks[0] if details else None
        return task is not None and task.status == "queued" and task.retry_count == 1

    # Given back when the worker left, well inside the INACTIVE window.
    wait_for(requeued, timeout=INACTIVE_AFTER / 3, what="task re-queued at once")
    heir = spawn_worker("heir", slots=1)
    assert ref.result() == {"pid": heir.pid, "retry_count": 1}


def test_a_killed_worker_is_declared_inactive_within_its_window_plus_a_second(
    app: Any, spawn_worker: WorkerFactory, engine: EngineThread
) -> None:
    worker = spawn_worker("doomed", slots=1)
    wait_for(lambda: worker_status(engine, "doomed") == "active", what="ACTIVE")
    killed_at = time.monotonic()
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    wait_for(
        lambda: worker_status(engine, "doomed") == "inactive",
        timeout=INACTIVE_AFTER + 5,
        interval=0.01,
        what="INACTIVE",
    )
    # Silent since at most one heartbeat before the kill, declared lost within a second
    # of its window.
    assert time.monotonic() - killed_at <= INACTIVE_AFTER + 1.0
