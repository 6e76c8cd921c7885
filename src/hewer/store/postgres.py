"""PostgreSQL store: production, and the one several engine replicas can share.

Driver: asyncpg (binary protocol, prepared statements cached per connection), chosen over
psycopg 3 by ``bench/pg_driver.py``: about half the client CPU per hot-path transaction.

One connection is the writer: write transactions take turns on it behind an asyncio lock,
as in the SQLite store, so a store never interleaves its own transactions. Other stores
(replicas) may write at the same time: the loads of a write transaction lock the rows they
return (``FOR NO KEY UPDATE``) until it commits, so no two transactions decide on the same
rows at once. Reads and rare writes use a pool of other connections and never wait for the
writer. Batched writes are one statement per table, not per row: ``COPY`` for new runs,
tasks and log lines, ``UPDATE ... FROM unnest(...)`` with one array per column otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import operator
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from hewer.domain import (
    ApiToken,
    AttemptRow,
    Changes,
    CronRecord,
    DurableLog,
    EventRecord,
    FilterRecord,
    GateClaim,
    Keys,
    LeaseState,
    LogLine,
    LogQuery,
    QueuePage,
    RateLimitRecord,
    ReplicaRecord,
    RunFilter,
    RunRow,
    ScheduleRecord,
    StickyStrategy,
    TaskRow,
    TaskStatus,
    Tenant,
    WorkerRecord,
    Workflow,
    WorkingSet,
)
from hewer.errors import AlreadyExists, LeaseLost, StoreError
from hewer.store import _queries, _rows
from hewer.store._protocol import QueuedRow, TaskClaimRow, TaskStatRow

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Conn = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    Row = asyncpg.Record | Sequence[Any]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_TASK, _RUN, _ATTEMPT, _TASK_MUTABLE = _rows.TASK, _rows.RUN, _rows.ATTEMPT, _rows.TASK_MUTABLE
_LOG = ["tenant_id", "task_id", "created_at", "level", "message", "retry_count"]

Q = _queries.load(
    "postgres",
    {
        "task": ", ".join(_TASK),
        "task_t": ", ".join(f"t.{c}" for c in _TASK),
        "run": ", ".join(_RUN),
        "run_r": ", ".join(f"r.{c}" for c in _RUN),
        "attempt": ", ".join(_ATTEMPT),
        "attempt_a": ", ".join(f"a.{c}" for c in _ATTEMPT),
        "event": ", ".join(_rows.EVENT),
        "schedule": ", ".join(_rows.SCHEDULE),
        "filter": ", ".join(_rows.FILTER),
        "cron": ", ".join(_rows.CRON),
    },
)


def _both(first: str, second: str) -> str:
    """Two data-modifying statements as one (a round trip saved): ``first`` as a CTE, the
    parameters of ``second`` numbered on from ``first``'s."""
    offset = max(int(n) for n in re.findall(r"\$(\d+)", first))
    renumbered = re.sub(r"\$(\d+)", lambda m: f"${int(m.group(1)) + offset}", second)
    return f"WITH first_update AS ({first}) {renumbered}"


# The hot path's usual write: tasks and their runs changed together.
_TASK_RUN_UPDATE = _both(Q["task_update"], Q["run_update"])

_task_values = operator.attrgetter(*_TASK)
_task_update_values = operator.attrgetter("seq", *_TASK_MUTABLE)
_run_values = operator.attrgetter(*_RUN)
_run_update_values = operator.attrgetter("id", "status", "sticky_worker_id", "finished_at")
_attempt_values = operator.attrgetter(*_ATTEMPT)
_attempt_update_values = operator.attrgetter(
    "task_id", "retry_count", "finished_at", "outcome", "holds_slot"
)
_event_values = operator.attrgetter(*_rows.EVENT)
_schedule_values = operator.attrgetter(*_rows.SCHEDULE)
_cron_values = operator.attrgetter(*_rows.CRON)
_filter_values = operator.attrgetter(*_rows.FILTER)
_idempotency_values = operator.attrgetter(
    "tenant_id", "workflow_id", "key", "run_id", "expires_at", "method"
)
_TASK_STATUS = _rows.TASK_STATUS
_N_TASK = len(_TASK)
_N_ATTEMPT = len(_ATTEMPT)
_I_STATUS = _TASK.index("status")
_I_RUN_ID = _TASK.index("run_id")
_N_TASK_RUN = len(_TASK) + len(_RUN)

# Key of the advisory lock that serializes migrations between engines opening at once.
MIGRATION_LOCK = 0x6865776572  # "hewer"
CONNECT_TIMEOUT_S = 5.0
# Longest a statement or a read may take before the store gives up on it and on its
# connection: a database that stopped answering (a cut network) must not hang the engine.
COMMAND_TIMEOUT_S = 5.0
# Migrations may wait for another engine's, or build an index on a big table.
MIGRATION_TIMEOUT_S = 3600.0
CLOSE_TIMEOUT_S = 5.0
# A writer that stops between the statements of a transaction (a paused process) holds its
# row locks, the lease's among them, until the server gives up on it after this long.
IDLE_IN_TRANSACTION_S = 5.0
# Lease statements are short and must not hang a replica's renewals behind a lock.
LEASE_TIMEOUT_S = 2.0
STATEMENT_CACHE = 256

# Every exception the driver raises for a failed or unreachable database.
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


# Failures after which a connection is given up rather than rolled back.
_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
    StoreError,
)


_ROLLBACK_FAILED: tuple[type[BaseException], ...] = (*_DRIVER_ERRORS, asyncio.CancelledError)


def _task(r: Row) -> TaskRow:
    row = TaskRow(*r[:_N_TASK])
    row.status = _TASK_STATUS[r[_I_STATUS]]
    return row


_run = _rows.run_row


def _attempt(r: Row) -> AttemptRow:
    return AttemptRow(*r[:_N_ATTEMPT])


_worker = _rows.worker_record


def _columns(rows: Iterable[Sequence[Any]]) -> list[Sequence[Any]]:
    """Rows as one sequence per column: the arrays an unnest statement takes."""
    return list(zip(*rows, strict=True))


# SQLSTATE classes that mean the server is going away or cannot work now (connection
# exceptions, operator intervention such as a shutdown, insufficient resources, system
# errors), as opposed to a refusal of one statement.
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58", "XX")


def _error(exc: BaseException) -> StoreError:
    sqlstate = getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None
    unavailable = sqlstate is None or str(sqlstate)[:2] in _UNAVAILABLE_CLASSES
    return StoreError(f"{type(exc).__name__}: {exc}", unavailable=unavailable)


def _clean(text: str | None) -> str | None:
    """Text PostgreSQL can store: it has no NUL character (SQLite does, and so may what
    a worker sends)."""
    if text is None or "\x00" not in text:
        return text
    return text.replace("\x00", "\ufffd")


def _json(value: Any) -> str:
    """JSON for a jsonb column, which refuses the escaped NUL character too."""
    text = json.dumps(value)
    return text if "\\u0000" not in text else json.dumps(_without_nul(value))


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, dict):
        return {_clean(str(k)): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(v) for v in value]
    return value


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable database url>"
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


async def _keep_session(conn: Any) -> None:
    """Pool reset: nothing to undo (no session state is ever changed), and the default
    reset query would cost a round trip on every release. Open transactions are still
    rolled back by the pool itself."""


class _Tx:
    """One write transaction (see :class:`hewer.store.StoreTx`)."""

    def __init__(self, conn: Conn, fence: str | None) -> None:
        self._conn = conn
        self._begun = False
        self._staged: list[Changes] = []
        self._fence = fence

    async def _begin(self) -> None:
        if self._begun:
            return
        if self._fence is None:
            await self._conn.execute("BEGIN")
            self._begun = True
            return
        # One round trip: the lease check shares the BEGIN's (simple query, the status of
        # its last statement comes back). Its row lock keeps a takeover waiting until this
        # transaction ends, so no decision commits after the lease changed hands.
        status = await self._conn.execute(self._fence)
        self._begun = True
        if status != "SELECT 1":
            raise LeaseLost("this engine no longer holds the scheduling lease")

    async def load(self, keys: Keys, known_versions: Collection[str], seqs: int = 0) -> WorkingSet:
        ws = WorkingSet()
        await self.load_more(ws, keys, known_versions, seqs)
        return ws

    async def load_more(
        self, ws: WorkingSet, keys: Keys, known_versions: Collection[str], seqs: int = 0
    ) -> None:
        try:
            await self._begin()
            if seqs:
                # Before any row lock: a transaction holding the counter never waits for
                # rows another holds while that one waits for the counter.
                ws.next_seq = int(await self._conn.fetchval(Q["seq_reserve"], seqs))
            await _load(self._conn, ws, keys, known_versions)
        except _DRIVER_ERRORS as exc:
            raise _error(exc) from exc

    def stage(self, changes: Changes) -> None:
        if changes:
            self._staged.append(changes)

    async def _commit(self) -> None:
        if not self._staged and not self._begun:
            return
        try:
            await self._begin()
            for changes in self._staged:
                await _write(self._conn, changes)
            status = await self._conn.execute("COMMIT")
        except _DRIVER_ERRORS as exc:
            raise _error(exc) from exc
        self._begun = False
        if status != "COMMIT":  # the server rolled an aborted transaction back instead
            raise StoreError(f"transaction was not committed ({status})")

    async def _rollback(self) -> None:
        conn = self._conn
        if conn.is_closed() or not (self._begun or conn.is_in_transaction()):
            return
        try:
            await conn.execute("ROLLBACK")
        except BaseException:
            # A connection left mid-statement (a cancelled caller) or broken: drop it; the
            # next transaction connects anew and the server rolls this one back.
            conn.terminate()
            raise


async def _load(conn: Conn, ws: WorkingSet, keys: Keys, known_versions: Collection[str]) -> None:
    tasks = ws.tasks

    def add(rows: Iterable[Row]) -> list[TaskRow]:
        out = []
        for r in rows:
            t = tasks.get(r[1])
            if t is None:
                t = tasks[r[1]] = _task(r)
            out.append(t)
        return out

    waits = [k for k in keys.event_waits if k not in ws.waiters]
    if waits:
        for k in waits:
            ws.waiters[k] = []
        for r in await conn.fetch(Q["event_waiters"], *_columns(waits)):
            ws.waiters[(r[0], r[1])].append(r[2])
            keys.task_ids.add(r[2])
    wanted = [i for i in keys.task_ids if i not in tasks]
    if wanted:
        # With their runs, in one round trip (a run already loaded keeps its working copy),
        # and whether any attempt of theirs holds a slot (only those are read below).
        runs, known = ws.runs, ws.attempts_known
        for r in await conn.fetch(Q["lock_tasks_and_runs_by_ids"], wanted):
            if r[1] not in tasks:
                tasks[r[1]] = _task(r)
            if r[_I_RUN_ID] not in runs:
                runs[r[_I_RUN_ID]] = _run(r[_N_TASK:_N_TASK_RUN])
            if not r[_N_TASK_RUN]:
                known.add(r[1])
    workers = [w for w in keys.running_on if w not in ws.running_on]
    if workers:
        for w in workers:
            ws.running_on[w] = []
        for t in add(await conn.fetch(Q["lock_tasks_running_on"], workers)):
            ws.running_on[t.worker_id or ""].append(t)
    workers = [w for w in keys.attempts_of if w not in ws.attempts_of]
    if workers:
        for w in workers:
            ws.attempts_of[w] = []
        missing: set[str] = set()
        for r in await conn.fetch(Q["lock_attempts_of_workers"], workers):
            a = _attempt(r)
            a = ws.attempts.setdefault((a.task_id, a.retry_count), a)
            ws.attempts_of[a.worker_id].append(a)
            if a.task_id not in tasks:
                missing.add(a.task_id)
        if missing:
            add(await conn.fetch(Q["lock_tasks_by_ids"], list(missing)))
    run_ids = (keys.run_ids | {t.run_id for t in tasks.values()}) - ws.runs.keys()
    if run_ids:
        for r in await conn.fetch(Q["lock_runs_by_ids"], list(run_ids)):
            run = _run(r)
            ws.runs[run.id] = run
    whole = [
        run.id
        for run in ws.runs.values()
        if run.id not in ws.run_tasks and (run.task_count > 1 or run.id in keys.run_ids)
    ]
    if whole:
        for rid in whole:
            ws.run_tasks[rid] = []
        for t in add(await conn.fetch(Q["lock_tasks_by_seqs"], _seqs(ws.runs[i] for i in whole))):
            ws.run_tasks[t.run_id].append(t)
    for t in tasks.values():
        one = ws.runs.get(t.run_id)
        if one is not None and one.task_count == 1 and one.id not in ws.run_tasks:
            ws.run_tasks[one.id] = [t]
    known = ws.attempts_known
    unchecked = [i for i in tasks if i not in known]
    if unchecked:
        for r in await conn.fetch(Q["lock_attempts_holding_of_tasks"], unchecked):
            a = _attempt(r)
            ws.attempts.setdefault((a.task_id, a.retry_count), a)
        known.update(unchecked)
    versions = {r.version_id for r in ws.runs.values()}
    versions = {v for v in versions if v not in known_versions and v not in ws.versions}
    if versions:
        for version in await _versions(conn, versions):
            ws.versions[version.version_id] = version
    await _load_triggers(conn, ws, keys)


async def _load_triggers(conn: Conn, ws: WorkingSet, keys: Keys) -> None:
    wanted = [i for i in _rows.durable_wanted(ws, keys) if i not in ws.durable]
    if wanted:
        for r in await conn.fetch(Q["lock_durable_by_ids"], wanted):
            ws.durable[r[0]] = _rows.durable_log(r)
    wanted = [i for i in keys.schedule_ids if i not in ws.schedules]
    if wanted:
        for r in await conn.fetch(Q["lock_schedules_by_ids"], wanted):
            ws.schedules[r[0]] = _rows.schedule_record(r)
    wanted = [i for i in keys.cron_ids if i not in ws.crons]
    if wanted:
        for r in await conn.fetch(Q["lock_crons_by_ids"], wanted):
            ws.crons[r[0]] = _rows.cron_record(r)
    child_keys = [k for k in keys.child_keys if k not in ws.children]
    if child_keys:
        for k in child_keys:
            ws.children[k] = None
        for r in await conn.fetch(Q["lock_child_runs"], *_columns(child_keys)):
            for k in child_keys:
                if k[1] == r[0] and k[2] == r[1]:
                    ws.children[k] = r[2]
    idem = [k for k in keys.idempotency_keys if k not in ws.idempotency]
    if idem:
        for r in await conn.fetch(Q["lock_idempotency_keys"], *_columns(idem)):
            row = _rows.idempotency_row(r)
            ws.idempotency[(row.tenant_id, row.workflow_id, row.key)] = row


def _seqs(runs: Iterable[RunRow]) -> list[int]:
    """The queue positions of the tasks of ``runs``: a run's tasks are consecutive rows."""
    return [seq for r in runs for seq in range(r.first_seq, r.first_seq + r.task_count)]


async def _versions(conn: Conn, ids: Collection[str]) -> list[Workflow]:
    return [
        Workflow.from_definition(r[0], r[1], r[2], r[3], json.loads(r[4]))
        for r in await conn.fetch(Q["workflow_versions"], list(ids))
    ]


async def _write(conn: Conn, c: Changes) -> None:
    for t in c.tasks.values():
        t.error = _clean(t.error)
    for t in c.new_tasks.values():
        t.error = _clean(t.error)
    for a in (*c.new_attempts.values(), *c.attempts.values()):
        a.error = _clean(a.error)
    if c.new_runs:
        await conn.copy_records_to_table(
            "runs", records=[_run_values(r) for r in c.new_runs.values()], columns=_RUN
        )
    if c.new_tasks:
        await conn.copy_records_to_table(
            "tasks", records=[_task_values(t) for t in c.new_tasks.values()], columns=_TASK
        )
    if c.tasks and c.runs:
        await conn.execute(
            _TASK_RUN_UPDATE,
            *_columns(map(_task_update_values, c.tasks.values())),
            *_columns(map(_run_update_values, c.runs.values())),
        )
    elif c.tasks:
        await conn.execute(Q["task_update"], *_columns(map(_task_update_values, c.tasks.values())))
    elif c.runs:
        await conn.execute(Q["run_update"], *_columns(map(_run_update_values, c.runs.values())))
    if c.new_attempts:
        await conn.execute(
            Q["attempt_insert"], *_columns(map(_attempt_values, c.new_attempts.values()))
        )
    if c.attempts:
        await conn.execute(
            Q["attempt_update"], *_columns(map(_attempt_update_values, c.attempts.values()))
        )
    if c.new_workers:
        await conn.execute(
            Q["worker_insert"],
            *_columns(
                (
                    w.id,
                    w.tenant_id,
                    _clean(w.name),
                    _json(list(w.actions)),
                    _json(w.slot_config),
                    _json(w.labels),
                    _json(w.runtime_info),
                    w.status,
                    _clean(w.status_reason),
                    w.status_changed_at,
                    w.last_heartbeat_at,
                    w.created_at,
                    w.owner_token,
                )
                for w in c.new_workers
            ),
        )
    if c.worker_status:
        await conn.execute(
            Q["worker_set_status"],
            *_columns((wid, st, reason, at) for wid, (st, reason, at) in c.worker_status.items()),
        )
    if c.heartbeats:
        await conn.execute(Q["worker_heartbeat"], *_columns(c.heartbeats.items()))
    if c.worker_labels:
        await conn.execute(
            Q["worker_set_labels"],
            *_columns((wid, _json(labels)) for wid, labels in c.worker_labels.items()),
        )
    if c.logs:
        await conn.copy_records_to_table(
            "task_logs",
            records=[
                (tenant, ln.task_id, ln.created_at, ln.level, _clean(ln.message), ln.retry_count)
                for tenant, ln in c.logs
            ],
            columns=_LOG,
        )
    if c.new_events:
        await conn.execute(Q["event_insert"], *_columns(map(_event_values, c.new_events)))
    if c.schedules_fired:
        await conn.execute(Q["schedule_fire"], *_columns(c.schedules_fired.items()))
    if c.cron_next:
        await conn.execute(Q["cron_set_next"], *_columns(c.cron_next.items()))
    if c.idempotency:
        await conn.execute(Q["idempotency_put"], *_columns(map(_idempotency_values, c.idempotency)))
    if c.waits_dropped:
        await conn.execute(Q["waits_drop"], list(c.waits_dropped))
    if c.waits_added:
        await conn.execute(Q["wait_add"], *_columns(c.waits_added))
    if c.durable:
        await conn.execute(
            Q["durable_put"],
            *_columns((d.task_id, d.tenant_id, d.evicted, d.body()) for d in c.durable.values()),
        )
    if c.wakes:
        dropped = [t for t, at in c.wakes.items() if at is None]
        if dropped:
            await conn.execute(Q["wake_drop"], dropped)
        due = [(t, at) for t, at in c.wakes.items() if at is not None]
        if due:
            await conn.execute(Q["wake_set"], *_columns(due))


async def _migrate(conn: Conn) -> None:
    async with conn.transaction():
        # The writer's statement bound does not apply to migrations (an index on a big table).
        await conn.execute("SET LOCAL statement_timeout = 0")
        # Held until this transaction ends: an engine opening at the same time waits here,
        # then finds every migration applied.
        await conn.execute(Q["migrate_lock"], MIGRATION_LOCK, timeout=MIGRATION_TIMEOUT_S)
        await conn.execute(Q["migrations_create"])
        done = {r[0] for r in await conn.fetch(Q["migrations_done"])}
        for version, name, sql in _queries.migrations("postgres"):
            if version in done:
                continue
            logger.info("applying migration %04d_%s", version, name)
            for statement in _queries.split_statements(sql):
                await conn.execute(statement, timeout=MIGRATION_TIMEOUT_S)
            await conn.execute(Q["migration_record"], version)


class PostgresStore:
    """The :class:`~hewer.store.Store` for one PostgreSQL database, given by a
    ``postgresql://`` URL. ``pool_size``: connections for reads (the writer has one of its
    own); ``connect_timeout``: how long a connection attempt may take before the store gives
    up with :class:`~hewer.errors.StoreError`."""

    def __init__(
        self, url: str, *, pool_size: int = 4, connect_timeout: float = CONNECT_TIMEOUT_S
    ) -> None:
        self._url = url
        self._pool_size = max(1, pool_size)
        self._connect_timeout = connect_timeout
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._wconn: asyncpg.Connection[asyncpg.Record] | None = None
        self._lock = asyncio.Lock()
        self._fence: str | None = None
        self._fence_check: str | None = None

    @property
    def url(self) -> str:
        """The database URL without its password."""
        return redact(self._url)

    # ------------------------------------------------------------------ plumbing

    def _connect_options(self, **server_settings: str) -> dict[str, Any]:
        return {
            "timeout": self._connect_timeout,
            "command_timeout": COMMAND_TIMEOUT_S,
            "statement_cache_size": STATEMENT_CACHE,
            "server_settings": {"application_name": "hewer", **server_settings},
        }

    async def _connect(self, **server_settings: str) -> asyncpg.Connection[asyncpg.Record]:
        # asyncpg bounds each attempt, but may try several addresses: bound the whole.
        async with asyncio.timeout(self._connect_timeout * 2):
            return await asyncpg.connect(self._url, **self._connect_options(**server_settings))

    async def _connect_writer(self) -> asyncpg.Connection[asyncpg.Record]:
        # Both bounds are the server's own: they hold while this process is paused (its
        # client-side timeouts do not), so a stopped writer cannot keep the lease row
        # locked, whether it stopped between statements or in one (a COPY).
        ms = f"{int(IDLE_IN_TRANSACTION_S * 1000)}"
        return await self._connect(idle_in_transaction_session_timeout=ms, statement_timeout=ms)

    async def open(self) -> None:
        if self._pool is not None:
            return
        conn: asyncpg.Connection[asyncpg.Record] | None = None
        try:
            conn = await self._connect_writer()
            await _migrate(conn)
            async with asyncio.timeout(self._connect_timeout * 2):
                pool = await asyncpg.create_pool(
                    self._url,
                    min_size=1,
                    max_size=self._pool_size,
                    reset=_keep_session,
                    **self._connect_options(),
                )
        except _DRIVER_ERRORS as exc:
            if conn is not None:
                conn.terminate()
            raise StoreError(f"cannot open the database {self.url}: {exc}") from exc
        except BaseException:
            if conn is not None:
                conn.terminate()
            raise
        self._wconn, self._pool = conn, pool

    async def close(self) -> None:
        pool, conn = self._pool, self._wconn
        self._pool = self._wconn = None
        if conn is not None:
            try:
                await conn.close(timeout=CLOSE_TIMEOUT_S)
            except _DRIVER_ERRORS:
                conn.terminate()
            except BaseException:
                conn.terminate()
                raise
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
            except _DRIVER_ERRORS:
                pool.terminate()

    def _readers(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    async def _writer(self) -> asyncpg.Connection[asyncpg.Record]:
        if self._pool is None:
            raise StoreError("store is not open")
        conn = self._wconn
        try:
            if conn is None or conn.is_closed():
                conn = self._wconn = await self._connect_writer()
            elif conn.is_in_transaction():
                # Left open by a write cancelled while it began: nothing of it is wanted.
                await conn.execute("ROLLBACK")
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"the database {self.url} is unreachable: {exc}") from exc
        return conn

    async def _fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        return await self._read(lambda conn: conn.fetch(Q[name], *args))

    async def _fetchrow(self, name: str, *args: Any) -> asyncpg.Record | None:
        return await self._read(lambda conn: conn.fetchrow(Q[name], *args))

    async def _read(
        self, fn: Callable[[Conn], Awaitable[T]], limit: float = COMMAND_TIMEOUT_S
    ) -> T:
        """Reads on one pool connection, bounded in time as a whole (waiting for a free
        connection included)."""
        try:
            async with asyncio.timeout(limit):
                async with self._readers().acquire() as conn:
                    return await fn(conn)
        except _DRIVER_ERRORS as exc:
            raise _error(exc) from exc

    async def _tx(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """A rare write in a transaction of its own, on a pool connection: it needs no turn
        on the writer, the database keeps it apart from concurrent ones."""
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S * 2):
                async with self._readers().acquire() as conn, conn.transaction():
                    if self._fence_check is not None:
                        # Fenced as the loop's writes are: a replica that lost the lease
                        # must not change what the next holder loaded (its rate limits).
                        status = await conn.execute(self._fence_check)
                        if status != "SELECT 1":
                            raise LeaseLost("this engine no longer holds the scheduling lease")
                    return await fn(conn)
        except _DRIVER_ERRORS as exc:
            raise _error(exc) from exc

    def _drop_writer(self) -> None:
        """Give up on the writer connection (it failed or hung); the next write connects
        anew. Terminated, not closed: a close would wait for a server that may not answer."""
        conn, self._wconn = self._wconn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def ping(self) -> None:
        async with self._lock:
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT_S):
                    conn = await self._writer()
                    await conn.fetchval("SELECT 1")
            except StoreError:
                self._drop_writer()
                raise
            except _DRIVER_ERRORS as exc:
                self._drop_writer()
                raise _error(exc) from exc

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[_Tx]:
        async with self._lock:
            tx = _Tx(await self._writer(), self._fence)
            try:
                yield tx
                await tx._commit()
            except BaseException as exc:
                if isinstance(exc, _CONNECTION_LOST):
                    # A rollback would wait on a connection that no longer answers.
                    self._drop_writer()
                    raise
                try:
                    # Shielded: a cancelled caller must not leave the transaction open.
                    async with asyncio.timeout(COMMAND_TIMEOUT_S):
                        await asyncio.shield(tx._rollback())
                except _ROLLBACK_FAILED:
                    self._drop_writer()
                raise

    # ------------------------------------------------------------------ settings

    async def meta_get_or_set(self, key: str, default: str) -> str:
        async def body(conn: Conn) -> str:
            await conn.execute(Q["meta_insert_default"], key, default)
            return str(await conn.fetchval(Q["meta_get"], key))

        return await self._tx(body)

    # ------------------------------------------------------------------ tenants and tokens

    async def tenant_ensure(self, name: str, now: float) -> Tenant:
        async def body(conn: Conn) -> Tenant:
            await conn.execute(Q["tenant_insert"], str(uuid.uuid4()), name, now)
            row = await conn.fetchrow(Q["tenant_get_by_name"], name)
            if row is None:  # only if deleted meanwhile: nothing ever deletes tenants
                raise StoreError(f"tenant {name!r} vanished")
            return Tenant(*row)

        return await self._tx(body)

    async def tenant_get(self, tenant_id: str) -> Tenant | None:
        row = await self._fetchrow("tenant_get", tenant_id)
        return Tenant(*row) if row else None

    async def token_insert(self, token: ApiToken) -> None:
        async def body(conn: Conn) -> None:
            await conn.execute(
                Q["token_insert"],
                token.id,
                token.tenant_id,
                token.name,
                token.created_at,
                token.expires_at,
            )

        await self._tx(body)

    async def token_get(self, token_id: str) -> ApiToken | None:
        row = await self._fetchrow("token_get", token_id)
        return ApiToken(*row) if row else None

    async def token_revoke(self, token_id: str, now: float) -> bool:
        async def body(conn: Conn) -> bool:
            return _rowcount(await conn.execute(Q["token_revoke"], token_id, now)) > 0

        return await self._tx(body)

    # ------------------------------------------------------------------ workflows

    async def workflow_put(self, workflow: Workflow, checksum: str, now: float) -> Workflow:
        definition = _json(workflow.definition_json())

        async def body(conn: Conn) -> Workflow:
            tenant_id, name = workflow.tenant_id, workflow.name
            await conn.execute(Q["workflow_lock"], tenant_id, name)
            current = await conn.fetchrow(Q["workflow_current"], tenant_id, name)
            if current is not None and current[2] == checksum:
                workflow_id, version_id = current[0], current[1]
            else:
                workflow_id = current[0] if current else str(uuid.uuid4())
                version_id = str(uuid.uuid4())
                await conn.execute(
                    Q["workflow_version_insert"],
                    version_id,
                    workflow_id,
                    tenant_id,
                    name,
                    definition,
                    checksum,
                    now,
                )
                if current is None:
                    await conn.execute(
                        Q["workflow_insert"], workflow_id, tenant_id, name, version_id, now
                    )
                else:
                    await conn.execute(Q["workflow_set_version"], workflow_id, version_id, now)
            return dataclasses.replace(workflow, id=workflow_id, version_id=version_id)

        return await self._tx(body)

    async def workflows_current(self, tenant_id: str) -> list[Workflow]:
        rows = await self._fetch("workflows_current", tenant_id)
        return [Workflow.from_definition(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    async def workflow_get_by_name(self, tenant_id: str, name: str) -> Workflow | None:
        r = await self._fetchrow("workflow_get_by_name", tenant_id, name)
        return Workflow.from_definition(r[0], r[1], r[2], r[3], json.loads(r[4])) if r else None

    async def workflow_versions(self, version_ids: Collection[str]) -> list[Workflow]:
        return await self._read(lambda conn: _versions(conn, version_ids))

    # ------------------------------------------------------------------ runs and tasks

    async def run_get(self, tenant_id: str, run_id: str) -> tuple[RunRow, list[TaskRow]] | None:
        async def body(conn: Conn) -> tuple[RunRow, list[TaskRow]] | None:
            r = await conn.fetchrow(Q["run_get"], tenant_id, run_id)
            if r is None:
                return None
            run = _run(r)
            end = run.first_seq + run.task_count
            return run, [
                _task(t) for t in await conn.fetch(Q["tasks_in_range"], run.first_seq, end)
            ]

        return await self._read(body)

    async def runs_get(
        self, tenant_id: str, run_ids: Collection[str]
    ) -> list[tuple[RunRow, list[TaskRow]]]:
        async def body(conn: Conn) -> list[tuple[RunRow, list[TaskRow]]]:
            rows = await conn.fetch(Q["runs_get"], tenant_id, list(run_ids))
            runs: dict[str, tuple[RunRow, list[TaskRow]]] = {r.id: (r, []) for r in map(_run, rows)}
            if runs:
                seqs = _seqs(run for run, _ in runs.values())
                for t in await conn.fetch(Q["tasks_by_seqs"], seqs):
                    runs[t[3]][1].append(_task(t))
            return list(runs.values())

        return await self._read(body)

    async def runs_find(self, tenant_id: str, match: RunFilter) -> list[str]:
        args = (
            tenant_id,
            match.since,
            match.until,
            sorted({str(st) for st in match.statuses}) or None,
            list(match.workflows) or None,
        )
        if not match.additional_metadata:
            return [r[0] for r in await self._fetch("runs_in_window", *args, match.limit)]

        async def body(conn: Conn) -> list[str]:
            # Metadata is matched in Python (on str() of each value, as SQLite does): scan
            # the candidates with a cursor and stop at the limit.
            found: list[str] = []
            async with conn.transaction():
                async for run_id, meta_text in conn.cursor(Q["runs_in_window"], *args, None):
                    if not _rows.metadata_matches(meta_text, match.additional_metadata):
                        continue
                    found.append(run_id)
                    if len(found) >= match.limit:
                        break
            return found

        return await self._read(body)

    async def task_run_id(self, tenant_id: str, task_id: str) -> str | None:
        row = await self._fetchrow("task_run_id", tenant_id, task_id)
        return str(row[0]) if row else None

    async def task_stats(self, tenant_id: str, names: Collection[str] | None) -> list[TaskStatRow]:
        rows = await self._fetch("task_stats", tenant_id, _text_list(names))
        return [TaskStatRow(r[0], r[1], r[2], int(r[3]), float(r[4]), r[5]) for r in rows]

    async def task_stat_claims(
        self, tenant_id: str, names: Collection[str] | None
    ) -> list[TaskClaimRow]:
        rows = await self._fetch("task_stat_claims", tenant_id, _text_list(names))
        return [TaskClaimRow(r[0], r[1], r[2], r[3]) for r in rows]

    async def task_status_counts(
        self,
        tenant_id: str,
        since: float | None,
        until: float | None,
        workflows: Collection[str],
    ) -> dict[str, int]:
        rows = await self._fetch(
            "task_status_counts", tenant_id, since, until, _text_list(workflows or None)
        )
        return {str(r[0]): int(r[1]) for r in rows}

    async def queue_depths(self) -> list[tuple[str, str, str, int]]:
        return [(r[0], r[1], r[2], int(r[3])) for r in await self._fetch("queue_depths")]

    async def queue_keys(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in await self._fetch("queue_keys")]

    async def tasks_queued_page(self, page: QueuePage) -> list[QueuedRow]:
        if page.after is None:
            rows = await self._fetch(
                "tasks_queued_head", page.tenant_id, page.action_id, page.limit
            )
        else:
            priority, seq = page.after
            rows = await self._fetch(
                "tasks_queued_page", page.tenant_id, page.action_id, priority, seq, page.limit
            )
        out = []
        for r in rows:
            sticky = r[_N_TASK + 1]
            out.append(
                QueuedRow(
                    _task(r),
                    r[_N_TASK],
                    StickyStrategy(sticky) if sticky else None,
                    r[_N_TASK + 2],
                    r[_N_TASK + 3],
                )
            )
        return out

    async def tasks_running(self) -> list[tuple[TaskRow, str]]:
        return [(_task(r), r[_N_TASK]) for r in await self._fetch("tasks_running")]

    async def attempts_holding(self) -> list[tuple[AttemptRow, TaskRow, str]]:
        return [
            (_attempt(r), _task(r[_N_ATTEMPT:]), r[_N_ATTEMPT + _N_TASK])
            for r in await self._fetch("attempts_holding")
        ]

    async def attempts_list(self, tenant_id: str | None = None) -> list[AttemptRow]:
        return [_attempt(r) for r in await self._fetch("attempts_list", tenant_id)]

    async def tasks_list(self, tenant_id: str | None = None) -> list[TaskRow]:
        return [_task(r) for r in await self._fetch("tasks_list", tenant_id)]

    async def runs_list(self, tenant_id: str | None = None) -> list[RunRow]:
        return [_run(r) for r in await self._fetch("runs_list", tenant_id)]

    async def tasks_timed_out(self, now: float, limit: int) -> list[TaskRow]:
        return [_task(r) for r in await self._fetch("tasks_timed_out", now, limit)]

    async def tasks_unacked(self, cutoff: float, limit: int) -> list[TaskRow]:
        return [_task(r) for r in await self._fetch("tasks_unacked", cutoff, limit)]

    async def tasks_schedule_expired(self, now: float, limit: int) -> list[TaskRow]:
        return [_task(r) for r in await self._fetch("tasks_schedule_expired", now, limit)]

    async def gates_held(self) -> list[GateClaim]:
        held: list[GateClaim] = []
        for status, claims in await self._fetch("gates_held"):
            for data in json.loads(claims).get("gates", ()):
                claim = GateClaim.from_json(data)
                if claim.per_run or status == TaskStatus.RUNNING:
                    held.append(claim)
        return held

    # ------------------------------------------------------------------ rate limits

    async def rate_limit_put(self, record: RateLimitRecord, now: float) -> None:
        async def body(conn: Conn) -> None:
            await conn.execute(
                Q["rate_limit_put"],
                record.tenant_id,
                record.key,
                record.limit,
                record.duration_s,
                now,
            )

        await self._tx(body)

    async def rate_limits_list(self) -> list[RateLimitRecord]:
        return [RateLimitRecord(*r) for r in await self._fetch("rate_limits_list")]

    # ------------------------------------------------------------------ workers

    async def worker_get(self, tenant_id: str, worker_id: str) -> WorkerRecord | None:
        row = await self._fetchrow("worker_get", worker_id, tenant_id)
        return _worker(row) if row else None

    async def workers_list(self, tenant_id: str | None = None) -> list[WorkerRecord]:
        return [_worker(r) for r in await self._fetch("workers_list", tenant_id)]

    # ------------------------------------------------------------------ logs

    async def logs_list(self, query: LogQuery) -> list[LogLine]:
        rows = await self._fetch("logs_list", query.tenant_id, query.task_id, query.limit)
        return [LogLine(*r) for r in rows]

    # ------------------------------------------------------------------ events, schedules, crons

    async def _change(self, name: str, *args: Any) -> int:
        async def body(conn: Conn) -> int:
            return _rowcount(await conn.execute(Q[name], *args))

        return await self._tx(body)

    async def tasks_wake_due(self, now: float, limit: int) -> list[TaskRow]:
        return [_task(r) for r in await self._fetch("tasks_wake_due", now, limit)]

    async def durable_get(self, tenant_id: str, task_id: str) -> DurableLog | None:
        r = await self._fetchrow("durable_get", tenant_id, task_id)
        return None if r is None else _rows.durable_log(r)

    async def durable_evicted(self, limit: int) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in await self._fetch("durable_evicted", limit)]

    async def runs_children(self, tenant_id: str, parent_task_ids: Collection[str]) -> list[str]:
        rows = await self._fetch("runs_children", tenant_id, list(parent_task_ids))
        return [r[0] for r in rows]

    async def filters_of(self, tenant_id: str, workflow_ids: Collection[str]) -> list[FilterRecord]:
        rows = await self._fetch("filters_of_workflows", tenant_id, list(workflow_ids))
        return [_rows.filter_record(r) for r in rows]

    async def filters_list(
        self,
        tenant_id: str,
        workflow_ids: Collection[str] | None,
        scopes: Collection[str] | None,
        limit: int,
        offset: int,
    ) -> list[FilterRecord]:
        rows = await self._fetch(
            "filters_list", tenant_id, _text_list(workflow_ids), _text_list(scopes), limit, offset
        )
        return [_rows.filter_record(r) for r in rows]

    async def filter_get(self, tenant_id: str, filter_id: str) -> FilterRecord | None:
        r = await self._fetchrow("filter_get", tenant_id, filter_id)
        return _rows.filter_record(r) if r else None

    async def filter_put(self, record: FilterRecord) -> None:
        async def body(conn: Conn) -> None:
            status = await conn.execute(
                Q["filter_update"],
                record.scope,
                record.expression,
                record.payload,
                record.updated_at,
                record.tenant_id,
                record.id,
            )
            if not _rowcount(status):
                await conn.execute(Q["filter_insert"], *_filter_values(record))

        await self._tx(body)

    async def filter_delete(self, tenant_id: str, filter_id: str) -> bool:
        return await self._change("filter_delete", tenant_id, filter_id) > 0

    async def filters_declare(
        self, tenant_id: str, workflow_id: str, records: Sequence[FilterRecord]
    ) -> None:
        async def body(conn: Conn) -> None:
            await conn.execute(Q["filters_undeclare"], tenant_id, workflow_id)
            if records:
                await conn.executemany(Q["filter_insert"], [_filter_values(r) for r in records])

        await self._tx(body)

    async def events_list(
        self, tenant_id: str, keys: Collection[str] | None, limit: int, offset: int
    ) -> list[EventRecord]:
        rows = await self._fetch("events_list", tenant_id, _text_list(keys), limit, offset)
        return [_rows.event_record(r) for r in rows]

    async def event_get(self, tenant_id: str, event_id: str) -> EventRecord | None:
        r = await self._fetchrow("event_get", tenant_id, event_id)
        return _rows.event_record(r) if r else None

    async def schedule_insert(self, records: Sequence[ScheduleRecord]) -> None:
        async def body(conn: Conn) -> None:
            await conn.executemany(Q["schedule_insert"], [_schedule_values(r) for r in records])

        await self._tx(body)

    async def schedules_due(self, now: float, limit: int) -> list[ScheduleRecord]:
        return [_rows.schedule_record(r) for r in await self._fetch("schedules_due", now, limit)]

    async def schedule_next(self) -> float | None:
        r = await self._fetchrow("schedule_next")
        return None if r is None else r[0]

    async def schedules_list(
        self, tenant_id: str, workflow_name: str | None, limit: int, offset: int
    ) -> list[ScheduleRecord]:
        rows = await self._fetch("schedules_list", tenant_id, workflow_name, limit, offset)
        return [_rows.schedule_record(r) for r in rows]

    async def schedule_get(self, tenant_id: str, schedule_id: str) -> ScheduleRecord | None:
        r = await self._fetchrow("schedule_get", tenant_id, schedule_id)
        return _rows.schedule_record(r) if r else None

    async def schedule_delete(self, tenant_id: str, schedule_id: str) -> bool:
        return await self._change("schedule_delete", tenant_id, schedule_id) > 0

    async def schedule_move(self, tenant_id: str, schedule_id: str, trigger_at: float) -> bool:
        return await self._change("schedule_move", tenant_id, schedule_id, trigger_at) > 0

    async def cron_insert(self, record: CronRecord) -> None:
        async def body(conn: Conn) -> None:
            try:
                await conn.execute(Q["cron_insert"], *_cron_values(record))
            except asyncpg.UniqueViolationError:
                raise AlreadyExists(
                    f"workflow {record.workflow_name!r} has a cron named {record.name!r}"
                ) from None

        await self._tx(body)

    async def crons_declare(
        self, tenant_id: str, workflow_name: str, records: Sequence[CronRecord]
    ) -> None:
        async def body(conn: Conn) -> None:
            names = [r.name for r in records]
            await conn.execute(Q["crons_undeclare"], tenant_id, workflow_name, names)
            if records:
                await conn.executemany(
                    Q["cron_insert_declared"], [_cron_values(r) for r in records]
                )

        await self._tx(body)

    async def crons_due(self, now: float, limit: int) -> list[CronRecord]:
        return [_rows.cron_record(r) for r in await self._fetch("crons_due", now, limit)]

    async def cron_next(self) -> float | None:
        r = await self._fetchrow("cron_next")
        return None if r is None else r[0]

    async def crons_list(
        self,
        tenant_id: str,
        workflow_name: str | None,
        limit: int,
        offset: int,
        name: str | None = None,
    ) -> list[CronRecord]:
        rows = await self._fetch("crons_list", tenant_id, workflow_name, limit, offset, name)
        return [_rows.cron_record(r) for r in rows]

    async def cron_get(self, tenant_id: str, cron_id: str) -> CronRecord | None:
        r = await self._fetchrow("cron_get", tenant_id, cron_id)
        return _rows.cron_record(r) if r else None

    async def cron_delete(self, tenant_id: str, cron_id: str) -> bool:
        return await self._change("cron_delete", tenant_id, cron_id) > 0

    # ------------------------------------------------------------------ replicas

    def fence(self, lease: str, token: int) -> None:
        name = lease.replace("'", "''")
        self._fence_check = (
            f"SELECT 1 FROM engine_leases WHERE name = '{name}' AND token = {int(token)} FOR SHARE"
        )
        self._fence = f"BEGIN; {self._fence_check}"

    async def _lease_statement(self, name: str, *args: Any) -> Any:
        return await self._read(lambda conn: conn.fetchval(Q[name], *args), LEASE_TIMEOUT_S)

    async def lease_claim(
        self, lease: str, holder: str, grpc_address: str, api_address: str, ttl_s: float
    ) -> int | None:
        token = await self._lease_statement(
            "lease_claim", lease, holder, grpc_address, api_address, float(ttl_s)
        )
        return None if token is None else int(token)

    async def lease_renew(self, lease: str, token: int, ttl_s: float) -> bool:
        return await self._lease_statement("lease_renew", lease, token, float(ttl_s)) is not None

    async def lease_release(self, lease: str, token: int) -> None:
        await self._read(
            lambda conn: conn.execute(Q["lease_release"], lease, token), LEASE_TIMEOUT_S
        )

    async def lease_get(self, lease: str) -> LeaseState | None:
        r = await self._read(lambda conn: conn.fetchrow(Q["lease_get"], lease), LEASE_TIMEOUT_S)
        if r is None:
            return None
        return LeaseState(r[0], int(r[1]), r[2], r[3], bool(r[4]), float(r[5]))

    async def replica_seen(
        self, replica_id: str, grpc_address: str, api_address: str, scheduling: bool, fresh: bool
    ) -> None:
        await self._read(
            lambda conn: conn.execute(
                Q["replica_seen"], replica_id, grpc_address, api_address, scheduling, fresh
            ),
            LEASE_TIMEOUT_S,
        )

    async def replica_gone(self, replica_id: str) -> None:
        await self._read(lambda conn: conn.execute(Q["replica_gone"], replica_id), LEASE_TIMEOUT_S)

    async def replicas_list(self) -> list[ReplicaRecord]:
        rows = await self._read(lambda conn: conn.fetch(Q["replicas_list"]), LEASE_TIMEOUT_S)
        return [ReplicaRecord(r[0], r[1], r[2], bool(r[3]), float(r[4]), float(r[5])) for r in rows]


def _rowcount(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3``."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _text_list(values: Collection[str] | None) -> list[str] | None:
    return None if values is None else list(values)
