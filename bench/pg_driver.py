"""asyncpg against psycopg 3 on the PostgreSQL store's hot-path shape, to pick the driver.

    python bench/pg_driver.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

Needs psycopg 3 besides asyncpg (``pip install 'psycopg[binary]' psycopg-pool``): only
this bench uses it, Hewer does not depend on it.

One transaction per engine turn: load N tasks by id (FOR UPDATE), their runs (FOR UPDATE)
and their slot-holding attempts, then UPDATE the N task rows and INSERT N attempt rows
from arrays (unnest), commit. Also bulk triggers: 8, 64 and 1,000 runs + as many tasks
inserted in one transaction, through unnest or COPY. The schema is the store's own
migration, in a scratch database dropped afterwards. Printed per case: wall ms per
transaction and this process's CPU ms per transaction (the engine's loop shares 2 cores
with the server, so its CPU is what limits throughput). Runs in about 15 s.
No assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import psycopg_pool

MIGRATION = (
    Path(__file__).resolve().parents[1] / "src/hewer/store/migrations/postgres/0001_initial.sql"
)
SEED = 20_000
NOW = 1_700_000_000.0

TASK = [
    ("seq", "bigint"), ("id", "text"), ("tenant_id", "text"), ("run_id", "text"),
    ("readable_id", "text"), ("action_id", "text"), ("status", "text"), ("priority", "int"),
    ("retry_count", "int"), ("app_retries", "int"), ("reassignments", "int"),
    ("worker_id", "text"), ("acked", "bool"), ("slot_released", "bool"),
    ("desired_worker_id", "text"), ("claims", "text"), ("available_at", "float8"),
    ("queued_at", "float8"), ("schedule_deadline", "float8"), ("assigned_at", "float8"),
    ("started_at", "float8"), ("timeout_at", "float8"), ("finished_at", "float8"),
    ("output", "text"), ("error", "text"), ("created_at", "float8"),
]  # fmt: skip
RUN = [
    ("id", "text"), ("tenant_id", "text"), ("workflow_id", "text"), ("workflow_name", "text"),
    ("version_id", "text"), ("status", "text"), ("input", "text"),
    ("additional_metadata", "text"), ("priority", "int"), ("task_count", "int"),
    ("first_seq", "bigint"), ("sticky", "text"), ("sticky_worker_id", "text"),
    ("desired_labels", "text"), ("created_at", "float8"), ("finished_at", "float8"),
]  # fmt: skip
ATTEMPT = [
    ("task_id", "text"), ("retry_count", "int"), ("worker_id", "text"),
    ("assigned_at", "float8"), ("started_at", "float8"), ("finished_at", "float8"),
    ("outcome", "text"), ("holds_slot", "bool"), ("error", "text"),
]  # fmt: skip
MUTABLE = [
    "status", "retry_count", "app_retries", "reassignments", "worker_id", "acked",
    "slot_released", "desired_worker_id", "available_at", "queued_at", "schedule_deadline",
    "assigned_at", "started_at", "timeout_at", "finished_at", "output", "error",
]  # fmt: skip
TYPES = dict(TASK)


def cols(spec: list[tuple[str, str]]) -> str:
    return ", ".join(c for c, _ in spec)


def unnest(spec: list[tuple[str, str]], start: int = 1) -> str:
    return ", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(spec, start))


SEL_TASKS = f"SELECT {cols(TASK)} FROM tasks WHERE id = ANY($1::text[]) ORDER BY seq FOR UPDATE"
SEL_RUNS = f"SELECT {cols(RUN)} FROM runs WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"
SEL_ATTEMPTS = (
    f"SELECT {cols(ATTEMPT)} FROM task_attempts WHERE task_id = ANY($1::text[]) AND holds_slot"
)
_UPD = [("seq", "bigint"), *((c, TYPES[c]) for c in MUTABLE)]
UPDATE_TASKS = (
    "UPDATE tasks t SET "
    + ", ".join(f"{c} = v.{c}" for c in MUTABLE)
    + f" FROM unnest({unnest(_UPD)}) AS v({cols(_UPD)}) WHERE t.seq = v.seq"
)
INSERT_ATTEMPTS = (
    f"INSERT INTO task_attempts ({cols(ATTEMPT)}) SELECT * FROM unnest({unnest(ATTEMPT)}) "
    "ON CONFLICT (task_id, retry_count) DO UPDATE SET outcome = excluded.outcome"
)
INSERT_RUNS = f"INSERT INTO runs ({cols(RUN)}) SELECT * FROM unnest({unnest(RUN)})"
INSERT_TASKS = f"INSERT INTO tasks ({cols(TASK)}) SELECT * FROM unnest({unnest(TASK)})"


def run_rows(n: int, first_seq: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    runs, tasks = [], []
    for i in range(n):
        rid, seq = str(uuid.uuid4()), first_seq + i
        runs.append(
            (rid, "t", "wf", "job", "v1", "queued", '{"x": 1}', None, 1, 1, seq, None, None,
             None, NOW, None)
        )  # fmt: skip
        tasks.append(
            (seq, rid, "t", rid, "job", "job:job", "queued", 1, 0, 0, 0, None, False, False,
             None, None, 0.0, NOW, NOW + 300, None, None, None, None, None, None, NOW)
        )  # fmt: skip
    return runs, tasks


def columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(c) for c in zip(*rows, strict=True)]


class Hot:
    """The data of one hot-path transaction over ``n`` of the seeded tasks."""

    def __init__(self, ids: list[str], seqs: dict[str, int], n: int, turn: int) -> None:
        picked = random.sample(ids, n)
        self.ids = picked
        status = "running" if turn % 2 == 0 else "completed"
        t = NOW + turn
        rows = [
            (seqs[i], status, turn, 0, 0, "w1", True, False, None, 0.0, NOW, NOW + 300, t, t,
             t + 60, None, '{"ok": true}', None)
            for i in picked
        ]  # fmt: skip
        self.update = columns(rows)
        self.attempts = columns([(i, turn, "w1", t, t, t, "lost", False, None) for i in picked])


async def asyncpg_case(dsn: str) -> Callable[[str, Any], Awaitable[None]]:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2)

    async def go(kind: str, data: Any) -> None:
        async with pool.acquire() as conn, conn.transaction():
            if kind == "hot":
                await conn.fetch(SEL_TASKS, data.ids)
                await conn.fetch(SEL_RUNS, data.ids)
                await conn.fetch(SEL_ATTEMPTS, data.ids)
                await conn.execute(UPDATE_TASKS, *data.update)
                await conn.execute(INSERT_ATTEMPTS, *data.attempts)
            elif kind == "bulk_unnest":
                runs, tasks = data
                await conn.execute(INSERT_RUNS, *columns(runs))
                await conn.execute(INSERT_TASKS, *columns(tasks))
            else:
                runs, tasks = data
                await conn.copy_records_to_table("runs", records=runs, columns=[c for c, _ in RUN])
                await conn.copy_records_to_table(
                    "tasks", records=tasks, columns=[c for c, _ in TASK]
                )

    go.close = pool.close  # type: ignore[attr-defined]
    return go


async def psycopg_case(dsn: str, binary: bool) -> Callable[[str, Any], Awaitable[None]]:
    pool = psycopg_pool.AsyncConnectionPool(
        dsn,
        min_size=2,
        max_size=2,
        open=False,
        kwargs={"cursor_factory": psycopg.AsyncRawCursor, "prepare_threshold": 0},
    )
    await pool.open(wait=True)

    async def go(kind: str, data: Any) -> None:
        async with pool.connection() as conn, conn.transaction():
            cur = conn.cursor(binary=binary)
            if kind == "hot":
                await (await cur.execute(SEL_TASKS, [data.ids])).fetchall()
                await (await cur.execute(SEL_RUNS, [data.ids])).fetchall()
                await (await cur.execute(SEL_ATTEMPTS, [data.ids])).fetchall()
                await cur.execute(UPDATE_TASKS, data.update)
                await cur.execute(INSERT_ATTEMPTS, data.attempts)
            elif kind == "bulk_unnest":
                runs, tasks = data
                await cur.execute(INSERT_RUNS, columns(runs))
                await cur.execute(INSERT_TASKS, columns(tasks))
            else:
                runs, tasks = data
                for table, spec, rows in (("runs", RUN, runs), ("tasks", TASK, tasks)):
                    names = cols(spec)
                    async with cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                        for row in rows:
                            await copy.write_row(row)

    go.close = pool.close  # type: ignore[attr-defined]
    return go


async def measure(
    name: str,
    go: Callable[[str, Any], Awaitable[None]],
    ids: list[str],
    seqs: dict[str, int],
    next_seq: list[int],
) -> None:
    for n, reps in ((8, 300), (64, 150), (256, 60)):
        batches = [Hot(ids, seqs, n, t) for t in range(reps + 10)]
        for b in batches[:10]:  # warm-up: connections, prepared statements
            await go("hot", b)
        wall, cpu = time.perf_counter(), time.process_time()
        for b in batches[10:]:
            await go("hot", b)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(
            f"{name:18} hot n={n:<4} {wall / reps * 1e3:7.2f} ms/tx  cpu {cpu / reps * 1e3:6.2f}"
            f" ms/tx  {n * reps / wall:9,.0f} task rows/s"
        )
    for size, reps in ((8, 100), (64, 40), (1000, 5)):
        for kind in ("bulk_unnest", "bulk_copy"):
            data = []
            for _ in range(reps + 1):
                data.append(run_rows(size, next_seq[0]))
                next_seq[0] += size
            await go(kind, data[0])
            wall, cpu = time.perf_counter(), time.process_time()
            for d in data[1:]:
                await go(kind, d)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(
                f"{name:18} {kind:11} n={size:<4} {wall / reps * 1e3:7.2f} ms/tx  cpu"
                f" {cpu / reps * 1e3:6.2f} ms/tx  {size * reps / wall:9,.0f} runs+tasks/s"
            )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    db = f"hewer_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = args.dsn.rsplit("/", 1)[0] + "/" + db
    try:
        conn = await asyncpg.connect(dsn)
        await conn.execute(MIGRATION.read_text())
        runs, tasks = run_rows(SEED, 1)
        await conn.copy_records_to_table("runs", records=runs, columns=[c for c, _ in RUN])
        await conn.copy_records_to_table("tasks", records=tasks, columns=[c for c, _ in TASK])
        await conn.execute("VACUUM ANALYZE")
        await conn.close()
        ids = [r[0] for r in runs]
        seqs = {t[1]: t[0] for t in tasks}
        next_seq = [SEED + 1]
        for name, make in (
            ("asyncpg", lambda: asyncpg_case(dsn)),
            ("psycopg (text)", lambda: psycopg_case(dsn, binary=False)),
            ("psycopg (binary)", lambda: psycopg_case(dsn, binary=True)),
        ):
            go = await make()
            try:
                await measure(name, go, ids, seqs, next_seq)
            finally:
                await go.close()  # type: ignore[attr-defined]
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
