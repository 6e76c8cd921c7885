"""Driver for the pgqueuer row: pgqueuer with asyncpg on the local PostgreSQL (durable
tables), one ``pgqueuer run`` worker process capped at 8 concurrent jobs.

Creates a database of its own (``bench_pgq_<pid>``), installs pgqueuer's schema there and
drops the database at the end. Run by ``bench/compare.py``; writes an ``Outcome`` as JSON
to ``--out``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.harness.common import (
    KILL_AFTER_SECONDS,
    Child,
    Children,
    Outcome,
    Sizes,
    Timeout,
    await_until,
    driver_args,
    exit_on_sigterm,
    log,
    own_cpu_seconds,
    percentile,
    rate,
    read_marks,
    recording,
    sizes_from,
    version_of,
    with_scratch_database,
)

NOOP, SLOW = "bench_noop", "bench_slow"
# pgqueuer refuses max_concurrent_tasks < 2 * batch_size, so 8 concurrent jobs allow 4.
BATCH_SIZE = 4
DONE_POLL_SECONDS = 0.05  # queue_size() counts the queue table; not every 10 ms
WATCH_DEBOUNCE = timedelta(milliseconds=1)  # CompletionWatcher's default is 50 ms


class Setup:
    def __init__(self, children: Children, workdir: Path, sizes: Sizes, dsn: str) -> None:
        self.children = children
        self.sizes = sizes
        self.dsn = dsn
        self.marks = workdir / "marks"
        self.starts = workdir / "starts"
        self.env = dict(
            os.environ,
            BENCH_PG_DSN=dsn,
            BENCH_STARTS=str(self.starts),
            BENCH_MARKS=str(self.marks),
            PYTHONUNBUFFERED="1",
        )
        self.workers = 0

    def start_worker(self) -> Child:
        self.workers += 1
        argv = [sys.executable, "-m", "bench.harness.pgqueuer_worker"]
        argv += [str(BATCH_SIZE), str(self.sizes.slots)]
        return self.children.start(f"worker-{self.workers}", argv, self.env)


async def queued(queries: Any, entrypoint: str) -> int:
    """Jobs of ``entrypoint`` still in pgqueuer's queue table (queued or picked)."""
    return sum(row.count for row in await queries.queue_size() if row.entrypoint == entrypoint)


async def run(setup: Setup, outcome: Outcome) -> None:
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    connection = await asyncpg.connect(setup.dsn)
    try:
        queries = Queries(AsyncpgDriver(connection))
        await queries.install()
        await queries.optimize_autovacuum()
        await drive(setup, outcome, queries)
    finally:
        await connection.close()


async def drain(queries: Any, children: list[Child], within: float, what: str) -> None:
    async def empty() -> bool:
        for child in children:
            child.check_alive()
        return await queued(queries, NOOP) == 0

    await await_until(empty, within, what, interval=DONE_POLL_SECONDS)


async def drive(setup: Setup, outcome: Outcome, queries: Any) -> None:
    from pgqueuer.core.completion import CompletionWatcher
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    sizes = setup.sizes
    log(f"{outcome.label}: warm-up worker ({setup.dsn})")
    warm = setup.start_worker()
    await queries.enqueue(NOOP, b"warm-up")
    await drain(queries, [warm], 120, "the warm-up job")
    warm.stop(grace=30)

    worker: Child | None = None
    if "w1" in sizes.workloads:
        log(f"{outcome.label}: W1 bulk enqueue of {sizes.tasks}")
        began = time.perf_counter()
        for start in range(0, sizes.tasks, sizes.bulk_chunk):
            count = min(sizes.bulk_chunk, sizes.tasks - start)
            await queries.enqueue(
                [NOOP] * count, [b"%d" % (start + i) for i in range(count)], [0] * count
            )
        outcome.bulk_per_s = rate(sizes.tasks, time.perf_counter() - began)
        assert await queued(queries, NOOP) == sizes.tasks

        log(f"{outcome.label}: W1 drain with one worker, --max-concurrent-tasks {sizes.slots}")
        client_before = own_cpu_seconds()
        worker = setup.start_worker()
        await drain(queries, [worker], max(300.0, sizes.tasks / 10), "the W1 drain")
        elapsed = time.perf_counter() - worker.started
        outcome.worker_cpu_us = worker.cpu_seconds() / sizes.tasks * 1e6
        outcome.client_cpu_us = (own_cpu_seconds() - client_before) / sizes.tasks * 1e6
        outcome.w1_seconds = elapsed
        outcome.w1_tasks_per_s = rate(sizes.tasks, elapsed)
        log(f"{outcome.label}: W1 {outcome.w1_tasks_per_s:.0f} tasks/s")

    if worker is None:
        worker = setup.start_worker()
        await queries.enqueue(NOOP, b"first")
        await drain(queries, [worker], 120, "a first job")

    if "w2" in sizes.workloads:
        count = int(sizes.w2_rate * sizes.w2_seconds)
        log(f"{outcome.label}: W2 {count} jobs at {sizes.w2_rate:.0f}/s")
        sent: list[float] = []
        interval = 1.0 / sizes.w2_rate
        next_at = time.perf_counter()
        for i in range(count):
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent.append(time.time())
            await queries.enqueue(NOOP, b"L%d" % i)
            next_at += interval
        await drain(queries, [worker], 120, "W2")
        started = {int(n): float(t) for n, t in (line.split() for line in lines(setup.starts))}
        ms = [(started[i] - at) * 1000 for i, at in enumerate(sent)]
        outcome.w2_p50_ms, outcome.w2_p99_ms = percentile(ms, 50), percentile(ms, 99)
        outcome.w2_count = count

    if "w2r" in sizes.workloads:
        log(f"{outcome.label}: W2r {sizes.w2r_count} sequential round trips")
        listen = await asyncpg.connect(setup.dsn)
        try:
            driver = AsyncpgDriver(listen)
            trips: list[float] = []
            async with CompletionWatcher(
                driver, queries=Queries(driver), debounce=WATCH_DEBOUNCE
            ) as watcher:
                for i in range(sizes.w2r_count):
                    began = time.perf_counter()
                    job_id = (await queries.enqueue(NOOP, b"r%d" % i))[0]
                    status = await asyncio.wait_for(watcher.wait_for(job_id), 60)
                    trips.append((time.perf_counter() - began) * 1000)
                    if status != "successful":
                        raise RuntimeError(f"job {job_id} ended {status}")
                    worker.check_alive()
            outcome.w2r_p50_ms, outcome.w2r_p99_ms = percentile(trips, 50), percentile(trips, 99)
        finally:
            await listen.close()

    if "w3" in sizes.workloads:
        await w3(setup, outcome, worker, queries)


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


async def w3(setup: Setup, outcome: Outcome, worker: Child, queries: Any) -> None:
    log(f"{outcome.label}: W3 kill the worker {KILL_AFTER_SECONDS:.0f}s into a slow job")
    await queries.enqueue(SLOW, b"0")

    async def first_start() -> float | None:
        worker.check_alive()
        marks = read_marks(setup.marks)
        return marks[0][0] if marks else None

    started = await await_until(first_start, 60, "the slow job to start")
    await asyncio.sleep(max(0.0, started + KILL_AFTER_SECONDS - time.time()))
    killed_at = time.time()
    worker.kill()
    replacement = setup.start_worker()

    async def rerun() -> float | None:
        replacement.check_alive()
        marks = read_marks(setup.marks)
        return marks[1][0] if len(marks) > 1 else None

    try:
        rerun_at = await await_until(rerun, setup.sizes.w3_deadline, "the re-run", interval=0.05)
        outcome.w3_seconds = rerun_at - killed_at
        log(f"{outcome.label}: W3 re-run {outcome.w3_seconds:.1f}s after the kill")
    except Timeout:
        outcome.w3_note = f"no re-run within {setup.sizes.w3_deadline:.0f}s"


def main() -> None:
    exit_on_sigterm()
    args = driver_args(__doc__.splitlines()[0])
    sizes = sizes_from(args)
    outcome = Outcome(system="pgqueuer", label="pgqueuer (PostgreSQL)", store="PostgreSQL, durable")
    outcome.settings = [
        f"worker: pgqueuer.run(batch_size={BATCH_SIZE}, max_concurrent_tasks={sizes.slots}) "
        "(the supervisor `pgq run` calls; that CLI fails to start with typer 0.29; "
        "pgqueuer requires max_concurrent_tasks >= 2 x batch_size), other options default "
        "(dequeue timeout 30s, heartbeat timeout 30s), async no-op, one asyncpg connection",
        "schema: `install` with durability=durable (all tables logged) + `autovac` tuning; "
        f"enqueue: Queries.enqueue with lists, {sizes.bulk_chunk:,} a call; W1 done = "
        f"queue_size() shows no job left (polled every {DONE_POLL_SECONDS * 1000:.0f} ms)",
        "W2 start time written by the job to a file (pgqueuer keeps no results); W2r: "
        f"CompletionWatcher (debounce {WATCH_DEBOUNCE.total_seconds() * 1000:.0f} ms, "
        "default 50 ms); the worker logs completions in batches flushed every ~100 ms, "
        "which sets W2r; W3: a picked job whose heartbeat is older than the heartbeat "
        "timeout (30s) is picked again",
    ]
    outcome.versions = version_of("pgqueuer", "asyncpg")
    with recording(outcome, args.out), Children(args.workdir) as children:

        async def go(dsn: str, admin: Any) -> None:
            outcome.versions["postgresql"] = str(await admin.fetchval("SHOW server_version"))
            fsync = await admin.fetchval("SHOW fsync")
            commit = await admin.fetchval("SHOW synchronous_commit")
            outcome.settings.append(
                f"PostgreSQL as found: fsync={fsync}, synchronous_commit={commit}"
            )
            try:
                await run(Setup(children, args.workdir, sizes, dsn), outcome)
            finally:
                children.close()  # the workers hold connections to the database we drop

        asyncio.run(with_scratch_database(args.pg_dsn, "bench_pgq", go))


if __name__ == "__main__":
    main()
