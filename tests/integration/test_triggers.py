"""Events, scheduled runs, crons, on-failure tasks and child runs through our SDK, against
a real engine (SQLite and PostgreSQL), with in-process workers."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hewer import (
    Context,
    DefaultFilter,
    EventPush,
    Hewer,
    HewerError,
    IdempotencyCollisionError,
    ParentCondition,
    SleepCondition,
    StatusBasedIdempotencyConfig,
    TaskRunError,
    TTLBasedIdempotencyConfig,
    UserEventCondition,
    Worker,
    or_,
)
from hewer.domain import RunRow, RunStatus
from hewer.testing import EngineThread
from tests.helpers import wait_for


def _runs(engine: EngineThread, workflow: str) -> list[RunRow]:
    runs = engine.call(engine.engine.store.runs_list(engine.engine.default_tenant_id))
    return [r for r in runs if r.workflow_name == workflow]


def test_events_start_the_workflows_that_listen(
    engine: EngineThread, client: Hewer, in_process_worker: Callable[..., Worker]
) -> None:
    seen: list[dict[str, Any]] = []

    @client.task(name="on-signup", on_events=["user:signup"])
    def on_signup(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        record = {
            "input": input,
            "event_id": ctx.triggering_event_id,
            "event_key": ctx.triggering_event_key,
            "by": ctx.triggered_by,
            "meta": ctx.additional_metadata,
        }
        seen.append(record)
        return record

    audit = client.workflow("audit", on_events=["user:signup", "user:gone"])

    @audit.task()
    def record(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        seen.append({"audit": input, "key": ctx.triggering_event_key})
        return {}

    in_process_worker(client, [on_signup, audit])
    event = client.events.push("user:signup", {"email": "a@b.c"}, additional_metadata={"s": 1})
    assert event.key == "user:signup" and event.payload == {"email": "a@b.c"}
    bulk = client.events.bulk_push(
        [EventPush("user:gone", {"email": "x@y.z"}), EventPush("nobody:listens", {})]
    )
    assert [e.key for e in bulk] == ["user:gone", "nobody:listens"]

    wait_for(lambda: len(seen) == 3, timeout=20, what="three runs from two events")
    signup = next(s for s in seen if "event_id" in s)
    assert signup == {
        "input": {"email": "a@b.c"},
        "event_id": event.id,
        "event_key": "user:signup",
        "by": "event",
        "meta": {"s": 1, "hatchet__event_id": event.id, "hatchet__event_key": "user:signup"},
    }
    audits = sorted((s["key"], s["audit"]["email"]) for s in seen if "audit" in s)
    assert audits == [("user:gone", "x@y.z"), ("user:signup", "a@b.c")]
    assert {r.event_id for r in _runs(engine, "audit")} == {event.id, bulk[0].id}
    # Nothing listens to the last key: the event is kept, no run was made for it.
    runs = engine.call(engine.engine.store.runs_list(engine.engine.default_tenant_id))
    assert all(r.event_id != bulk[1].id for r in runs)


def test_bad_events_are_refused(engine: EngineThread, client: Hewer) -> None:
    with pytest.raises(HewerError, match="key"):
        client.events.push("  ", {})
    with pytest.raises(HewerError, match="priority"):
        client.events.push("k", {}, priority=7)
    with pytest.raises(HewerError, match="at most 1000"):
        client.events.bulk_push([EventPush("k")] * 1001)


def test_a_scheduled_run_fires_once_at_its_time_and_a_deleted_one_never(
    engine: EngineThread, client: Hewer, in_process_worker: Callable[..., Worker]
) -> None:
    ran: list[tuple[str, float, str]] = []

    @client.task(name="remind")
    def remind(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        ran.append((input["who"], time.time(), ctx.triggered_by))
        return {}

    in_process_worker(client, [remind])
    at = datetime.now(UTC) + timedelta(seconds=1.5)
    (kept,) = remind.schedule(at, {"who": "ann"})
    (dropped,) = remind.schedule(at, {"who": "bob"})
    assert kept.trigger_at == at.replace(microsecond=kept.trigger_at.microsecond)
    listed = {s.id: s for s in client.scheduled.list("remind")}
    assert set(listed) == {kept.id, dropped.id}
    assert listed[kept.id].input == {"who": "ann"} and listed[kept.id].run_id is None
    moved = client.scheduled.update(dropped.id, at + timedelta(days=1))
    assert moved.trigger_at == (at + timedelta(days=1)).replace(
        microsecond=moved.trigger_at.microsecond
    )
    client.scheduled.delete(dropped.id)
    with pytest.raises(HewerError, match="not found"):
        client.scheduled.get(dropped.id)

    wait_for(lambda: len(ran) >= 1, timeout=20, what="the scheduled run")
    who, started, by = ran[0]
    assert (who, by) == ("ann", "schedule")
    assert at.timestamp() <= started <= at.timestamp() + 1.5
    fired = client.scheduled.get(kept.id)
    assert fired.run_id is not None
    with pytest.raises(HewerError, match=r"409.*fired already"):
        client.scheduled.update(kept.id, at + timedelta(hours=1))
    wait_for(
        lambda: client.scheduled.get(kept.id).run_status == "SUCCEEDED",
        timeout=20,
        what="the scheduled run's status",
    )
    wait_for(lambda: time.time() > at.timestamp() + 2.0, timeout=10, what="past the time")
    assert [r[0] for r in ran] == ["ann"]
    assert len(_runs(engine, "remind")) == 1


def test_crons_declared_and_created_at_run_time(
    engine: EngineThread, client: Hewer, in_process_worker: Callable[..., Worker]
) -> None:
    ticks: list[tuple[str, float]] = []

    @client.task(name="tick", on_crons=["* * * * * *"], cron_input={"from": "declared"})
    def tick(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        ticks.append((input.get("from", ""), time.time()))
        return {}

    in_process_worker(client, [tick])
    wait_for(lambda: len(ticks) >= 2, timeout=20, what="two declared ticks")
    (declared,) = client.crons.list("tick")
    assert declared.declared and declared.expression == "* * * * * *"
    created = client.crons.create("tick", "every-second", "* * * * * *", {"from": "api"})
    assert not created.declared and client.crons.get(created.id).name == "every-second"
    wait_for(
        lambda: any(src == "api" for src, _ in ticks), timeout=20, what="a tick of the new cron"
    )
    client.crons.delete(created.id)
    with pytest.raises(HewerError, match="not found"):
        client.crons.get(created.id)
    with pytest.raises(HewerError, match="not valid"):
        client.crons.create("tick", "bad", "every tuesday")
    client.crons.create("tick", "twice", "0 0 * * *")
    with pytest.raises(HewerError, match=r"409.*has a cron named 'twice'"):
        client.crons.create("tick", "twice", "0 0 * * *")
    declared_times = sorted(t for src, t in ticks if src == "declared")
    assert len({int(t) for t in declared_times}) == len(declared_times), "a tick ran twice"


def test_on_failure_task_sees_the_errors_and_the_run_stays_failed(
    engine: EngineThread, client: Hewer, in_process_worker: Callable[..., Worker]
) -> None:
    handled: list[dict[str, str]] = []
    pipeline = client.workflow("pipeline")

    @pipeline.task()
    def extract(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        if input.get("fail"):
            raise RuntimeError("source unreachable")
        return {"rows": 3}

    @pipeline.task(parents=[extract])
    def load(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"loaded": ctx.task_output(extract)["rows"]}

    @pipeline.on_failure_task()
    def alert(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        handled.append(ctx.task_run_errors)
        return {"alerted": True}

    in_process_worker(client, [pipeline])
    assert pipeline.run({}) == {"extract": {"rows": 3}, "load": {"loaded": 3}}
    with pytest.raises(TaskRunError) as caught:
        pipeline.run({"fail": True})
    assert "source unreachable" in str(caught.value)
    wait_for(lambda: len(handled) == 1, timeout=20, what="the on-failure task ran")
    assert list(handled[0]) == ["extract"]
    assert "source unreachable" in handled[0]["extract"]
    failed = [r for r in _runs(engine, "pipeline") if r.status is RunStatus.FAILED]
    assert len(failed) == 1
    found = engine.call(engine.engine.store.run_get(failed[0].tenant_id, failed[0].id))
    assert found is not None
    status = {t.readable_id: str(t.status) for t in found[1]}
    assert status == {"extract": "failed", "load": "skipped", "alert-on-failure": "completed"}
    assert len(handled) == 1  # the successful run did not call it


def test_child_runs_keep_their_link_and_a_child_key_starts_one_child(
    engine: EngineThread, client: Hewer, in_process_worker: Callable[..., Worker]
) -> None:
    @client.task(name="kid")
    def kid(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {
            "parent": ctx.parent_workflow_run_id,
            "index": ctx.child_index,
            "key": ctx.child_key,
        }

    @client.task(name="mum")
    async def mum(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        a = await kid.aio_run_no_wait({}, child_key="only")
        b = await kid.aio_run_no_wait({}, child_key="only")
        c = await kid.aio_run_no_wait({})
        return {
            "run": ctx.workflow_run_id,
            "ids": [a.run_id, b.run_id, c.run_id],
            "outs": [await a.aio_result(), await c.aio_result()],
        }

    in_process_worker(client, [kid, mum])
    out = mum.run({})
    assert out["ids"][0] == out["ids"][1] != out["ids"][2]
    assert out["outs"] == [
        {"parent": out["run"], "index": 0, "key": "only"},
        {"parent": out["run"], "index": 2, "key": None},
    ]
    kids = _runs(engine, "kid")
    assert len(kids) == 2
    assert {r.parent_run_id for r in kids} == {out["run"]}
    with pytest.raises(HewerError, match="inside a running task"):
        kid.run_no_wait({}, child_key="outside")


def test_cancelling_a_parent_cancels_its_running_children(
    engine: EngineThread, client: Hewer, in_process_worker: Callable[..., Worker]
) -> None:
    started: list[str] = []
    saw_cancel: list[str] = []

    @client.task(name="slow-kid")
    def slow_kid(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        started.append(ctx.workflow_run_id)
        if ctx.cancelled.wait(15):
            saw_cancel.append(ctx.workflow_run_id)
        return {}

    @client.task(name="waiting-mum")
    def waiting_mum(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        kid = slow_kid.run_no_wait({})
        ctx.cancelled.wait(15)
        return {"kid": kid.run_id}

    in_process_worker(client, [slow_kid, waiting_mum], slots=4)
    mum = waiting_mum.run_no_wait({})
    wait_for(lambda: len(started) == 1, timeout=20, what="the child started")
    tenant = engine.engine.default_tenant_id
    cancelled = engine.call(engine.engine.core.cancel(tenant, [mum.run_id], "stop"))
    (kid_run,) = _runs(engine, "slow-kid")
    assert kid_run.id in cancelled  # a one-task run: its task id is the run id
    wait_for(lambda: saw_cancel == [kid_run.id], timeout=20, what="the child saw the cancel")
    status = engine.call(engine.engine.core.run_details(tenant, kid_run.id)).status
    assert status is RunStatus.CANCELLED


def test_idempotency_keys_refuse_a_second_run(
    engine: EngineThread, client: Hewer, in_process_worker: Callable[..., Worker]
) -> None:
    @client.task(
        name="charge",
        idempotency=TTLBasedIdempotencyConfig(
            key_expression="input.order", ttl=timedelta(minutes=5)
        ),
    )
    def charge(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"charged": input["order"]}

    @client.task(
        name="sync",
        idempotency=StatusBasedIdempotencyConfig(
            key_expression="input.account", fallback_ttl=timedelta(minutes=5)
        ),
    )
    def sync(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {}

    in_process_worker(client, [charge, sync])
    first = charge.run_no_wait({"order": "o-1"})
    with pytest.raises(IdempotencyCollisionError) as caught:
        charge.run_no_wait({"order": "o-1"})
    assert caught.value.existing_run_id == first.run_id
    with pytest.raises(IdempotencyCollisionError) as bulk:
        charge.run_many_no_wait([{"order": "o-2"}, {"order": "o-1"}, {"order": "o-2"}])
    assert bulk.value.existing_run_ids[0] == first.run_id
    (created,) = bulk.value.created_run_ids
    assert bulk.value.existing_run_ids[1] == created  # the same key twice in one call
    assert first.result() == {"charged": "o-1"}
    assert len(_runs(engine, "charge")) == 2

    # Status-based: refused while the first run is unfinished, taken again once it is.
    done = sync.run_no_wait({"account": "a"})
    done.result()
    again = sync.run_no_wait({"account": "a"})
    assert again.run_id != done.run_id


def test_conditions_wait_skip_and_cancel(
    engine: EngineThread, client: Hewer, in_process_worker: Callable[..., Worker]
) -> None:
    flow = client.workflow("gated")

    @flow.task()
    def score(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"score": input["score"], "at": time.time()}

    @flow.task(parents=[score], wait_for=[SleepCondition(timedelta(seconds=0.5))])
    def cooled(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"at": time.time()}

    @flow.task(parents=[score], skip_if=[ParentCondition(score, "output.score < 50")])
    def promote(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"promoted": True}

    @flow.task(
        parents=[score],
        wait_for=[
            or_(
                UserEventCondition("review:done", "input.approved == true"),
                SleepCondition(timedelta(seconds=30)),
            )
        ],
        cancel_if=[UserEventCondition("review:abort")],
    )
    def publish(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"published": True}

    @flow.task(parents=[promote])
    def report(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"promote_skipped": ctx.was_skipped(promote)}

    in_process_worker(client, [flow])
    tenant = engine.engine.default_tenant_id

    def status(run_id: str, task: str) -> str:
        details = engine.call(engine.engine.core.run_details(tenant, run_id))
        return next(str(t.status) for t in details.tasks if t.readable_id == task)

    low = flow.run_no_wait({"score": 10})
    wait_for(lambda: status(low.run_id, "score") == "completed", timeout=20, what="score")
    client.events.push("review:done", {"approved": False})  # does not match its expression
    assert status(low.run_id, "publish") == "pending"
    client.events.push("review:done", {"approved": True})
    out = low.result()
    assert out["cooled"]["at"] >= out["score"]["at"] + 0.5
    assert out["promote"] == {"skipped": True}
    assert out["report"] == {"promote_skipped": True}
    assert out["publish"] == {"published": True}

    high = flow.run_no_wait({"score": 90})
    wait_for(lambda: status(high.run_id, "score") == "completed", timeout=20, what="score")
    client.events.push("review:abort", {})
    with pytest.raises(TaskRunError):
        high.result()
    assert status(high.run_id, "publish") == "cancelled"
    assert status(high.run_id, "promote") == "completed"
    with pytest.raises(HewerError, match="not one of its parents"):

        @flow.task(skip_if=[ParentCondition(score)])
        def orphan(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
            return {}


def test_event_filters_and_wildcard_keys(
    engine: EngineThread, client: Hewer, in_process_worker: Callable[..., Worker]
) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    @client.task(
        name="big-orders",
        on_events=["order:*"],
        default_filters=[DefaultFilter("input.total > 100", "shop", {"tier": "gold"})],
    )
    def big_orders(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        seen.append((ctx.triggering_event_key or "", ctx.filter_payload))
        return {}

    in_process_worker(client, [big_orders])
    (declared,) = client.filters.list("big-orders")
    assert declared.declarative and declared.scope == "shop"
    client.events.push("order:placed", {"total": 500}, scope="shop")
    client.events.push("order:placed", {"total": 5}, scope="shop")  # fails the expression
    client.events.push("order:placed", {"total": 500})  # no scope: filters decide, none apply
    client.events.push("other:placed", {"total": 500}, scope="shop")  # not its key
    made = client.filters.create("big-orders", "input.total < 10", "shop", {"tier": "tiny"})
    assert client.filters.get(made.id).payload == {"tier": "tiny"}
    client.events.push("order:paid", {"total": 5}, scope="shop")
    client.filters.delete(made.id)
    client.events.push("order:paid", {"total": 6}, scope="shop")
    wait_for(lambda: len(_runs(engine, "big-orders")) >= 2, timeout=20, what="two runs")
    wait_for(lambda: len(seen) == 2, timeout=20, what="both ran")
    assert sorted(seen, key=lambda s: s[0]) == [
        ("order:paid", {"tier": "tiny"}),
        ("order:placed", {"tier": "gold"}),
    ]
    assert len(_runs(engine, "big-orders")) == 2


def test_a_root_task_waits_on_its_conditions_from_the_start(
    engine: EngineThread, client: Hewer, in_process_worker: Callable[..., Worker]
) -> None:
    @client.task(name="patient", wait_for=[SleepCondition(timedelta(seconds=0.5))])
    def patient(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"at": time.time()}

    @client.task(
        name="gatekept",
        wait_for=[UserEventCondition("gate:open")],
        skip_if=[UserEventCondition("gate:skip")],
    )
    def gatekept(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"ran": True}

    in_process_worker(client, [patient, gatekept])
    started = time.time()
    assert patient.run({})["at"] >= started + 0.5
    opened = gatekept.run_no_wait({})
    skipped = gatekept.run_no_wait({})
    tenant = engine.engine.default_tenant_id
    details = engine.call(engine.engine.core.run_details(tenant, opened.run_id))
    assert str(details.tasks[0].status) == "pending"  # a root held back by its condition
    client.events.push("gate:skip", {})  # both wait: the skip condition decides both
    assert opened.result() == {"skipped": True} and skipped.result() == {"skipped": True}
    third = gatekept.run_no_wait({})
    client.events.push("gate:open", {})
    assert third.result() == {"ran": True}


def test_runs_get_and_get_status_read_a_run_and_its_tasks(
    engine: EngineThread, client: Hewer, in_process_worker: Callable[..., Worker]
) -> None:
    from hewer import NotFound

    flow = client.workflow("read-me")

    @flow.task()
    def first(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"a": input["x"] + 1}

    @flow.task(parents=[first], retries=0)
    def second(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        raise ValueError("second says no")

    in_process_worker(client, [flow])
    ref = flow.run_no_wait({"x": 1}, additional_metadata={"k": "v"})
    with pytest.raises(TaskRunError):
        ref.result()
    run = client.runs.get(ref.run_id)
    assert (run.id, run.workflow_name, run.status) == (ref.run_id, "read-me", "FAILED")
    assert run.input == {"x": 1} and run.additional_metadata == {"k": "v"}
    assert run.output == {"first": {"a": 2}}
    assert run.error is not None and "second says no" in run.error
    assert [(t.name, t.status) for t in run.tasks] == [("first", "COMPLETED"), ("second", "FAILED")]
    done = run.tasks[0]
    assert done.attempt == 1 and done.started_at is not None and done.finished_at is not None
    assert run.created_at is not None and run.finished_at is not None
    assert client.runs.get_status(ref.run_id) == "FAILED"
    with pytest.raises(NotFound):
        client.runs.get("00000000-0000-7000-8000-000000000000")
