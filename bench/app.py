"""The no-op task the benchmarks run; workers start it as ``bench.app:make_worker``."""

from __future__ import annotations

import os
import time

from pydantic import BaseModel

from hewer import Context, Hewer

hw = Hewer()


class Tick(BaseModel):
    n: int


@hw.task(name="bench-noop")
def noop(input: Tick, ctx: Context) -> dict[str, float]:
    return {"started": time.time()}


def make_worker():  # type: ignore[no-untyped-def]
    return hw.worker(
        f"bench-{os.getpid()}", slots=int(os.environ.get("BENCH_SLOTS", "10")), workflows=[noop]
    )
