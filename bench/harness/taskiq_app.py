"""The benchmark's tasks for taskiq on Redis; the worker runs
``taskiq worker bench.harness.taskiq_app:broker``.

``ListQueueBroker`` (a Redis list: LPUSH to enqueue, BRPOP to take) is taskiq-redis's
plain and fastest broker; results go to ``RedisAsyncResultBackend``. Where they live comes
from the driver: ``BENCH_REDIS_URL`` (with its database number), ``BENCH_TASKIQ_QUEUE``,
``BENCH_TASKIQ_PREFIX`` (result keys) and ``BENCH_MARKS`` (W3's start marks).
"""

from __future__ import annotations

import asyncio
import os
import time

from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

from bench.harness.marks import mark_start

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")

broker = ListQueueBroker(
    url=REDIS_URL, queue_name=os.environ.get("BENCH_TASKIQ_QUEUE", "bench-taskiq")
).with_result_backend(
    RedisAsyncResultBackend(
        redis_url=REDIS_URL,
        prefix_str=os.environ.get("BENCH_TASKIQ_PREFIX", "bench-taskiq-result"),
        result_ex_time=3600,
    )
)


@broker.task(task_name="bench_anoop")
async def anoop(n: int) -> dict[str, float]:
    return {"started": time.time()}


@broker.task(task_name="bench_slow")
async def slow(n: int) -> dict[str, float]:
    started = time.time()
    mark_start(started)
    await asyncio.sleep(5)
    return {"started": started}
