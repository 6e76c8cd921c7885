"""hatchet-sdk worker and client for what starts runs besides a direct trigger: events,
scheduled runs, crons, on-failure tasks and child runs.

``python hatchet_trigger_app.py worker`` starts a worker; ``python hatchet_trigger_app.py
client`` pushes, schedules and triggers, then prints one JSON line of what it saw. Never
imported by the test process (hatchet-sdk's protobuf names would clash with ours).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from hatchet_sdk import (
    BulkPushEventWithMetadata,
    BulkTriggerIdempotencyCollisionError,
    Context,
    DefaultFilter,
    EmptyModel,
    Hatchet,
    IdempotencyCollisionError,
    Priority,
    PushEventOptions,
    TTLBasedIdempotencyConfig,
)
from pydantic import BaseModel

hatchet = Hatchet()


class Order(BaseModel):
    item: str = ""
    n: int = 0


@hatchet.task(name="compat-on-order", on_events=["compat:order"], input_validator=Order)
def on_order(input: Order, ctx: Context) -> dict[str, Any]:
    return {
        "item": input.item,
        "n": input.n,
        "event_id": ctx.triggering_event_id,
        "event_key": ctx.triggering_event_key,
    }


@hatchet.task(name="compat-ticker", on_crons=["* * * * * *"])
def ticker(input: EmptyModel, ctx: Context) -> dict[str, Any]:
    return {"ticked": time.time()}


@hatchet.task(name="compat-later", input_validator=Order)
def later(input: Order, ctx: Context) -> dict[str, Any]:
    return {"item": input.item, "ran_at": time.time()}


failing = hatchet.workflow(name="compat-failing")


@failing.task()
def fine(input: EmptyModel, ctx: Context) -> dict[str, Any]:
    return {"fine": True}


@failing.task(parents=[fine])
def boom(input: EmptyModel, ctx: Context) -> dict[str, Any]:
    raise ValueError("boom went the task")


@failing.on_failure_task()
def handle(input: EmptyModel, ctx: Context) -> dict[str, Any]:
    return {"errors": ctx.task_run_errors}


@hatchet.task(name="compat-child", input_validator=Order)
def child(input: Order, ctx: Context) -> dict[str, Any]:
    return {
        "parent": ctx.parent_workflow_run_id,
        "index": ctx.child_index,
        "key": ctx.child_key,
        "item": input.item,
    }


@hatchet.task(name="compat-parent", input_validator=Order)
async def parent(input: Order, ctx: Context) -> dict[str, Any]:
    first = await child.aio_run_no_wait(Order(item="a"), child_key="only-one")
    again = await child.aio_run_no_wait(Order(item="b"), child_key="only-one")
    other = await child.aio_run_no_wait(Order(item="c"))
    return {
        "run_id": ctx.workflow_run_id,
        "ids": [first.workflow_run_id, again.workflow_run_id, other.workflow_run_id],
        "outputs": [await first.aio_result(), await other.aio_result()],
    }


@hatchet.task(
    name="compat-filtered",
    on_events=["compat:filtered"],
    input_validator=Order,
    default_filters=[DefaultFilter(expression="input.n > 1", scope="s1", payload={"by": "dflt"})],
)
def filtered(input: Order, ctx: Context) -> dict[str, Any]:
    return {"n": input.n, "filter": dict(ctx.filter_payload), "meta": ctx.additional_metadata}


@hatchet.task(name="compat-wild", on_events=["compat:wild:*"])
def wild(input: EmptyModel, ctx: Context) -> dict[str, Any]:
    return {"key": ctx.triggering_event_key}


@hatchet.task(
    name="compat-once",
    input_validator=Order,
    idempotency=TTLBasedIdempotencyConfig(key_expression="input.item", ttl=timedelta(minutes=5)),
)
def once(input: Order, ctx: Context) -> dict[str, Any]:
    return {"item": input.item}


def worker() -> None:
    hatchet.worker(
        "trigger-worker",
        slots=8,
        workflows=[on_order, ticker, later, failing, child, parent, once, filtered, wild],
    ).start()


def filters() -> dict[str, Any]:
    out: dict[str, Any] = {}
    key = "compat:filtered"

    def push(n: int, scope: str | None) -> str:
        return hatchet.event.push(key, {"n": n}, options=PushEventOptions(scope=scope)).event_id

    out["let_through"] = push(5, "s1")
    out["refused"] = [push(0, "s1"), push(5, None), push(5, "other")]
    made = filtered.create_filter("input.n == 0", "s2", {"by": "api"})
    out["api_filter"] = made.metadata.id
    out["api_through"] = push(0, "s2")
    listed = hatchet.filters.list(scopes=["s2"])
    out["listed"] = [f.metadata.id for f in listed.rows or []]
    hatchet.filters.delete(made.metadata.id)
    out["after_delete"] = push(0, "s2")
    out["wild"] = hatchet.event.push("compat:wild:x", {}).event_id
    return out


def idempotency() -> dict[str, Any]:
    out: dict[str, Any] = {}
    first = once.run_no_wait(Order(item="unique"))
    out["first"] = first.workflow_run_id
    try:
        once.run_no_wait(Order(item="unique"))
        out["second"] = "accepted?"
    except IdempotencyCollisionError as exc:
        out["second_existing"] = exc.existing_run_external_id
    try:
        once.run_many_no_wait(
            [
                once.create_bulk_run_item(Order(item="fresh")),
                once.create_bulk_run_item(Order(item="unique")),
            ]
        )
        out["bulk"] = "accepted?"
    except BulkTriggerIdempotencyCollisionError as exc:
        out["bulk_created"] = exc.successful_workflow_run_external_ids
        out["bulk_existing"] = [c.existing_run_external_id for c in exc.collisions]
    return out


def client() -> None:
    out: dict[str, Any] = {}
    event = hatchet.event.push("compat:order", {"item": "anvil", "n": 2})
    out["event_id"] = event.event_id
    bulk = hatchet.event.bulk_push(
        [
            BulkPushEventWithMetadata(
                key="compat:order", payload={"item": "rope", "n": 1}, additional_metadata={"m": 1}
            ),
            BulkPushEventWithMetadata(key="compat:nothing", payload={}),
        ]
    )
    out["bulk_ids"] = [e.event_id for e in bulk]
    at = datetime.now(UTC) + timedelta(seconds=2)
    out["scheduled_for"] = at.timestamp()
    version = later.schedule(at, Order(item="clock"))
    out["schedule_ids"] = [s.id for s in version.scheduled_workflows]
    cancelled_at = datetime.now(UTC) + timedelta(seconds=3)
    doomed = later.schedule(cancelled_at, Order(item="never"))
    doomed_id = doomed.scheduled_workflows[0].id
    hatchet.scheduled.delete(doomed_id)
    out["deleted_schedule"] = doomed_id
    cron = hatchet.cron.create(
        "compat-later",
        "yearly",
        "0 0 1 1 *",
        {"item": "new-year"},
        {"source": "compat"},
        Priority.MEDIUM,
    )
    listed = hatchet.cron.list(workflow_name="compat-later")
    got = hatchet.cron.get(cron.metadata.id)
    out["cron"] = {
        "id": cron.metadata.id,
        "expression": got.cron,
        "input": got.input,
        "method": got.method,
        "listed": [c.metadata.id for c in listed.rows or []],
        "declared": [
            (c.cron, c.method)
            for c in (hatchet.cron.list(workflow_name="compat-ticker").rows or [])
        ],
    }
    hatchet.cron.delete(cron.metadata.id)
    out["cron_after_delete"] = [
        c.metadata.id for c in hatchet.cron.list(workflow_name="compat-later").rows or []
    ]
    far = datetime.now(UTC) + timedelta(days=1)
    movable = later.schedule(far, Order(item="moved")).scheduled_workflows[0].id
    moved_to = datetime.now(UTC) + timedelta(seconds=2)
    moved = hatchet.scheduled.update(movable, moved_to)
    out["moved"] = {
        "id": movable,
        "at": moved_to.timestamp(),
        "reported": moved.trigger_at.timestamp(),
    }
    bulk_ids = [later.schedule(far, Order(item="bulk")).scheduled_workflows[0].id for _ in range(2)]
    dropped = hatchet.scheduled.bulk_delete(scheduled_ids=bulk_ids)
    out["bulk_deleted"] = sorted(dropped.deleted_ids)
    out["bulk_schedule_ids"] = sorted(bulk_ids)
    pending = hatchet.scheduled.get(out["schedule_ids"][0])
    out["scheduled"] = {
        "workflow": pending.workflow_name,
        "input": pending.input,
        "listed": sorted(s.metadata.id for s in hatchet.scheduled.list().rows or []),
    }
    try:
        failing.run()
        out["failing"] = "completed?"
    except Exception as exc:  # the run failed, as it should
        out["failing_error"] = str(exc)[:2000]
    out["parent"] = parent.run(Order(item="p"))
    out["idempotency"] = idempotency()
    out["filters"] = filters()
    print(json.dumps(out))


if __name__ == "__main__":
    {"worker": worker, "client": client}[sys.argv[1]]()
