"""hatchet-sdk worker and client for concurrency limits: GROUP_ROUND_ROBIN and
CANCEL_IN_PROGRESS.

``python hatchet_flow_app.py worker NAME SLOTS`` starts a worker; ``python
hatchet_flow_app.py client`` runs the checks and prints one JSON line. Task bodies leave
marker files in the working directory (``started-TAG``, ``cancelled-TAG``) so the client and
the test can see them. Never imported by the test process (hatchet-sdk's protobuf names
would clash with ours).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from hatchet_sdk import (
    ConcurrencyExpression,
    ConcurrencyLimitStrategy,
    Context,
    Hatchet,
)
from pydantic import BaseModel

hatchet = Hatchet()
HOLD_LIMIT = 20.0


class Grouped(BaseModel):
    group: str
    tag: str = ""
    hold: bool = False


@hatchet.task(
    name="compat-flow-rr",
    input_validator=Grouped,
    concurrency=ConcurrencyExpression(
        expression="input.group",
        max_runs=2,
        limit_strategy=ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN,
    ),
)
def round_robin(input: Grouped, ctx: Context) -> dict[str, object]:
    start = time.time()
    time.sleep(0.3)
    return {"group": input.group, "start": start, "end": time.time(), "pid": os.getpid()}


@hatchet.task(
    name="compat-flow-cip",
    input_validator=Grouped,
    concurrency=ConcurrencyExpression(
        expression="input.group",
        max_runs=1,
        limit_strategy=ConcurrencyLimitStrategy.CANCEL_IN_PROGRESS,
    ),
)
def cancel_in_progress(input: Grouped, ctx: Context) -> dict[str, object]:
    Path(f"started-{input.tag}").write_text(str(time.time()))
    if input.hold:
        deadline = time.monotonic() + HOLD_LIMIT
        while not ctx.is_cancelled and time.monotonic() < deadline:
            time.sleep(0.02)
        Path(f"cancelled-{input.tag}").write_text(json.dumps(ctx.is_cancelled))
    return {"tag": input.tag}


def worker(name: str, slots: int) -> None:
    hatchet.worker(name, slots=slots, workflows=[round_robin, cancel_in_progress]).start()


def _wait_for_file(name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not Path(name).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} never appeared")
        time.sleep(0.02)


def client() -> None:
    out: dict[str, object] = {}
    groups = ["a"] * 6 + ["b"] * 3 + ["c"] * 3
    out["round_robin"] = round_robin.run_many(
        [round_robin.create_bulk_run_item(input=Grouped(group=g)) for g in groups]
    )

    oldest = cancel_in_progress.run_no_wait(Grouped(group="x", tag="oldest", hold=True))
    _wait_for_file("started-oldest")
    other = cancel_in_progress.run_no_wait(Grouped(group="y", tag="other"))
    newest = cancel_in_progress.run_no_wait(Grouped(group="x", tag="newest"))
    out["newest"] = newest.result()
    out["other"] = other.result()
    try:
        out["oldest"] = oldest.result()
    except Exception as exc:  # the SDK raises its own exception types
        out["oldest_error"] = f"{type(exc).__name__}: {exc}"
    out["run_ids"] = {"oldest": oldest.workflow_run_id, "newest": newest.workflow_run_id}
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(sys.argv[2], int(sys.argv[3]))
    else:
        client()
