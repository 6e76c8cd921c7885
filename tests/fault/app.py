"""Tasks the fault tests run in real worker processes.

Started with ``python -m hewer worker start tests.fault.app:make_worker``. Every execution
of a task body appends JSON lines to ``$HEWER_FAULT_LOG_DIR/<pid>.jsonl``: a ``start``
record when the body begins and an ``end`` record (with its outcome) when it returns. Each
line is flushed to the kernel at once, so a SIGKILLed process still leaves its ``start``
behind. The history checker (``tests/fault/history.py``) reads these files.

Worker settings come from the environment: ``HEWER_FAULT_WORKER_NAME`` and
``HEWER_FAULT_SLOTS``.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from datetime import timedelta
from typing import IO, Any

from pydantic import BaseModel

from hewer import Context, Hewer

hw = Hewer()

# A stubborn task overruns this execution timeout while ignoring its cancellation.
STUBBORN_TIMEOUT = timedelta(milliseconds=300)

_lock = threading.Lock()
_file: IO[str] | None = None


class Work(BaseModel):
    seconds: float = 0.0


def _emit(record: dict[str, Any]) -> None:
    global _file
    log_dir = os.environ.get("HEWER_FAULT_LOG_DIR")
    if not log_dir:
        return
    line = json.dumps(record, separators=(",", ":")) + "\n"
    with _lock:
        if _file is None:
            _file = open(  # noqa: SIM115 - kept open for the life of the process
                os.path.join(log_dir, f"{os.getpid()}.jsonl"), "a", encoding="utf-8"
            )
        _file.write(line)
        _file.flush()


def _begin(ctx: Context, kind: str) -> float:
    started = time.time()
    _emit(
        {
            "event": "start",
            "task": ctx.task_run_external_id,
            "attempt": ctx.retry_count,
            "pid": os.getpid(),
            "worker": ctx.worker_id,
            "kind": kind,
            "t": started,
        }
    )
    return started


def _end(ctx: Context, started: float, outcome: str) -> dict[str, Any]:
    ended = time.time()
    _emit(
        {
            "event": "end",
            "task": ctx.task_run_external_id,
            "attempt": ctx.retry_count,
            "pid": os.getpid(),
            "worker": ctx.worker_id,
            "start": started,
            "t": ended,
            "outcome": outcome,
        }
    )
    return {"pid": os.getpid(), "attempt": ctx.retry_count, "worker": ctx.worker_id}


@hw.task(name="fault-short")
def short(input: Work, ctx: Context) -> dict[str, Any]:
    """Sleeps in its thread; ignores cancellation."""
    started = _begin(ctx, "short")
    time.sleep(input.seconds)
    return _end(ctx, started, "completed")


@hw.task(name="fault-async")
async def short_async(input: Work, ctx: Context) -> dict[str, Any]:
    """Sleeps on the event loop (so it runs beside the sync thread pool)."""
    started = _begin(ctx, "async")
    try:
        await asyncio.sleep(input.seconds)
    except asyncio.CancelledError:
        _end(ctx, started, "cancelled")
        raise
    return _end(ctx, started, "completed")


@hw.task(name="fault-cooperative")
def cooperative(input: Work, ctx: Context) -> dict[str, Any]:
    """Sleeps in small steps and returns early once cancelled."""
    started = _begin(ctx, "cooperative")
    deadline = started + input.seconds
    while time.time() < deadline:
        if ctx.cancelled.wait(0.01):
            return _end(ctx, started, "cancelled")
    return _end(ctx, started, "completed")


@hw.task(name="fault-stubborn", execution_timeout=STUBBORN_TIMEOUT)
def stubborn(input: Work, ctx: Context) -> dict[str, Any]:
    """Overruns its execution timeout and ignores the cancellation that follows."""
    started = _begin(ctx, "stubborn")
    time.sleep(input.seconds)
    return _end(ctx, started, "completed")


@hw.task(name="fault-block-loop")
async def block_loop(input: Work, ctx: Context) -> dict[str, Any]:
    """Blocks the worker's event loop (a blocking call in async code)."""
    started = _begin(ctx, "block-loop")
    time.sleep(input.seconds)
    return _end(ctx, started, "completed")


@hw.task(name="fault-block-thread")
def block_thread(input: Work, ctx: Context) -> dict[str, Any]:
    """Busy-waits in its thread, holding the GIL as much as a pure-Python loop does."""
    started = _begin(ctx, "block-thread")
    deadline = time.monotonic() + input.seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return _end(ctx, started, "completed")


@hw.task(name="fault-poison")
def poison(input: Work, ctx: Context) -> dict[str, Any]:
    """Kills the worker process running it."""
    _begin(ctx, "poison")
    time.sleep(input.seconds)
    os._exit(1)


WORKFLOWS = [short, short_async, cooperative, stubborn, block_loop, block_thread, poison]


def make_worker():  # type: ignore[no-untyped-def]
    return hw.worker(
        os.environ.get("HEWER_FAULT_WORKER_NAME", "fault-worker"),
        slots=int(os.environ.get("HEWER_FAULT_SLOTS", "5")),
        workflows=WORKFLOWS,
    )
