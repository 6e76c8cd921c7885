"""The benchmark's tasks written with the unmodified hatchet-sdk, run as a worker process.

    python -m bench.harness.hatchet_worker     # HATCHET_CLIENT_TOKEN etc. from the driver

Same names, input and output as ``bench/app.py``'s ``anoop`` and ``slow``, so the Hewer
client triggers them the same way. Never imported together with ``hewer`` (the two
packages' protobuf names clash).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import timedelta

from hatchet_sdk import Context, Hatchet
from pydantic import BaseModel

from bench.harness.marks import mark_start

# hatchet-sdk logs three INFO lines per task; the Hewer worker runs at WARNING too. Module
# level, so the action-runner process that hatchet-sdk spawns (and re-imports us) gets it.
logging.getLogger("hatchet").setLevel(logging.WARNING)
hatchet = Hatchet()
QUEUED_FOR = timedelta(minutes=30)


class Tick(BaseModel):
    n: int


@hatchet.task(name="bench-anoop", input_validator=Tick, schedule_timeout=QUEUED_FOR)
async def anoop(input: Tick, ctx: Context) -> dict[str, float]:
    return {"started": time.time()}


@hatchet.task(name="bench-slow", input_validator=Tick, schedule_timeout=QUEUED_FOR)
async def slow(input: Tick, ctx: Context) -> dict[str, float]:
    started = time.time()
    mark_start(started)
    await asyncio.sleep(5)
    return {"started": started}


def main() -> None:
    slots = int(os.environ.get("BENCH_SLOTS", "8"))
    hatchet.worker(f"bench-hatchet-{os.getpid()}", slots=slots, workflows=[anoop, slow]).start()


if __name__ == "__main__":
    main()
