"""The engine without its transport: trigger and drain no-op tasks through ``EngineCore``
over a real SQLite file (or a PostgreSQL database), with in-process workers that answer
every start at once.

    python bench/core_bench.py [--tasks 20000] [--slots 8] [--workers 1] [--profile out.prof]
                               [--database-url postgresql://... (an empty database)]

What it measures is the cost gRPC does not explain: the engine loop (group commit, the
state machine, the scheduler) and the store. Printed: bulk trigger rate (1,000 runs per
call), drain rate, CPU per task of this process during the drain, transactions and
operations per transaction. No assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import tempfile
import time
from pathlib import Path

from hewer.domain import EventType, TaskDef, TaskEvent
from hewer.engine.core.clock import SystemClock
from hewer.engine.core.service import ActionKind, EngineCore, Session, TriggerSpec
from hewer.engine.metrics import EngineMetrics
from hewer.store import open_store

BATCH = 1000


class Done:
    def __init__(self, total: int) -> None:
        self.left = total
        self.event = asyncio.Event()

    def count(self, n: int) -> None:
        self.left -= n
        if self.left <= 0:
            self.event.set()


async def work(
    core: EngineCore, tenant_id: str, worker_id: str, session: Session, done: Done
) -> None:
    """A worker that completes every task it is given, reporting in batches."""
    while True:
        actions = await session.next_batch(256)
        if actions is None:
            return
        events = [
            TaskEvent(
                tenant_id, a.info.task_id, a.info.retry_count, worker_id, EventType.COMPLETED, "{}"
            )
            for a in actions
            if a.kind is ActionKind.START and a.info is not None
        ]
        if events:
            outcomes = await core.task_events(events)
            done.count(sum(1 for o in outcomes if o.applied))


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="hewer-core-bench-") as tmp:
        store = open_store(args.database_url or str(Path(tmp) / "bench.db"))
        await store.open()
        core = EngineCore(store, SystemClock())
        if args.metrics:
            # What a real engine does: count every committed turn for /metrics.
            core.loop.on_commit = EngineMetrics(store).committed
        await core.start()
        tenant = (await store.tenant_ensure("bench", time.time())).id
        await core.put_workflow(tenant, "noop", [TaskDef("noop", "noop:noop")], None)
        started = time.perf_counter()
        for i in range(0, args.tasks, BATCH):
            n = min(BATCH, args.tasks - i)
            await core.trigger(tenant, [TriggerSpec("noop", '{"n":1}')] * n)
        enqueue = time.perf_counter() - started
        commits0, ops0 = core.loop.commits, core.loop.ops
        profile = cProfile.Profile() if args.profile else None
        cpu0 = time.process_time()
        began = time.perf_counter()
        if profile is not None:
            profile.enable()
        done = Done(args.tasks)
        workers = []
        for w in range(args.workers):
            record = await core.register_worker(
                tenant, f"w{w}", ["noop:noop"], {"default": args.slots}, {}, {}
            )
            session = await core.open_session(tenant, record.id)
            workers.append(asyncio.create_task(work(core, tenant, record.id, session, done)))
        await done.event.wait()
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu0
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile)
        commits = core.loop.commits - commits0
        ops = core.loop.ops - ops0
        print(
            f"core bench: {args.tasks} no-op tasks, {args.workers} worker(s) x {args.slots} "
            f"slots, {'PostgreSQL' if args.database_url else 'SQLite (synchronous=FULL)'}\n"
            f"  bulk trigger {args.tasks / enqueue:,.0f} runs/s\n"
            f"  drain        {args.tasks / elapsed:,.0f} tasks/s, "
            f"CPU {cpu / args.tasks * 1e6:.0f} µs/task (engine + store + in-process workers)\n"
            f"  {commits} transactions, {ops / max(commits, 1):.1f} ops each"
        )
        for task in workers:
            task.cancel()
        await core.stop()
        await store.close()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--profile", default="")
    parser.add_argument("--metrics", action="store_true", help="feed the engine's metrics")
    parser.add_argument("--database-url", default="", help="an empty PostgreSQL database")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
