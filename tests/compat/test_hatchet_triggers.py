"""Events, scheduled runs, crons, on-failure tasks and child runs with the unmodified
hatchet-sdk as worker and client (``hatchet_trigger_app.py``)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hewer.domain import RunRow, RunStatus
from hewer.testing import EngineThread
from tests.compat._hatchet import hatchet_worker, run_client
from tests.compat.test_hatchet_sdk import pytestmark  # noqa: F401
from tests.helpers import wait_for

APP = Path(__file__).with_name("hatchet_trigger_app.py")
WORKER = "trigger-worker"


@pytest.fixture
def trigger_worker(engine: EngineThread, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with hatchet_worker(engine, tmp_path, APP, WORKER) as proc:
        yield proc


def _runs(engine: EngineThread, workflow: str) -> list[RunRow]:
    runs = engine.call(engine.engine.store.runs_list(engine.engine.default_tenant_id))
    return [r for r in runs if r.workflow_name == workflow]


def _output(engine: EngineThread, run_id: str) -> Any:
    found = engine.call(engine.engine.store.run_get(engine.engine.default_tenant_id, run_id))
    assert found is not None
    (task,) = found[1]
    return json.loads(task.output or "null")


def test_triggers_with_hatchet_sdk(
    engine: EngineThread, trigger_worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    out = run_client(engine, tmp_path, APP)

    # Events: one run per event whose key a workflow listens to, with the payload as its
    # input and the event's id and key on the task; the other key started nothing.
    def event_runs() -> list[RunRow]:
        return [r for r in _runs(engine, "compat-on-order") if r.status is RunStatus.COMPLETED]

    wait_for(lambda: len(event_runs()) == 2, timeout=30, what="both event runs completed")
    by_event = {r.event_id: r for r in event_runs()}
    assert set(by_event) == {out["event_id"], out["bulk_ids"][0]}
    first = _output(engine, by_event[out["event_id"]].id)
    assert first == {
        "item": "anvil",
        "n": 2,
        "event_id": out["event_id"],
        "event_key": "compat:order",
    }
    rope = by_event[out["bulk_ids"][0]]
    assert _output(engine, rope.id)["item"] == "rope"
    assert json.loads(rope.additional_metadata or "{}") == {
        "m": 1,
        "hatchet__event_id": out["bulk_ids"][0],
        "hatchet__event_key": "compat:order",
    }
    events = engine.call(
        engine.engine.core.events_list(engine.engine.default_tenant_id, None, 100, 0)
    )
    assert {out["event_id"], *out["bulk_ids"]} <= {e.id for e in events}

    # The scheduled run fired once, within a second of its time; the deleted one never.
    def scheduled() -> list[RunRow]:
        return [r for r in _runs(engine, "compat-later") if r.triggered_by == "schedule"]

    tenant = engine.engine.default_tenant_id

    def fired_run(schedule_id: str) -> RunRow | None:
        record = engine.call(engine.engine.store.schedule_get(tenant, schedule_id))
        assert record is not None
        return next((r for r in scheduled() if r.id == record.run_id), None)

    wait_for(
        lambda: (
            (r := fired_run(out["schedule_ids"][0])) is not None and r.status is RunStatus.COMPLETED
        ),
        timeout=30,
        what="the scheduled run completed",
    )
    fired = fired_run(out["schedule_ids"][0])
    assert fired is not None
    assert out["scheduled_for"] <= fired.created_at <= out["scheduled_for"] + 1.0
    assert _output(engine, fired.id)["item"] == "clock"
    assert out["scheduled"] == {
        "workflow": "compat-later",
        "input": {"item": "clock", "n": 0},
        "listed": sorted([*out["schedule_ids"], out["moved"]["id"]]),
    }
    # A scheduled run moved to a new time fired then; bulk-deleted ones are gone.
    moved = out["moved"]
    assert abs(moved["reported"] - moved["at"]) < 0.01
    wait_for(lambda: fired_run(moved["id"]) is not None, timeout=30, what="the moved scheduled run")
    moved_run = fired_run(moved["id"])
    assert moved_run is not None
    assert moved["at"] <= moved_run.created_at <= moved["at"] + 1.0
    assert out["bulk_deleted"] == out["bulk_schedule_ids"]
    wait_for(
        lambda: time.time() > fired.created_at + 3.0, timeout=10, what="the deleted one's time"
    )
    assert len(scheduled()) == 2

    # Crons through the feature client: created, listed, fetched, deleted; the declared one
    # is listed as DEFAULT. The declared every-second cron fired once per second.
    cron = out["cron"]
    assert cron["expression"] == "0 0 1 1 *"
    assert cron["input"] == {"item": "new-year"}
    assert cron["method"] == "API"
    assert cron["listed"] == [cron["id"]]
    assert cron["declared"] == [["* * * * * *", "DEFAULT"]]
    assert out["cron_after_delete"] == []
    wait_for(lambda: len(_runs(engine, "compat-ticker")) >= 4, timeout=30, what="cron ticks")
    ticks = sorted(r.created_at for r in _runs(engine, "compat-ticker"))
    assert len({int(t) for t in ticks}) == len(ticks), "two runs for one tick"
    assert all(r.triggered_by == "cron" for r in _runs(engine, "compat-ticker"))

    # On-failure: the run failed; its handler ran once and saw the failed task's error.
    assert "boom went the task" in out["failing_error"]
    (failed_run,) = _runs(engine, "compat-failing")
    assert failed_run.status is RunStatus.FAILED
    found = engine.call(engine.engine.store.run_get(engine.engine.default_tenant_id, failed_run.id))
    assert found is not None
    tasks = {t.readable_id: t for t in found[1]}
    assert set(tasks) == {"fine", "boom", "handle-on-failure"}
    assert str(tasks["handle-on-failure"].status) == "completed"
    errors = json.loads(tasks["handle-on-failure"].output or "{}")["errors"]
    assert list(errors) == ["boom"]
    assert "boom went the task" in errors["boom"]

    # Child runs: the same child key gave the same run; each child saw its parent and
    # index, and the keyed one its key.
    parent = out["parent"]
    assert parent["ids"][0] == parent["ids"][1] != parent["ids"][2]
    keyed, plain = parent["outputs"]
    assert keyed == {"parent": parent["run_id"], "index": 0, "key": "only-one", "item": "a"}
    assert plain == {"parent": parent["run_id"], "index": 2, "key": "", "item": "c"}
    assert len(_runs(engine, "compat-child")) == 2

    # Idempotency: the second run with a key was refused, naming the first; in bulk the
    # fresh key went through and the used one was refused.
    idem = out["idempotency"]
    assert idem["second_existing"] == idem["first"]
    assert idem["bulk_existing"] == [idem["first"]]
    (fresh,) = idem["bulk_created"]
    assert {r.id for r in _runs(engine, "compat-once")} == {idem["first"], fresh}

    # Event filters: a workflow with filters runs only through a filter of the event's
    # scope whose expression holds, once per such filter, and the task sees its payload.
    flt = out["filters"]
    wait_for(
        lambda: all(r.status is RunStatus.COMPLETED for r in _runs(engine, "compat-filtered")),
        timeout=30,
        what="the filtered runs completed",
    )
    by_event = {r.event_id: r for r in _runs(engine, "compat-filtered")}
    assert set(by_event) == {flt["let_through"], flt["api_through"]}
    assert _output(engine, by_event[flt["let_through"]].id)["filter"] == {"by": "dflt"}
    assert _output(engine, by_event[flt["api_through"]].id)["filter"] == {"by": "api"}
    assert flt["listed"] == [flt["api_filter"]]
    (wild_run,) = _runs(engine, "compat-wild")
    assert wild_run.event_id == flt["wild"]
    wait_for(
        lambda: _runs(engine, "compat-wild")[0].status is RunStatus.COMPLETED,
        timeout=30,
        what="the wildcard run",
    )
    assert _output(engine, wild_run.id) == {"key": "compat:wild:x"}
