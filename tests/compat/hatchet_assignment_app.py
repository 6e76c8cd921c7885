"""hatchet-sdk workers and client for assignment features: affinity, sticky, slot release.

``python hatchet_assignment_app.py worker NAME MODEL`` starts a worker labelled
``model=MODEL``; ``python hatchet_assignment_app.py client`` runs the checks and prints JSON.
Never imported by the test process (hatchet-sdk's protobuf names would clash with ours).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from hatchet_sdk import (
    Context,
    DesiredWorkerLabel,
    EmptyModel,
    Hatchet,
    StickyStrategy,
)

hatchet = Hatchet()


def _me(ctx: Context) -> dict[str, int]:
    # hatchet-sdk runs task bodies in the worker's main process: its pid names the worker.
    return {"worker": os.getpid()}


@hatchet.task(
    name="compat-affinity",
    desired_worker_labels={"model": DesiredWorkerLabel(value="fancy", required=True)},
)
def affinity(input: EmptyModel, ctx: Context) -> dict[str, int]:
    return _me(ctx)


sticky = hatchet.workflow(name="compat-sticky", sticky=StickyStrategy.HARD)


@sticky.task(desired_worker_labels={"model": DesiredWorkerLabel(value="fancy", weight=10)})
def first(input: EmptyModel, ctx: Context) -> dict[str, int]:
    return _me(ctx)


@sticky.task(parents=[first])
def second(input: EmptyModel, ctx: Context) -> dict[str, int]:
    return _me(ctx)


@hatchet.task(
    name="compat-release",
    desired_worker_labels={"model": DesiredWorkerLabel(value="fancy", required=True)},
)
async def release(input: EmptyModel, ctx: Context) -> dict[str, float]:
    # Async: hatchet-sdk's runner has one thread per slot, so a sync body would keep the
    # only thread even after giving its slot back.
    ctx.release_slot()
    await asyncio.sleep(1.5)  # keeps running after giving its slot back
    return {"end": time.time()}


# Pinned to the 1-slot fancy worker too, so it can only start early if "release" really
# gave its slot back.
@hatchet.task(
    name="compat-quick",
    desired_worker_labels={"model": DesiredWorkerLabel(value="fancy", required=True)},
)
def quick(input: EmptyModel, ctx: Context) -> dict[str, float]:
    return {"start": time.time()}


def worker(name: str, model: str, slots: int) -> None:
    hatchet.worker(
        name,
        slots=slots,
        labels={"model": model},
        workflows=[affinity, sticky, release, quick],
    ).start()


def client() -> None:
    out: dict[str, object] = {}
    out["affinity"] = [affinity.run()["worker"] for _ in range(4)]
    out["sticky"] = [sticky.run() for _ in range(4)]
    out["sticky_workers"] = [
        list({r["first"]["worker"], r["second"]["worker"]}) for r in out["sticky"]
    ]  # type: ignore[union-attr]
    # Both in one go on a 1-slot pool: "quick" can only run early if "release" gave its
    # slot back while still running.
    long = release.run_no_wait()
    short = quick.run_no_wait()
    out["quick_start"] = short.result()["start"]
    out["release_end"] = long.result()["end"]
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        client()
