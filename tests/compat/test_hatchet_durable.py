"""Durable tasks with the unmodified hatchet-sdk as worker and client
(``hatchet_durable_app.py``): durable sleeps, waits for user events (one looking back for
events pushed before it), memoised values, a child run awaited from a durable task, an
eviction while waiting and its resume, and a worker killed during a durable sleep."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from hewer.domain import DurableKind, TaskStatus
from hewer.testing import EngineThread
from tests.compat._hatchet import hatchet_worker, run_client
from tests.compat.test_hatchet_sdk import pytestmark  # noqa: F401
from tests.helpers import wait_for

APP = Path(__file__).with_name("hatchet_durable_app.py")


def _trace(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "durable-trace.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_durable_tasks_with_hatchet_sdk(engine: EngineThread, tmp_path: Path) -> None:
    tenant = engine.engine.default_tenant_id
    store = engine.engine.store
    with hatchet_worker(engine, tmp_path, APP, "durable-worker"):
        ids = run_client(engine, tmp_path, APP, "client-start")

        # The evicted task's worker gave it up after 1 s of waiting: its slot is free and
        # it waits, in the engine, for its event.
        def evicted() -> bool:
            log = engine.call(store.durable_get(tenant, ids["evicted"]))
            return log is not None and log.evicted

        wait_for(evicted, timeout=30, what="the waiting durable task evicted")
        (task,) = [t for t in engine.call(store.tasks_list(tenant)) if t.id == ids["evicted"]]
        assert task.status is TaskStatus.PENDING and task.worker_id is None
        run_client(engine, tmp_path, APP, "client-push", "compat:durable-resume", '{"back": 1}')
        out = run_client(engine, tmp_path, APP, "client-results", json.dumps(ids))

    flow = out["flow"]
    # The durable sleep held the task for its second; aio_now is memoised, so began and
    # woke are the times the body first reached them.
    assert flow["slept"] == 1.0
    assert flow["woke"] - flow["began"] >= 1.0
    # The wait looked back for the event pushed before it; the non-matching one was not it.
    assert flow["event"] == {"ok": True, "n": 5}
    assert flow["child"] == {"doubled": 42}
    assert flow["invocation"] == 1
    # The evicted task resumed as its second invocation and got the event.
    assert out["evicted"] == {"event": {"back": 1}, "invocation": 2}
    runs = [t for t in _trace(tmp_path) if t["task"] == "evicted"]
    assert [t["invocation"] for t in runs] == [1, 2]
    assert out["kill"]["invocation"] == 1
    log = engine.call(store.durable_get(tenant, ids["flow"]))
    assert log is not None
    kinds = [log.entries[n].kind for n in sorted(log.entries)]
    # now, sleep, now, now (the lookback's start), event, child
    assert kinds == [
        DurableKind.MEMO,
        DurableKind.WAIT,
        DurableKind.MEMO,
        DurableKind.MEMO,
        DurableKind.WAIT,
        DurableKind.RUN,
    ]
    assert all(e.done for e in log.entries.values())


def test_worker_killed_during_a_durable_sleep(engine: EngineThread, tmp_path: Path) -> None:
    """The task resumes on another worker without sleeping again."""
    store = engine.engine.store
    tenant = engine.engine.default_tenant_id
    with hatchet_worker(engine, tmp_path, APP, "durable-a", "durable-a") as first:
        ids = run_client(engine, tmp_path, APP, "client-start")

        def sleeping() -> bool:
            log = engine.call(store.durable_get(tenant, ids["kill"]))
            return log is not None and any(e.kind is DurableKind.WAIT for e in log.entries.values())

        wait_for(sleeping, timeout=30, what="the durable sleep registered")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    with hatchet_worker(engine, tmp_path, APP, "durable-b", "durable-b"):
        out = run_client(engine, tmp_path, APP, "client-results", json.dumps({"k": ids["kill"]}))
    trace = [t for t in _trace(tmp_path) if t["task"].startswith("kill")]
    started = [t for t in trace if t["task"] == "kill"]
    woke = [t for t in trace if t["task"] == "kill-woke"]
    assert [t["invocation"] for t in started] == [1, 2]
    assert len(woke) == 1 and woke[0]["invocation"] == 2
    assert started[0]["pid"] != started[1]["pid"] == woke[0]["pid"] == out["k"]["pid"]
    # The second invocation replayed the sleep, which had run out meanwhile (the first
    # worker was declared lost only after it): it did not sleep its 4 s again.
    assert woke[0]["at"] - started[1]["at"] < 2.0
    assert woke[0]["at"] - started[0]["at"] >= 4.0
