"""The benchmark's jobs for pgqueuer; the worker runs
``python -m pgqueuer run bench.harness.pgqueuer_app:factory``.

pgqueuer keeps no results, so the no-op job records its start in ``BENCH_STARTS`` when
its payload is ``L<n>`` (W2's jobs only). ``BENCH_PG_DSN`` names the
benchmark's database, ``BENCH_MARKS`` W3's start marks.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job

from bench.harness.marks import mark_start, record_start


@asynccontextmanager
async def factory() -> AsyncIterator[PgQueuer]:
    connection = await asyncpg.connect(os.environ["BENCH_PG_DSN"])
    pgq = PgQueuer(AsyncpgDriver(connection))

    @pgq.entrypoint("bench_noop")
    async def noop(job: Job) -> None:
        started = time.time()
        if job.payload and job.payload[:1] == b"L":
            record_start(job.payload[1:].decode(), started)

    @pgq.entrypoint("bench_slow")
    async def slow(job: Job) -> None:
        started = time.time()
        mark_start(started)
        await asyncio.sleep(5)

    try:
        yield pgq
    finally:
        await connection.close()
