"""What only the PostgreSQL store promises: engines sharing one database (migrations, row
locks, queue positions), failing fast on an unreachable server, bulk triggers, exact
round-trips of text, JSON and times, and recovering a lost connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from hewer.domain import (
    Changes,
    ConcurrencyStrategy,
    DesiredLabel,
    EventType,
    GateClaim,
    Keys,
    LogLine,
    LogQuery,
    NewRun,
    QueuePage,
    RateClaim,
    TaskDef,
    TaskStatus,
    WorkerRecord,
    WorkerStatus,
    Workflow,
)
from hewer.engine.core.transitions import CreateRuns
from hewer.errors import StoreError
from hewer.store import PostgresStore, SqliteStore, _queries, open_store
from tests.netproxy import proxy
from tests.pg import fresh_database
from tests.store.conftest import NOW, Machine, tenant
from tests.store.test_transitions import ev


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with fresh_database() as database:
        yield database


@pytest.fixture
async def pg(url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(url)
    await store.open()
    yield store
    await store.close()


async def until(condition: object, timeout: float = 10.0, what: str = "") -> None:
    """Poll an async ``condition`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def waiting_for_lock(url: str, pid: int) -> bool:
    conn = await asyncpg.connect(url)
    try:
        kind = await conn.fetchval(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
        )
    finally:
        await conn.close()
    return bool(kind == "Lock")


def writer_pid(store: PostgresStore) -> int:
    assert store._wconn is not None
    return store._wconn.get_server_pid()


async def test_open_store_picks_the_backend_by_scheme() -> None:
    assert isinstance(open_store("postgresql://u@127.0.0.1/db"), PostgresStore)
    assert isinstance(open_store("postgres://u@127.0.0.1/db"), PostgresStore)
    assert isinstance(open_store("./x/hewer.db"), SqliteStore)
    sqlite_url = open_store("sqlite:////tmp/x/hewer.db")
    assert isinstance(sqlite_url, SqliteStore) and sqlite_url.path == "/tmp/x/hewer.db"
    # SQLite users need no PostgreSQL driver: the store package does not import it.
    code = "import sys, hewer.store; sys.exit('asyncpg' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


async def test_two_engines_opening_at_once_migrate_once(url: str) -> None:
    stores = [PostgresStore(url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        conn = await asyncpg.connect(url)
        try:
            versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        finally:
            await conn.close()
        # Every migration once, though three engines opened at the same moment.
        assert sorted(versions) == [v for v, _, _ in _queries.migrations("postgres")]
        assert len(versions) >= 2
        tid = await tenant(stores[0])
        assert [await s.tenant_get(tid) for s in stores[1:]] == [
            await stores[0].tenant_get(tid)
        ] * 2
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    again = PostgresStore(url)  # reopening finds nothing to do
    await again.open()
    await again.close()


async def test_an_unreachable_server_fails_fast_with_a_store_error() -> None:
    started = time.monotonic()
    refused = PostgresStore("postgresql://postgres@127.0.0.1:1/nothing", connect_timeout=1.0)
    with pytest.raises(StoreError, match="cannot open the database"):
        await refused.open()
    assert time.monotonic() - started < 3.0
    await refused.close()

    # A server that accepts the connection and then says nothing: bounded by the timeout.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        mute = PostgresStore(f"postgresql://u:secret@127.0.0.1:{port}/x", connect_timeout=0.5)
        with pytest.raises(StoreError) as raised:
            await mute.open()
        assert time.monotonic() - started < 3.0
        assert "secret" not in str(raised.value)  # the password stays out of messages
        with pytest.raises(StoreError, match="not open"):
            await mute.tenant_get("x")
    finally:
        server.close()


async def test_a_bulk_trigger_of_a_thousand_runs_is_one_transaction(pg: PostgresStore) -> None:
    machine = Machine(pg)
    tid = await tenant(pg)
    one = await machine.workflow(tid, "one", [TaskDef("t", "one:t")])
    dag = await machine.workflow(tid, "dag", [TaskDef("a", "d:a"), TaskDef("b", "d:b", ("a",))])
    runs = []
    for i in range(1000):
        wf = one if i % 2 else dag
        rid = str(uuid.uuid4())
        ids = (rid,) if wf is one else (str(uuid.uuid4()), str(uuid.uuid4()))
        runs.append(NewRun(rid, wf, f'{{"i":{i}}}', None, 1 + i % 3, ids))
    started = time.monotonic()
    [created] = await machine.apply(CreateRuns(runs))
    assert time.monotonic() - started < 10.0
    assert len(created) == 1000
    stored = await pg.runs_list(tid)
    assert len(stored) == 1000 and {r.id for r in stored} == {r.id for r in runs}
    tasks = await pg.tasks_list(tid)
    assert len(tasks) == 1500
    seqs = [t.seq for t in tasks]
    assert seqs == list(range(seqs[0], seqs[0] + 1500))  # one contiguous block
    by_run = {r.id: r for r in stored}
    for t in tasks:
        run = by_run[t.run_id]
        assert run.first_seq <= t.seq < run.first_seq + run.task_count
    page = await pg.tasks_queued_page(QueuePage(tid, "one:t", None, 1000))
    assert len(page) == 500
    assert [(r.task.priority, r.task.seq) for r in page] == sorted(
        ((r.task.priority, r.task.seq) for r in page), key=lambda k: (-k[0], k[1])
    )


async def test_text_json_and_times_round_trip_exactly(pg: PostgresStore) -> None:
    machine = Machine(pg)
    machine.now = NOW + 0.1 + 1e-7  # not representable in decimal: must come back bit-exact
    tid = await tenant(pg)
    tdef = TaskDef(
        "t",
        "one:t",
        retries=2,
        timeout_s=12.5,
        backoff_factor=1.5,
        slot_requests={"gpu": 2},
        desired_labels=(DesiredLabel("zone", "eu-1", required=True),),
    )
    wf = await machine.workflow(tid, "exact", [tdef])
    got = await pg.workflow_get_by_name(tid, "exact")
    assert got is not None and got.tasks == (tdef,)
    claim = GateClaim("g", "k", 2, ConcurrencyStrategy.GROUP_ROUND_ROBIN, "task:x", False, tid)
    text_in = '{"b": 1,  "a":[1, 2.50], "u": "\\u00e9t\\u00e9 ✓"}'
    meta = '{"z":"1",   "a": true}'
    runs = []
    for output in ("", "not json", '{"z":1,  "a": [ ]}'):
        rid = str(uuid.uuid4())
        new = NewRun(
            rid,
            wf,
            text_in,
            meta,
            2,
            (rid,),
            desired_labels=(DesiredLabel("gpu", 1),),
            gates=((claim,),),
            rates=((RateClaim("api", 1, None, 1.0),),),
        )
        await machine.one(CreateRuns([new]))
        await machine.assign(rid, tid)
        out = await machine.one(ev(tid, rid, EventType.COMPLETED, payload=output))
        assert out.applied
        runs.append((rid, output))
    for rid, output in runs:
        found = await pg.run_get(tid, rid)
        assert found is not None
        run, [task] = found
        assert (run.input, run.additional_metadata) == (text_in, meta)
        assert run.desired_labels is not None and json.loads(run.desired_labels)[0]["key"] == "gpu"
        assert task.output == output and task.status is TaskStatus.COMPLETED
        assert task.claims is not None and json.loads(task.claims)["gates"][0]["gate"] == "g"
        assert run.created_at == machine.now and task.finished_at == machine.now
        assert task.schedule_deadline == machine.now + tdef.schedule_timeout_s
    record = WorkerRecord(
        "w9",
        tid,
        "wörker",
        ("a:b", "c:d"),
        {"default": 5, "gpu": 1},
        {"zone": "eu-1", "rank": 3},
        WorkerStatus.ACTIVE,
        "registered",
        machine.now,
        1 / 3,
        NOW,
        {"sdk": {"version": "1.2", "extra": [1, 2.5, None, True]}},
    )
    async with pg.write() as tx:
        tx.stage(Changes(new_workers=[record]))
    assert await pg.worker_get(tid, "w9") == record


async def contend(
    url: str, first: PostgresStore, second: PostgresStore, task_id: str, seqs: int
) -> tuple[int, int, int, int]:
    """``first`` changes a task in a transaction it keeps open while ``second`` loads the
    same task (and reserves ``seqs`` queue positions, if any); ``second`` must wait for the
    lock. Returns the task's retry count before, the one ``second`` loaded, and the first
    positions each got."""
    entered, release = asyncio.Event(), asyncio.Event()
    got: dict[str, tuple[int, int]] = {}

    async def hold() -> None:
        async with first.write() as tx:
            ws = await tx.load(Keys(task_ids={task_id}), (), seqs=seqs and 5)
            row = ws.tasks[task_id]
            row.retry_count += 1
            ws.changes.task(row)
            tx.stage(ws.changes)
            entered.set()
            await release.wait()
        got["first"] = (row.retry_count, ws.next_seq)

    async def wait() -> None:
        async with second.write() as tx:
            ws = await tx.load(Keys(task_ids={task_id}), (), seqs=seqs)
            got["second"] = (ws.tasks[task_id].retry_count, ws.next_seq)

    holder = asyncio.create_task(hold())
    await entered.wait()
    [before] = [t.retry_count for t in await second.tasks_list() if t.id == task_id]
    waiter = asyncio.create_task(wait())
    await until(lambda: waiting_for_lock(url, writer_pid(second)), what="a lock wait")
    assert got == {}
    release.set()
    await asyncio.gather(holder, waiter)
    return before, got["second"][0], got["first"][1], got["second"][1]


@contextlib.asynccontextmanager
async def two_stores_and_a_run(
    url: str,
) -> AsyncIterator[tuple[PostgresStore, PostgresStore, str, Workflow, NewRun]]:
    """Two stores on one database (as two engines would be), and a one-task run made
    through the first: (first, second, tenant id, workflow, run)."""
    first, second = PostgresStore(url), PostgresStore(url)
    await first.open()
    await second.open()
    try:
        machine = Machine(first)
        tid = await tenant(first)
        wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t")])
        yield first, second, tid, wf, await machine.run(wf)
    finally:
        await first.close()
        await second.close()


async def test_a_write_waits_for_the_rows_another_store_has_locked(url: str) -> None:
    async with two_stores_and_a_run(url) as (first, second, _, _, run):
        # A lock on the task row: the waiter loads the committed row.
        before, loaded, _, _ = await contend(url, first, second, run.id, seqs=0)
        assert loaded == before + 1
        # On the queue positions too: they are handed out in commit order.
        before, loaded, first_seq, second_seq = await contend(url, first, second, run.id, 3)
        assert loaded == before + 1 and second_seq == first_seq + 5


async def test_a_cancelled_write_rolls_back_and_the_store_goes_on(url: str) -> None:
    async with two_stores_and_a_run(url) as (_, second, tid, wf, run):
        conn = await asyncpg.connect(url)
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", run.id)

        async def blocked() -> None:
            async with second.write() as wtx:
                await wtx.load(Keys(task_ids={run.id}), ())

        waiter = asyncio.create_task(blocked())
        await until(lambda: waiting_for_lock(url, writer_pid(second)), what="a lock wait")
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await tx.rollback()
        await conn.close()
        # The cancelled transaction holds nothing and the store writes on.
        other = Machine(second)
        other.versions.add([wf])
        assert await other.assign(run.id, tid)
        [row] = await second.tasks_list(tid)
        assert row.status is TaskStatus.RUNNING


async def test_a_lost_writer_connection_is_replaced(url: str, pg: PostgresStore) -> None:
    machine = Machine(pg)
    tid = await tenant(pg)
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t")])
    admin = await asyncpg.connect(url)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", writer_pid(pg))
    finally:
        await admin.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            run = await machine.run(wf)
            break
        except StoreError:  # the write that finds the connection dead fails, cleanly
            assert time.monotonic() < deadline
    assert [t.id for t in await pg.tasks_list(tid)] == [run.id]
    assert await machine.assign(run.id, tid)
    assert (await machine.one(ev(tid, run.id, EventType.COMPLETED))).applied


async def test_reads_do_not_wait_for_the_writer(pg: PostgresStore) -> None:
    machine = Machine(pg)
    tid = await tenant(pg)
    wf = await machine.workflow(tid, "one", [TaskDef("t", "one:t")])
    run = await machine.run(wf)
    async with pg.write() as tx:
        await tx.load(Keys(task_ids={run.id}), ())
        # The row is locked by this transaction; reads go on other connections.
        assert [t.id for t in await pg.tasks_list(tid)] == [run.id]
        assert await pg.workflow_get_by_name(tid, "one") == Workflow(
            wf.id, tid, "one", wf.version_id, wf.tasks
        )


async def test_a_database_that_stops_answering_fails_fast_and_is_found_again() -> None:
    """A cut network (bytes held, nothing refused): reads, writes and pings give up within
    the store's timeouts with StoreError instead of hanging; once the link is back the same
    store works again, its writer connection replaced."""
    from hewer.store.postgres import COMMAND_TIMEOUT_S

    async with fresh_database() as url:
        with proxy("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])) as link:
            cut_url = url.replace(url.rsplit("@", 1)[1].split("/")[0], f"127.0.0.1:{link.port}")
            store = PostgresStore(cut_url)
            await store.open()
            try:
                tid = await tenant(store)
                link.block()
                for attempt in (store.ping(), store.tenant_get(tid), reserve_seq(store)):
                    began = time.monotonic()
                    with pytest.raises(StoreError):
                        await attempt
                    assert time.monotonic() - began <= 2 * COMMAND_TIMEOUT_S + 2
                link.unblock()
                await store.ping()
                assert (await store.tenant_get(tid)) is not None
                await reserve_seq(store)
            finally:
                link.unblock()
                await store.close()


async def reserve_seq(store: PostgresStore) -> None:
    """A write transaction that touches the database (reserves a queue position)."""
    async with store.write() as tx:
        await tx.load(Keys(), (), seqs=1)


async def test_text_postgres_cannot_hold_is_stored_with_nul_replaced() -> None:
    """PostgreSQL text and jsonb have no NUL character, which a worker may send (in a log
    line, an error, a label): it is stored as U+FFFD, never refused as a whole batch."""
    async with fresh_database() as url:
        store = PostgresStore(url)
        await store.open()
        try:
            tid = await tenant(store)
            worker = WorkerRecord(
                id=str(uuid.uuid4()),
                tenant_id=tid,
                name="w\x001",
                actions=("a:a",),
                slot_config={"default": 1},
                labels={"k\x00": "v\x00"},
                runtime_info={},
                status=WorkerStatus.ACTIVE,
                status_reason="registered\x00",
                status_changed_at=NOW,
                last_heartbeat_at=NOW,
                created_at=NOW,
            )
            async with store.write() as tx:
                tx.stage(
                    Changes(
                        new_workers=[worker],
                        logs=[(tid, LogLine("t1", NOW, "a\x00b", "INFO", 0))],
                    )
                )
            (stored,) = await store.workers_list(tid)
            assert stored.name == "w\ufffd1"
            assert stored.labels == {"k\ufffd": "v\ufffd"}
            assert stored.status_reason == "registered\ufffd"
            (line,) = await store.logs_list(LogQuery(tid, "t1", 10))
            assert line.message == "a\ufffdb"
        finally:
            await store.close()
