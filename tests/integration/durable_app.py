"""The durable task the integration tests run in real worker processes (``hewer worker
start tests.integration.durable_app:make_worker``): it records what its body did in
``$HEWER_TEST_LOG_DIR/durable-trace.jsonl``, one JSON line per step."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

from hewer import DurableContext, Hewer

hw = Hewer()


class Sleep(BaseModel):
    seconds: float


def _trace(event: str, ctx: DurableContext) -> None:
    log_dir = os.environ.get("HEWER_TEST_LOG_DIR")
    if log_dir:
        record = {"event": event, "invocation": ctx.invocation_count, "at": time.time()}
        with (Path(log_dir) / "durable-trace.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")


@hw.durable_task(name="it-durable-sleeper")
async def durable_sleeper(input: Sleep, ctx: DurableContext) -> dict[str, object]:
    async def compute() -> str:
        _trace("memo", ctx)
        return "computed-once"

    memo = await ctx.aio_memo(compute)
    _trace("sleeping", ctx)
    await ctx.aio_sleep_for(timedelta(seconds=input.seconds))
    _trace("woke", ctx)
    return {"memo": memo, "invocation": ctx.invocation_count, "pid": os.getpid()}


def make_worker():  # type: ignore[no-untyped-def]
    return hw.worker(
        os.environ.get("HEWER_TEST_WORKER_NAME", "it-durable-worker"),
        slots=int(os.environ.get("HEWER_TEST_SLOTS", "5")),
        workflows=[durable_sleeper],
    )
