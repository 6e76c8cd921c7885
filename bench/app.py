"""The no-op task the benchmarks run; workers start it as ``bench.app:make_worker``.

``noop`` (sync, thread pool) is what ``bench/throughput.py`` runs. ``bench/compare.py`` runs
``anoop`` (async, on the worker's event loop, like the peers' no-op) and ``slow`` (a 5 s
task that appends ``<time.time()> <pid>`` to the file named by ``BENCH_MARKS`` when it
starts, so a re-run after a killed worker can be seen).
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta

from pydantic import BaseModel

from bench.harness.marks import mark_start
from hewer import Context, Hewer

hw = Hewer()


class Tick(BaseModel):
    n: int


@hw.task(name="bench-noop")
def noop(input: Tick, ctx: Context) -> dict[str, float]:
    return {"started": time.time()}


# Generous schedule timeouts: compare.py queues its whole W1 backlog before a worker starts.
QUEUED_FOR = timedelta(minutes=30)


@hw.task(name="bench-anoop", schedule_timeout=QUEUED_FOR)
async def anoop(input: Tick, ctx: Context) -> dict[str, float]:
    return {"started": time.time()}


@hw.task(name="bench-slow", schedule_timeout=QUEUED_FOR)
async def slow(input: Tick, ctx: Context) -> dict[str, float]:
    started = time.time()
    mark_start(started)
    await asyncio.sleep(5)
    return {"started": started}


def make_worker():  # type: ignore[no-untyped-def]
    return hw.worker(
        f"bench-{os.getpid()}",
        slots=int(os.environ.get("BENCH_SLOTS", "10")),
        workflows=[noop, anoop, slow],
    )
