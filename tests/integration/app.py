"""Tasks the integration tests run in real worker processes (``hewer worker start``).

Each execution of ``noop`` appends one line to ``$HEWER_TEST_LOG_DIR/<pid>.log`` with the
task's id and its start and end times, so a test can prove "exactly once" and "never more
than its slots at once" from the outside.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel

from hewer import Context, Hewer

hw = Hewer()


class Item(BaseModel):
    n: int


class Sleep(BaseModel):
    seconds: float


def _record(ctx: Context, started: float) -> None:
    log_dir = os.environ.get("HEWER_TEST_LOG_DIR")
    if log_dir:
        line = f"{ctx.task_run_external_id} {started:.6f} {time.time():.6f}\n"
        with (Path(log_dir) / f"{os.getpid()}.log").open("a") as f:
            f.write(line)


@hw.task(name="it-noop")
def noop(input: Item, ctx: Context) -> dict[str, int]:
    started = time.time()
    time.sleep(0.002)
    _record(ctx, started)
    return {"n": input.n, "pid": os.getpid()}


@hw.task(name="it-slow")
def slow(input: Sleep, ctx: Context) -> dict[str, int]:
    marker = os.environ.get("HEWER_TEST_LOG_DIR")
    if marker:
        (Path(marker) / f"started-{os.getpid()}-{ctx.task_run_external_id}").touch()
    ctx.cancelled.wait(input.seconds)  # a well-behaved long task: stops when cancelled
    return {"pid": os.getpid(), "retry_count": ctx.retry_count}


@hw.task(name="it-block-loop")
async def block_loop(input: Sleep, ctx: Context) -> dict[str, int]:
    # Deliberately blocks the worker's event loop; heartbeats must keep flowing.
    time.sleep(input.seconds)
    return {"pid": os.getpid(), "retry_count": ctx.retry_count}


def make_worker():  # type: ignore[no-untyped-def]
    return hw.worker(
        os.environ.get("HEWER_TEST_WORKER_NAME", "it-worker"),
        slots=int(os.environ.get("HEWER_TEST_SLOTS", "5")),
        workflows=[noop, slow, block_loop],
    )
