"""Durable tasks through our SDK against a real engine (SQLite and PostgreSQL): durable
sleeps, event waits, memoised values and child runs; eviction and resumption; a worker
SIGKILLed mid-sleep whose task resumes on another worker without sleeping again."""

from __future__ import annotations

import importlib
import json
import os
import signal
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from hewer import (
    ConfigurationError,
    Context,
    DurableContext,
    EvictionPolicy,
    Hewer,
    SleepCondition,
    TaskRunError,
    UserEventCondition,
    Worker,
    or_,
)
from hewer.domain import RunStatus
from hewer.testing import EngineThread
from tests.helpers import wait_for
from tests.integration.conftest import WorkerFactory

DURABLE_APP = "tests.integration.durable_app:make_worker"


def _status(engine: EngineThread, run_id: str) -> RunStatus:
    core = engine.engine.core
    return engine.call(core.run_details(engine.engine.default_tenant_id, run_id)).status


def _ended_attempts(engine: EngineThread, task_id: str) -> list[str | None]:
    """Outcomes of the task's attempts that ended while it went on."""
    store = engine.engine.store
    rows = engine.call(store.attempts_list(engine.engine.default_tenant_id))
    return [a.outcome for a in sorted(rows, key=lambda a: a.retry_count) if a.task_id == task_id]


def _task_id(engine: EngineThread, run_id: str) -> str:
    core = engine.engine.core
    details = engine.call(core.run_details(engine.engine.default_tenant_id, run_id))
    return str(details.tasks[0].task_id)


def test_durable_sleep_event_memo_and_children(
    engine: EngineThread, client: Hewer, in_process_worker: Callable[..., Worker]
) -> None:
    calls: list[str] = []
    waiting = []

    @client.task(name="durable-child")
    def child(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"doubled": input["n"] * 2, "parent": ctx.parent_workflow_run_id}

    async def expensive(n: int) -> dict[str, int]:
        calls.append(f"expensive:{n}")
        return {"n": n}

    @client.durable_task(name="durable-flow", execution_timeout=timedelta(seconds=30))
    async def flow(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        began = time.monotonic()
        first = await ctx.aio_now()
        slept = await ctx.aio_sleep_for(timedelta(seconds=1))
        after_sleep = time.monotonic() - began
        memo = await ctx.aio_memo(expensive, 21)
        again = await ctx.aio_memo(expensive, 21)  # a second node: computed again
        waiting.append(ctx.task_run_external_id)
        event = await ctx.aio_wait_for_event("durable:go", "input.ok == true")
        either = await ctx.aio_wait_for(
            "either",
            or_(SleepCondition(timedelta(milliseconds=300)), UserEventCondition("never:comes")),
        )
        one = await child.aio_run({"n": memo["n"]})
        many = await child.aio_run_many([{"n": 1}, {"n": 2}])
        return {
            "first": first.isoformat(),
            "slept": slept.duration.total_seconds(),
            "after_sleep": after_sleep,
            "memo": memo,
            "again": again,
            "event": event,
            "either": sorted(either.get("CREATE", {})),
            "one": one,
            "many": many,
            "invocation": ctx.invocation_count,
        }

    worker = in_process_worker(client, [flow, child], slots=3)
    assert worker.slot_config == {"default": 3, "durable": 1000}
    ref = flow.run_no_wait({})
    wait_for(lambda: waiting, timeout=20, what="the durable task waits for its event")
    client.events.push("durable:go", {"ok": False})  # does not match the expression
    client.events.push("durable:go", {"ok": True, "n": 7})
    out = ref.result()
    assert out["slept"] == 1.0 and out["after_sleep"] >= 1.0
    assert out["memo"] == {"n": 21} and out["again"] == {"n": 21}
    assert calls == ["expensive:21", "expensive:21"]
    assert out["event"] == {"ok": True, "n": 7}
    assert len(out["either"]) == 1  # the sleep of the or-group
    assert out["one"] == {"doubled": 42, "parent": ref.run_id}
    assert [m["doubled"] for m in out["many"]] == [2, 4]
    assert out["invocation"] == 1
    assert _status(engine, ref.run_id) is RunStatus.COMPLETED


def test_a_waiting_durable_task_is_evicted_and_resumes_from_its_log(
    engine: EngineThread, client: Hewer, in_process_worker: Callable[..., Worker]
) -> None:
    calls: list[int] = []
    seen: list[tuple[int, float]] = []

    async def once(tag: str) -> str:
        calls.append(1)
        return tag

    @client.durable_task(
        name="durable-evicted", eviction_policy=EvictionPolicy(ttl=timedelta(milliseconds=300))
    )
    async def sleeper(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        tag = await ctx.aio_memo(once, "x")
        seen.append((ctx.invocation_count, time.monotonic()))
        await ctx.aio_sleep_for(timedelta(seconds=2))
        return {"tag": tag, "invocation": ctx.invocation_count}

    worker = in_process_worker(client, [sleeper], slots=1)
    began = time.monotonic()
    ref = sleeper.run_no_wait({})
    task_id = _task_id(engine, ref.run_id)
    # Evicted: the engine holds the task, and no slot is taken meanwhile.
    wait_for(
        lambda: _ended_attempts(engine, task_id) == ["evicted"],
        timeout=10,
        what="the waiting task evicted",
    )
    usage = engine.call(engine.engine.core.workers_view(engine.engine.default_tenant_id))
    assert [v.slots_used for v in usage if v.record.id == worker.id] == [
        {"default": 0, "durable": 0}
    ]
    out = ref.result()
    took = time.monotonic() - began
    assert out == {"tag": "x", "invocation": 2}
    assert calls == [1], "the memoised function ran once across both invocations"
    assert [s[0] for s in seen] == [1, 2]
    assert 2.0 <= took < 10, took  # slept once, counted from the first invocation
    assert _ended_attempts(engine, task_id) == ["evicted"]


def test_durable_tasks_must_be_async(client: Hewer) -> None:
    with pytest.raises(ConfigurationError, match="async"):

        @client.durable_task(name="sync-durable")
        def bad(input: dict[str, Any], ctx: DurableContext) -> None:  # type: ignore[type-var]
            return None


def test_a_failing_child_fails_the_durable_wait_with_its_error(
    engine: EngineThread, client: Hewer, in_process_worker: Callable[..., Worker]
) -> None:
    @client.task(name="durable-bad-child", retries=0)
    def bad_child(input: dict[str, Any], ctx: Context) -> None:
        raise ValueError("child says no")

    @client.durable_task(name="durable-parent", retries=0)
    async def parent(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        try:
            await bad_child.aio_run({})
        except TaskRunError as exc:
            return {"caught": str(exc)}
        return {"caught": None}

    in_process_worker(client, [parent, bad_child], slots=2)
    out = parent.run({})
    assert "child says no" in out["caught"]


@pytest.mark.slow
def test_a_worker_killed_mid_sleep_resumes_elsewhere_without_sleeping_again(
    engine: EngineThread,
    spawn_worker: WorkerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEWER_TOKEN", engine.token)
    monkeypatch.setenv("HEWER_HOST_PORT", engine.address)
    from tests.integration import durable_app

    app = importlib.reload(durable_app)
    trace = tmp_path / "executions" / "durable-trace.jsonl"
    first = spawn_worker("durable-a", slots=2, app=DURABLE_APP)
    began = time.time()
    ref = app.durable_sleeper.run_no_wait({"seconds": 4})

    def events() -> list[dict[str, Any]]:
        if not trace.exists():
            return []
        return [json.loads(line) for line in trace.read_text().splitlines() if line]

    wait_for(
        lambda: any(e["event"] == "sleeping" for e in events()),
        timeout=20,
        what="the durable task sleeps",
    )
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    spawn_worker("durable-b", slots=2, app=DURABLE_APP)
    out = ref.result()
    done_at = time.time()
    trace_events = events()
    assert [e["event"] for e in trace_events if e["event"] == "memo"] == ["memo"], trace_events
    invocations = [e["invocation"] for e in trace_events if e["event"] == "sleeping"]
    assert invocations[0] == 1 and invocations[-1] >= 2, trace_events
    assert out["memo"] == "computed-once"
    # The second worker slept only what was left of the 4 s (plus the liveness window it
    # took to see the first one die), not 4 s again from its start.
    resumed = next(
        e["at"] for e in trace_events if e["event"] == "sleeping" and e["invocation"] > 1
    )
    assert done_at - resumed < 3.5, (done_at - resumed, trace_events)
    assert done_at - began >= 4.0
    assert _status(engine, ref.run_id) is RunStatus.COMPLETED


def test_an_engine_restart_mid_sleep_loses_no_completion(
    engine: EngineThread,
    client: Hewer,
    in_process_worker: Callable[..., Worker],
    tmp_path: Path,
    database_url: str,
) -> None:
    bodies: list[int] = []

    @client.durable_task(name="durable-across-restart")
    async def sleeper(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        bodies.append(ctx.invocation_count)
        await ctx.aio_sleep_for(timedelta(seconds=2))
        return {"invocation": ctx.invocation_count}

    in_process_worker(client, [sleeper], slots=1)
    began = time.monotonic()
    ref = sleeper.run_no_wait({})
    wait_for(lambda: bodies, timeout=20, what="the durable task sleeps")
    port = int(engine.address.rsplit(":", 1)[1])
    engine.stop()
    # The same database on the same port: the worker's streams reconnect to it.
    with EngineThread(
        tmp_path,
        database_url=database_url,
        port=port,
        heartbeat_interval=engine.settings.heartbeat_interval,
        inactive_after=engine.settings.inactive_after,
    ):
        out = ref.result()
    assert out == {"invocation": 1}
    assert bodies == [1], "the body ran once: the sleep's completion reached it after the restart"
    assert time.monotonic() - began >= 2.0


def test_a_replay_that_takes_other_steps_fails_with_non_determinism(
    engine: EngineThread, client: Hewer, in_process_worker: Callable[..., Worker]
) -> None:
    invocations: list[int] = []

    async def value() -> int:
        return 1

    @client.durable_task(
        name="durable-nondeterministic",
        retries=3,
        eviction_policy=EvictionPolicy(ttl=timedelta(milliseconds=200)),
    )
    async def drifting(input: dict[str, Any], ctx: DurableContext) -> None:
        invocations.append(ctx.invocation_count)
        if ctx.invocation_count == 1:
            await ctx.aio_memo(value)
        else:
            # The log holds a memoised value here; a sleep at the same step is another path.
            await ctx.aio_sleep_for(timedelta(seconds=1))
        await ctx.aio_sleep_for(timedelta(seconds=1))

    in_process_worker(client, [drifting], slots=1)
    with pytest.raises(TaskRunError, match=r"NonDeterminismError: node 1 .* was a memo"):
        drifting.run({})
    assert invocations == [1, 2], "failed without using its retries"


def test_a_child_refused_for_its_idempotency_key_raises_instead_of_hanging(
    engine: EngineThread, client: Hewer, in_process_worker: Callable[..., Worker]
) -> None:
    from hewer import IdempotencyCollisionError, TTLBasedIdempotencyConfig

    @client.task(
        name="durable-once",
        idempotency=TTLBasedIdempotencyConfig(key_expression="input.k", ttl=timedelta(hours=1)),
    )
    def once(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"k": input["k"]}

    @client.durable_task(name="durable-twice", retries=0)
    async def twice(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        first = await once.aio_run({"k": "same"})
        try:
            await once.aio_run({"k": "same"})
        except IdempotencyCollisionError as exc:
            return {"first": first, "second": str(exc)}
        return {"first": first, "second": None}

    in_process_worker(client, [twice, once], slots=2)
    out = twice.run({})
    assert out["first"] == {"k": "same"}
    assert "idempotency key" in out["second"]
