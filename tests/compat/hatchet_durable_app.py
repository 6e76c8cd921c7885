"""hatchet-sdk worker and client for durable tasks: a durable sleep, a durable wait for a
user event, memoised values (``aio_now``), a child run spawned and awaited from a durable
task, an eviction while waiting, and a durable sleep its worker dies in.

``python hatchet_durable_app.py worker [NAME]`` starts a worker; ``client-start`` starts
one run of each durable task, ``client-push KEY JSON`` pushes an event and
``client-results IDS`` prints the runs' results, each as one JSON line. Never imported by
the test process (hatchet-sdk's protobuf names would clash with ours).
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from hatchet_sdk import Context, DurableContext, EmptyModel, Hatchet
from hatchet_sdk.runnables.eviction import EvictionPolicy
from pydantic import BaseModel

hatchet = Hatchet()

# Where the durable bodies note each invocation (the test reads it).
TRACE = Path(os.environ.get("COMPAT_TRACE", "durable-trace.jsonl"))


def _trace(**fields: Any) -> None:
    with TRACE.open("a") as f:
        f.write(json.dumps({"pid": os.getpid(), "at": time.time(), **fields}) + "\n")


class ChildInput(BaseModel):
    n: int


@hatchet.task(name="compat-durable-child", input_validator=ChildInput)
def child(input: ChildInput, ctx: Context) -> dict[str, Any]:
    return {"doubled": input.n * 2}


@hatchet.durable_task(name="compat-durable-flow", execution_timeout=timedelta(seconds=20))
async def flow(input: EmptyModel, ctx: DurableContext) -> dict[str, Any]:
    _trace(task="flow", invocation=ctx.invocation_count)
    began = await ctx.aio_now()
    slept = await ctx.aio_sleep_for(timedelta(seconds=1))
    woke = await ctx.aio_now()
    # Events pushed (in the scope) since a minute before the wait count too.
    event = await ctx.aio_wait_for_event(
        "compat:durable-go",
        "input.ok == true",
        scope="compat",
        lookback_window=timedelta(minutes=1),
    )
    spawned = await child.aio_run(ChildInput(n=21))
    return {
        "began": began.timestamp(),
        "woke": woke.timestamp(),
        "slept": slept.duration.total_seconds(),
        "event": event,
        "child": spawned,
        "invocation": ctx.invocation_count,
    }


@hatchet.durable_task(
    name="compat-durable-evicted",
    eviction_policy=EvictionPolicy(ttl=timedelta(seconds=1), allow_capacity_eviction=False),
)
async def evicted(input: EmptyModel, ctx: DurableContext) -> dict[str, Any]:
    _trace(task="evicted", invocation=ctx.invocation_count)
    event = await ctx.aio_wait_for_event("compat:durable-resume")
    return {"event": event, "invocation": ctx.invocation_count}


@hatchet.durable_task(name="compat-durable-kill", execution_timeout=timedelta(seconds=60))
async def kill(input: EmptyModel, ctx: DurableContext) -> dict[str, Any]:
    _trace(task="kill", invocation=ctx.invocation_count)
    await ctx.aio_sleep_for(timedelta(seconds=4))
    _trace(task="kill-woke", invocation=ctx.invocation_count)
    return {"invocation": ctx.invocation_count, "pid": os.getpid()}


def worker() -> None:
    name = sys.argv[2] if len(sys.argv) > 2 else "durable-worker"
    hatchet.worker(name, slots=4, workflows=[child, flow, evicted, kill]).start()


def client_start() -> None:
    """Start one run of each durable task; the flow's event is pushed at once (its wait
    looks back for it)."""
    ids = {
        "flow": flow.run_no_wait().workflow_run_id,
        "evicted": evicted.run_no_wait().workflow_run_id,
        "kill": kill.run_no_wait().workflow_run_id,
    }
    hatchet.event.push("compat:durable-go", {"ok": False}, scope="compat")
    hatchet.event.push("compat:durable-go", {"ok": True, "n": 5}, scope="compat")
    print(json.dumps(ids))


def client_push() -> None:
    hatchet.event.push(sys.argv[2], json.loads(sys.argv[3]))
    print(json.dumps({"pushed_at": time.time()}))


def client_results() -> None:
    """The results of the runs named (a JSON object of name -> run id)."""
    ids = json.loads(sys.argv[2])
    results = {k: hatchet.runs.get_run_ref(v).result() for k, v in ids.items()}
    # A run's result holds each task's output by name; these runs have one task each.
    print(json.dumps({k: next(iter(r.values())) for k, r in results.items()}))


if __name__ == "__main__":
    {
        "worker": worker,
        "client-start": client_start,
        "client-push": client_push,
        "client-results": client_results,
    }[sys.argv[1]]()
