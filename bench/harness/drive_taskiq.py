"""Driver for the taskiq row: taskiq + taskiq-redis (``ListQueueBroker`` and
``RedisAsyncResultBackend``) on the local Redis, one ``taskiq worker`` process.

Uses an empty Redis database of its own (the highest-numbered empty one), so "all W1 tasks
done" is simply the number of result keys there (DBSIZE); deletes its keys at the end.
Run by ``bench/compare.py``; writes an ``Outcome`` as JSON to ``--out``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

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
)

RESULT_POLL_SECONDS = 0.001  # taskiq's wait_result polls; its default is 0.2 s


async def pick_database(base_url: str) -> int:
    """The highest-numbered Redis database that holds no keys."""
    from redis.asyncio import Redis

    for db in range(15, 0, -1):
        client = Redis.from_url(f"{base_url}/{db}")
        try:
            if await client.dbsize() == 0:
                return db
        finally:
            await client.aclose()
    raise RuntimeError(f"no empty Redis database (1..15) at {base_url}")


class Setup:
    def __init__(self, children: Children, workdir: Path, sizes: Sizes, url: str) -> None:
        self.children = children
        self.sizes = sizes
        self.marks = workdir / "marks"
        tag = uuid.uuid4().hex[:8]
        self.queue = f"bench-taskiq-{tag}"
        self.prefix = f"bench-taskiq-result-{tag}"
        self.url = url
        self.env = dict(
            os.environ,
            BENCH_REDIS_URL=url,
            BENCH_TASKIQ_QUEUE=self.queue,
            BENCH_TASKIQ_PREFIX=self.prefix,
            BENCH_MARKS=str(self.marks),
            PYTHONUNBUFFERED="1",
        )
        os.environ.update(self.env)
        self.workers = 0

    def start_worker(self) -> Child:
        self.workers += 1
        argv = [sys.executable, "-m", "taskiq", "worker", "bench.harness.taskiq_app:broker"]
        argv += ["--workers", "1", "--max-async-tasks", str(self.sizes.slots)]
        argv += ["--log-level", "WARNING"]
        return self.children.start(f"worker-{self.workers}", argv, self.env)


async def run(setup: Setup, outcome: Outcome) -> None:
    from redis.asyncio import Redis

    from bench.harness import taskiq_app as app

    redis = Redis.from_url(setup.url)
    await app.broker.startup()
    try:
        await drive(setup, outcome, redis)
    finally:
        await app.broker.shutdown()
        keys = [key async for key in redis.scan_iter(match=f"{setup.prefix}*", count=1000)]
        for i in range(0, len(keys), 1000):
            await redis.unlink(*keys[i : i + 1000])
        await redis.unlink(setup.queue)
        await redis.aclose()


async def wait_result(task: Any, children: list[Child], within: float) -> Any:
    """A kicked task's return value; polls the result backend while the worker lives."""
    deadline = time.monotonic() + within
    while not await task.is_ready():
        for child in children:
            child.check_alive()
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {within:.0f}s waiting for a taskiq result")
        await asyncio.sleep(RESULT_POLL_SECONDS)
    result = await task.get_result()
    if result.is_err:
        raise RuntimeError(f"task failed: {result.error}")
    return result.return_value


async def drive(setup: Setup, outcome: Outcome, redis: Any) -> None:
    from bench.harness import taskiq_app as app

    sizes = setup.sizes
    config = {**await redis.config_get("appendonly"), **await redis.config_get("save")}
    server = (await redis.info("server"))["redis_version"]
    outcome.versions["redis-server"] = str(server)
    outcome.settings.append(
        f"redis-server {server} as found: appendonly={config.get('appendonly')!s}, "
        f"save={config.get('save')!r}, so an accepted task is not on disk"
    )
    log(f"{outcome.label}: warm-up worker (queue {setup.queue}, {setup.url})")
    warm = setup.start_worker()
    await wait_result(await app.anoop.kiq(-1), [warm], 120)
    warm.stop(grace=30)
    await redis.unlink(*[key async for key in redis.scan_iter(match=f"{setup.prefix}*")])
    assert await redis.dbsize() == 0, "someone else is writing into the benchmark's Redis db"

    worker: Child | None = None
    if "w1" in sizes.workloads:
        # taskiq has no bulk kick; one kick after another beats 1,000 concurrent ones
        # (asyncio.gather) here: the client's CPU, not Redis, is what limits it.
        log(f"{outcome.label}: W1 enqueue of {sizes.tasks} (one .kiq() after another)")
        began = time.perf_counter()
        for i in range(sizes.tasks):
            await app.anoop.kiq(i)
        outcome.bulk_per_s = rate(sizes.tasks, time.perf_counter() - began)
        assert await redis.llen(setup.queue) == sizes.tasks

        log(f"{outcome.label}: W1 drain with one worker, --max-async-tasks {sizes.slots}")
        client_before = own_cpu_seconds()
        worker = draining = setup.start_worker()

        async def drained() -> bool:
            draining.check_alive()
            return bool(await redis.dbsize() - await redis.exists(setup.queue) >= sizes.tasks)

        await await_until(drained, max(300.0, sizes.tasks / 10), "the W1 drain")
        elapsed = time.perf_counter() - draining.started
        outcome.worker_cpu_us = draining.cpu_seconds() / sizes.tasks * 1e6
        outcome.client_cpu_us = (own_cpu_seconds() - client_before) / sizes.tasks * 1e6
        outcome.w1_seconds = elapsed
        outcome.w1_tasks_per_s = rate(sizes.tasks, elapsed)
        log(f"{outcome.label}: W1 {outcome.w1_tasks_per_s:.0f} tasks/s")

    if worker is None:
        worker = setup.start_worker()
        await wait_result(await app.anoop.kiq(-2), [worker], 120)

    if "w2" in sizes.workloads:
        count = int(sizes.w2_rate * sizes.w2_seconds)
        log(f"{outcome.label}: W2 {count} tasks at {sizes.w2_rate:.0f}/s")
        sent: list[tuple[float, Any]] = []
        interval = 1.0 / sizes.w2_rate
        next_at = time.perf_counter()
        for i in range(count):
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            at = time.time()
            sent.append((at, await app.anoop.kiq(i)))
            next_at += interval
        ms = []
        for at, task in sent:
            ms.append(((await wait_result(task, [worker], 120))["started"] - at) * 1000)
        outcome.w2_p50_ms, outcome.w2_p99_ms = percentile(ms, 50), percentile(ms, 99)
        outcome.w2_count = count

    if "w2r" in sizes.workloads:
        log(f"{outcome.label}: W2r {sizes.w2r_count} sequential round trips")
        trips: list[float] = []
        for i in range(sizes.w2r_count):
            began = time.perf_counter()
            await wait_result(await app.anoop.kiq(i), [worker], 60)
            trips.append((time.perf_counter() - began) * 1000)
        outcome.w2r_p50_ms, outcome.w2r_p99_ms = percentile(trips, 50), percentile(trips, 99)

    if "w3" in sizes.workloads:
        await w3(setup, outcome, worker)


async def w3(setup: Setup, outcome: Outcome, worker: Child) -> None:
    from bench.harness import taskiq_app as app

    log(f"{outcome.label}: W3 kill the worker {KILL_AFTER_SECONDS:.0f}s into a slow task")
    await app.slow.kiq(0)

    async def first_start() -> float | None:
        worker.check_alive()
        marks = read_marks(setup.marks)
        return marks[0][0] if marks else None

    started = await await_until(first_start, 60, "the slow task to start")
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
    except Timeout:
        outcome.w3_note = (
            f"n/a, no re-delivery (none within {setup.sizes.w3_deadline:.0f}s): "
            "ListQueueBroker takes a message with BRPOP and has no ack, so a killed "
            "worker's task is gone"
        )
    log(f"{outcome.label}: W3 {outcome.w3_seconds or outcome.w3_note}")


def main() -> None:
    exit_on_sigterm()
    args = driver_args(__doc__.splitlines()[0])
    sizes = sizes_from(args)
    outcome = Outcome(system="taskiq", label="taskiq (Redis)", store="Redis, no persistence")
    outcome.settings = [
        f"ListQueueBroker + RedisAsyncResultBackend; `taskiq worker --workers 1 "
        f"--max-async-tasks {sizes.slots}`, async no-op",
        "enqueue: no bulk API, so one .kiq() after another (faster here than 1,000 "
        "concurrent ones); results: "
        f"wait_result-style polling every {RESULT_POLL_SECONDS * 1000:.0f} ms "
        "(taskiq's default 200 ms); W1 done = result-key count (DBSIZE of its own db)",
    ]
    outcome.versions = version_of("taskiq", "taskiq-redis", "redis")
    with recording(outcome, args.out), Children(args.workdir) as children:

        async def go() -> None:
            db = await pick_database(args.redis_url.rstrip("/"))
            url = f"{args.redis_url.rstrip('/')}/{db}"
            await run(Setup(children, args.workdir, sizes, url), outcome)

        asyncio.run(go())


if __name__ == "__main__":
    main()
