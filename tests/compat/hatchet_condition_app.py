"""hatchet-sdk worker and client for task conditions: ``wait_for`` (a sleep, a user event,
or either), ``skip_if`` on a parent's output, ``cancel_if`` on a user event.

``python hatchet_condition_app.py worker`` starts a worker; ``python
hatchet_condition_app.py client`` runs the checks and prints one JSON line. Never imported
by the test process (hatchet-sdk's protobuf names would clash with ours).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from typing import Any

from hatchet_sdk import (
    Context,
    EmptyModel,
    Hatchet,
    ParentCondition,
    SleepCondition,
    UserEventCondition,
    or_,
)

hatchet = Hatchet()
flow = hatchet.workflow(name="compat-conditions")


@flow.task()
def start(input: EmptyModel, ctx: Context) -> dict[str, Any]:
    return {"n": 7, "at": time.time()}


@flow.task(parents=[start], wait_for=[SleepCondition(timedelta(seconds=1))])
def after_sleep(input: EmptyModel, ctx: Context) -> dict[str, Any]:
    return {"at": time.time()}


@flow.task(
    parents=[start],
    skip_if=[ParentCondition(parent=start, expression="output.n > 5")],
)
def skipped(input: EmptyModel, ctx: Context) -> dict[str, Any]:
    return {"ran": True}


@flow.task(
    parents=[start],
    skip_if=[ParentCondition(parent=start, expression="output.n > 100")],
)
def not_skipped(input: EmptyModel, ctx: Context) -> dict[str, Any]:
    return {"ran": True}


@flow.task(
    parents=[start],
    wait_for=[
        or_(
            SleepCondition(timedelta(seconds=30)),
            UserEventCondition(event_key="compat:go", expression="input.ok == true"),
        )
    ],
)
def on_go(input: EmptyModel, ctx: Context) -> dict[str, Any]:
    return {"at": time.time()}


@flow.task(parents=[skipped, not_skipped])
def join(input: EmptyModel, ctx: Context) -> dict[str, Any]:
    return {"skipped_was_skipped": ctx.was_skipped(skipped), "other": ctx.was_skipped(not_skipped)}


doomed = hatchet.workflow(name="compat-cancel-if")


@doomed.task()
def first(input: EmptyModel, ctx: Context) -> dict[str, Any]:
    return {}


@doomed.task(
    parents=[first],
    wait_for=[SleepCondition(timedelta(seconds=30))],
    cancel_if=[UserEventCondition(event_key="compat:stop")],
)
def waits(input: EmptyModel, ctx: Context) -> dict[str, Any]:
    return {"ran": True}


def worker() -> None:
    hatchet.worker("condition-worker", slots=8, workflows=[flow, doomed]).start()


def _wait_for_status(run_id: str, task: str, wanted: str, timeout: float = 30.0) -> None:
    """Poll the run's details until ``task`` has the wanted status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        details = hatchet.runs.get_details(run_id)
        status = details.task_runs.get(task)
        if status is not None and status.status.name == wanted:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{task} of {run_id} never became {wanted}")


def client() -> None:
    out: dict[str, Any] = {}
    ref = flow.run_no_wait()
    out["run_id"] = ref.workflow_run_id
    # on_go waits: a non-matching event does not release it, a matching one does.
    _wait_for_status(ref.workflow_run_id, "start", "COMPLETED")
    # A push is answered after its transaction, which judged the waiting task again.
    hatchet.event.push("compat:go", {"ok": False})
    still = hatchet.runs.get_details(ref.workflow_run_id).task_runs["on_go"]
    out["on_go_after_wrong_event"] = still.status.name
    out["pushed_go_at"] = time.time()
    hatchet.event.push("compat:go", {"ok": True})
    out["result"] = ref.result()
    cancel_ref = doomed.run_no_wait()
    _wait_for_status(cancel_ref.workflow_run_id, "first", "COMPLETED")
    hatchet.event.push("compat:stop", {})
    out["cancel_run_id"] = cancel_ref.workflow_run_id
    try:
        cancel_ref.result()
        out["cancel"] = "completed?"
    except Exception as exc:
        out["cancel_error"] = str(exc)[:500]
    print(json.dumps(out))


if __name__ == "__main__":
    {"worker": worker, "client": client}[sys.argv[1]]()
