"""A worker process for ``test_flow_control``'s lost-worker test (``hewer worker start
tests.integration.flow_app:make_worker``).

``declare(hw)`` builds the workflow, so the test process can serve the very same definition
from an in-process worker. With ``HEWER_FLOW_HANG=1`` (the process that gets killed) the task
keeps running until cancelled, holding its concurrency keys.
"""

from __future__ import annotations

import os
import time
from typing import Any

from hewer import Context, Hewer, Worker
from hewer.sdk import ConcurrencyExpression, ConcurrencyLimitStrategy, Workflow

RR = ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN
HANG_LIMIT = 60.0


def declare(hw: Hewer) -> Workflow[Any]:
    """A two-task run holding a workflow-level key of ``input.group`` (for the whole run) and,
    in its first task, a task-level one."""
    wf = hw.workflow(
        "flow-lost-keys",
        concurrency=ConcurrencyExpression("input.group", max_runs=1, limit_strategy=RR),
    )

    @wf.task(concurrency=ConcurrencyExpression("input.group", max_runs=1, limit_strategy=RR))
    def hold_key(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        start = time.time()
        if os.environ.get("HEWER_FLOW_HANG") == "1":
            deadline = time.monotonic() + HANG_LIMIT
            while not ctx.is_cancelled and time.monotonic() < deadline:
                time.sleep(0.02)
        time.sleep(0.05)
        return {"pid": os.getpid(), "start": start, "end": time.time()}

    @wf.task(parents=[hold_key])
    def after(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"pid": os.getpid(), "end": time.time()}

    return wf


def make_worker() -> Worker:
    hw = Hewer()
    return hw.worker(
        os.environ.get("HEWER_FLOW_WORKER_NAME", "flow-victim"),
        slots=4,
        workflows=[declare(hw)],
    )
