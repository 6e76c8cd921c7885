"""SQLite store: the embedded default.

Two connections, each used only from a thread of its own: the writer (every transaction
serialized behind an asyncio lock, so no two ever interleave on it) and a reader for
everything else, which in WAL mode sees each commit as soon as it is made and never waits
for the writer. ``synchronous=FULL``: a commit that returned is on disk, which is what
"acknowledged after commit" relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import operator
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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
    LogLine,
    LogQuery,
    QueuePage,
    RateLimitRecord,
    RunFilter,
    RunRow,
    RunStatus,
    ScheduleRecord,
    StickyStrategy,
    TaskRow,
    TaskStatus,
    Tenant,
    WorkerRecord,
    Workflow,
    WorkingSet,
)
from hewer.errors import AlreadyExists, StoreError
from hewer.store import _queries, _rows
from hewer.store._protocol import QueuedRow, TaskClaimRow, TaskStatRow

logger = logging.getLogger(__name__)

T = TypeVar("T")

_TASK, _RUN, _ATTEMPT, _TASK_MUTABLE = _rows.TASK, _rows.RUN, _rows.ATTEMPT, _rows.TASK_MUTABLE

Q = _queries.load(
    "sqlite",
    {
        "task": ", ".join(_TASK),
        "task_t": ", ".join(f"t.{c}" for c in _TASK),
        "task_params": ", ".join("?" for _ in _TASK),
        "run": ", ".join(_RUN),
        "run_params": ", ".join("?" for _ in _RUN),
        "attempt": ", ".join(_ATTEMPT),
        "attempt_a": ", ".join(f"a.{c}" for c in _ATTEMPT),
        "attempt_params": ", ".join("?" for _ in _ATTEMPT),
        "event": ", ".join(_rows.EVENT),
        "event_params": ", ".join("?" for _ in _rows.EVENT),
        "schedule": ", ".join(_rows.SCHEDULE),
        "schedule_params": ", ".join("?" for _ in _rows.SCHEDULE),
        "filter": ", ".join(_rows.FILTER),
        "filter_params": ", ".join("?" for _ in _rows.FILTER),
        "cron": ", ".join(_rows.CRON),
        "cron_params": ", ".join("?" for _ in _rows.CRON),
    },
)

_task_values = operator.attrgetter(*_TASK)
_task_update_values = operator.attrgetter(*_TASK_MUTABLE, "seq")
_run_values = operator.attrgetter(*_RUN)
_attempt_values = operator.attrgetter(*_ATTEMPT)
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
# Positions in a task row: status, acked, slot_released.
_I_STATUS, _I_ACKED = _TASK.index("status"), _TASK.index("acked")
_I_RELEASED = _TASK.index("slot_released")


def _task(r: Sequence[Any]) -> TaskRow:
    row = TaskRow(*r[:_N_TASK])
    row.status = _TASK_STATUS[r[_I_STATUS]]
    row.acked = bool(r[_I_ACKED])
    row.slot_released = bool(r[_I_RELEASED])
    return row


_run = _rows.run_row


def _attempt(r: Sequence[Any]) -> AttemptRow:
    row = AttemptRow(*r[:_N_ATTEMPT])
    row.holds_slot = bool(row.holds_slot)
    return row


def _ids(values: Iterable[str]) -> str:
    return json.dumps(list(values))


BUSY_TIMEOUT_MS = 10_000
# Transactions writing at most this many rows commit on the loop's thread (see write()).
INLINE_COMMIT_ROWS = 256
MAX_PLACEHOLDERS = 64
_JSON_IDS = "(SELECT value FROM json_each(:ids))"
_IN_CACHE: dict[tuple[str, int], str] = {}


class _Tx:
    """One write transaction (see :class:`hewer.store.StoreTx`)."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self._begun = False
        self._next_seq: int | None = None
        self._staged: list[Changes] = []

    def _begin(self, conn: sqlite3.Connection) -> None:
        if not self._begun:
            _begin_waiting(conn)
            self._begun = True

    async def _ensure_begun(self, conn: sqlite3.Connection) -> None:
        """BEGIN on the loop's thread if the write lock is free (the usual case), else
        wait for it on the writer's thread."""
        if self._begun:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            await self._store._writer_call(self._begin)
        else:
            self._begun = True

    async def load(self, keys: Keys, known_versions: Collection[str], seqs: int = 0) -> WorkingSet:
        ws = WorkingSet()
        await self.load_more(ws, keys, known_versions, seqs)
        return ws

    async def load_more(
        self, ws: WorkingSet, keys: Keys, known_versions: Collection[str], seqs: int = 0
    ) -> None:
        # Loads run on the loop's thread: they are short, never wait for a lock once the
        # transaction holds it, and a hop to the writer's thread would cost more than they
        # do. Only waiting for the lock and the commit (fsync) go to that thread.
        conn = self._store._writer_conn()
        try:
            await self._ensure_begun(conn)
            _load(conn, ws, keys, known_versions)
            if seqs:
                if self._next_seq is None:
                    self._next_seq = int(conn.execute(Q["max_seq"]).fetchone()[0]) + 1
                ws.next_seq = self._next_seq
                self._next_seq += seqs
        except sqlite3.Error as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    def stage(self, changes: Changes) -> None:
        if changes:
            self._staged.append(changes)

    def rows(self) -> int:
        """How many rows the staged changes write."""
        n = 0
        for c in self._staged:
            n += len(c.new_runs) + len(c.new_tasks) + len(c.tasks) + len(c.runs)
            n += len(c.new_attempts) + len(c.attempts) + len(c.new_workers) + len(c.logs)
            n += len(c.worker_status) + len(c.heartbeats) + len(c.worker_labels)
            n += len(c.new_events) + len(c.schedules_fired) + len(c.cron_next)
            n += len(c.idempotency) + len(c.waits_added) + len(c.waits_dropped) + len(c.wakes)
        return n

    def _commit(self, conn: sqlite3.Connection) -> None:
        if not self._staged and not self._begun:
            return
        self._begin(conn)
        for changes in self._staged:
            _write(conn, changes)
        conn.execute("COMMIT")

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _begin_waiting(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, waiting up to the busy timeout for another writer (the connection
    itself never waits: it is also used from the loop's thread)."""
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    try:
        conn.execute("BEGIN IMMEDIATE")
    finally:
        conn.execute("PRAGMA busy_timeout=0")


def _in(name: str, n: int) -> str:
    """A query taking ``:ids`` (a JSON array), as one with ``n`` positional placeholders:
    cheaper for the short lists of the hot path."""
    key = (name, n)
    text = _IN_CACHE.get(key)
    if text is None:
        text = Q[name].replace(_JSON_IDS, "(" + ",".join("?" * n) + ")")
        if len(_IN_CACHE) < 4096:
            _IN_CACHE[key] = text
    return text


def _select(conn: sqlite3.Connection, name: str, ids: Collection[str]) -> sqlite3.Cursor:
    if len(ids) <= MAX_PLACEHOLDERS:
        return conn.execute(_in(name, len(ids)), tuple(ids))
    return conn.execute(Q[name], {"ids": _ids(ids)})


def _load(
    conn: sqlite3.Connection, ws: WorkingSet, keys: Keys, known_versions: Collection[str]
) -> None:
    tasks = ws.tasks

    def add(rows: Iterable[Sequence[Any]]) -> list[TaskRow]:
        out = []
        for r in rows:
            t = tasks.get(r[1])
            if t is None:
                t = tasks[r[1]] = _task(r)
            out.append(t)
        return out

    for tenant_id, key in keys.event_waits:
        if (tenant_id, key) not in ws.waiters:
            ids = [
                r[0] for r in conn.execute(Q["event_waiters"], {"tenant_id": tenant_id, "key": key})
            ]
            ws.waiters[(tenant_id, key)] = ids
            keys.task_ids.update(ids)
    wanted = [i for i in keys.task_ids if i not in tasks]
    if wanted:
        add(_select(conn, "tasks_by_ids", wanted))
    workers = [w for w in keys.running_on if w not in ws.running_on]
    if workers:
        for w in workers:
            ws.running_on[w] = []
        for t in add(_select(conn, "tasks_running_on", workers)):
            ws.running_on[t.worker_id or ""].append(t)
    workers = [w for w in keys.attempts_of if w not in ws.attempts_of]
    if workers:
        for w in workers:
            ws.attempts_of[w] = []
        missing: set[str] = set()
        for r in _select(conn, "attempts_of_workers", workers):
            a = _attempt(r)
            a = ws.attempts.setdefault((a.task_id, a.retry_count), a)
            ws.attempts_of[a.worker_id].append(a)
            if a.task_id not in tasks:
                missing.add(a.task_id)
        if missing:
            add(_select(conn, "tasks_by_ids", missing))
    run_ids = (keys.run_ids | {t.run_id for t in tasks.values()}) - ws.runs.keys()
    if run_ids:
        for r in _select(conn, "runs_by_ids", run_ids):
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
        for t in add(_select(conn, "tasks_by_runs", whole)):
            ws.run_tasks[t.run_id].append(t)
    for t in tasks.values():
        one = ws.runs.get(t.run_id)
        if one is not None and one.task_count == 1 and one.id not in ws.run_tasks:
            ws.run_tasks[one.id] = [t]
    known = ws.attempts_known
    unchecked = [i for i in tasks if i not in known]
    if unchecked:
        for r in _select(conn, "attempts_holding_of_tasks", unchecked):
            a = _attempt(r)
            ws.attempts.setdefault((a.task_id, a.retry_count), a)
        known.update(unchecked)
    versions = {r.version_id for r in ws.runs.values()}
    versions = {v for v in versions if v not in known_versions and v not in ws.versions}
    if versions:
        for version in _versions(conn, versions):
            ws.versions[version.version_id] = version
    _load_triggers(conn, ws, keys)


def _load_triggers(conn: sqlite3.Connection, ws: WorkingSet, keys: Keys) -> None:
    wanted = [i for i in _rows.durable_wanted(ws, keys) if i not in ws.durable]
    if wanted:
        for r in conn.execute(Q["durable_by_ids"], {"ids": _ids(wanted)}):
            ws.durable[r[0]] = _rows.durable_log(r)
    wanted = [i for i in keys.schedule_ids if i not in ws.schedules]
    if wanted:
        for r in conn.execute(Q["schedules_by_ids"], {"ids": _ids(wanted)}):
            ws.schedules[r[0]] = _rows.schedule_record(r)
    wanted = [i for i in keys.cron_ids if i not in ws.crons]
    if wanted:
        for r in conn.execute(Q["crons_by_ids"], {"ids": _ids(wanted)}):
            ws.crons[r[0]] = _rows.cron_record(r)
    for key in keys.child_keys:
        if key not in ws.children:
            tenant_id, parent, child_key = key
            found = conn.execute(
                Q["child_run"], {"tenant_id": tenant_id, "parent": parent, "key": child_key}
            ).fetchone()
            ws.children[key] = found[0] if found else None
    for key in keys.idempotency_keys:
        if key not in ws.idempotency:
            tenant_id, workflow_id, idem_key = key
            row = conn.execute(
                Q["idempotency_key"],
                {"tenant_id": tenant_id, "workflow_id": workflow_id, "key": idem_key},
            ).fetchone()
            if row is not None:
                ws.idempotency[key] = _rows.idempotency_row(row)


def _versions(conn: sqlite3.Connection, ids: Collection[str]) -> list[Workflow]:
    return [
        Workflow.from_definition(r[0], r[1], r[2], r[3], json.loads(r[4]))
        for r in conn.execute(Q["workflow_versions"], {"ids": _ids(ids)})
    ]


def _write(conn: sqlite3.Connection, c: Changes) -> None:
    if c.new_runs:
        conn.executemany(Q["run_insert"], [_run_values(r) for r in c.new_runs.values()])
    if c.new_tasks:
        conn.executemany(Q["task_insert"], [_task_values(t) for t in c.new_tasks.values()])
    if c.tasks:
        conn.executemany(Q["task_update"], [_task_update_values(t) for t in c.tasks.values()])
    if c.runs:
        conn.executemany(
            Q["run_update"],
            [(r.status, r.sticky_worker_id, r.finished_at, r.id) for r in c.runs.values()],
        )
    if c.new_attempts:
        conn.executemany(Q["attempt_insert"], [_attempt_values(a) for a in c.new_attempts.values()])
    if c.attempts:
        conn.executemany(
            Q["attempt_update"],
            [
                (a.finished_at, a.outcome, a.holds_slot, a.task_id, a.retry_count)
                for a in c.attempts.values()
            ],
        )
    if c.new_workers:
        conn.executemany(
            Q["worker_insert"],
            [
                (
                    w.id,
                    w.tenant_id,
                    w.name,
                    json.dumps(list(w.actions)),
                    json.dumps(w.slot_config),
                    json.dumps(w.labels),
                    json.dumps(w.runtime_info),
                    w.status,
                    w.status_reason,
                    w.status_changed_at,
                    w.last_heartbeat_at,
                    w.created_at,
                    w.owner_token,
                )
                for w in c.new_workers
            ],
        )
    if c.worker_status:
        conn.executemany(
            Q["worker_set_status"],
            [(st, reason, at, wid, st) for wid, (st, reason, at) in c.worker_status.items()],
        )
    if c.heartbeats:
        conn.executemany(Q["worker_heartbeat"], [(at, wid) for wid, at in c.heartbeats.items()])
    if c.worker_labels:
        conn.executemany(
            Q["worker_set_labels"],
            [(json.dumps(labels), wid) for wid, labels in c.worker_labels.items()],
        )
    if c.logs:
        conn.executemany(
            Q["log_insert"],
            [
                (tenant, ln.task_id, ln.created_at, ln.level, ln.message, ln.retry_count)
                for tenant, ln in c.logs
            ],
        )
    if c.new_events:
        conn.executemany(Q["event_insert"], [_event_values(e) for e in c.new_events])
    if c.schedules_fired:
        conn.executemany(
            Q["schedule_fire"], [(run_id, sid) for sid, run_id in c.schedules_fired.items()]
        )
    if c.cron_next:
        conn.executemany(Q["cron_set_next"], [(at, cid) for cid, at in c.cron_next.items()])
    if c.idempotency:
        conn.executemany(Q["idempotency_put"], [_idempotency_values(k) for k in c.idempotency])
    if c.waits_dropped:
        conn.executemany(Q["waits_drop"], [(t,) for t in c.waits_dropped])
    if c.waits_added:
        conn.executemany(Q["wait_add"], c.waits_added)
    if c.durable:
        conn.executemany(
            Q["durable_put"],
            [(d.task_id, d.tenant_id, d.evicted, d.body()) for d in c.durable.values()],
        )
    if c.wakes:
        conn.executemany(Q["wake_drop"], [(t,) for t, at in c.wakes.items() if at is None])
        conn.executemany(Q["wake_set"], [(t, at) for t, at in c.wakes.items() if at is not None])


class SqliteStore:
    """The :class:`~hewer.store.Store` for one SQLite file (or ``:memory:``, for tests:
    then reads share the writer's connection)."""

    def __init__(self, path: Path | str) -> None:
        self._path = str(path)
        self._writer: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def path(self) -> str:
        return self._path

    # ------------------------------------------------------------------ plumbing

    async def open(self) -> None:
        if self._writer is not None:
            return
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hewer-sqlite-w")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hewer-sqlite-r")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._open_writer)
            await loop.run_in_executor(self._reader, self._open_reader)
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"cannot open the database {self._path}: {exc}") from exc
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        for pool, attr in ((self._reader, "_rconn"), (self._writer, "_wconn")):
            if pool is None:
                continue
            conn = getattr(self, attr)
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(pool, conn.close)
                setattr(self, attr, None)
            pool.shutdown(wait=True)
        self._reader = self._writer = None

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the database {self._path}: {exc}") from exc
        return conn

    def _open_writer(self) -> None:
        if self._path != ":memory:":
            try:
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the directory of the database {self._path}: "
                    f"{exc.strerror or exc}"
                ) from exc
            for path in (self._path, f"{self._path}-wal", f"{self._path}-shm"):
                if path == self._path or Path(path).exists():
                    _private(Path(path))
        conn = self._connect()
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        self._wconn = conn
        _migrate(conn)
        # From now on it waits for a lock only where it asks to (see _begin_waiting).
        conn.execute("PRAGMA busy_timeout=0")

    def _open_reader(self) -> None:
        if self._path == ":memory:":
            self._rconn = self._wconn
            return
        conn = self._connect()
        conn.execute("PRAGMA query_only=1")
        self._rconn = conn

    async def _call(
        self,
        pool: ThreadPoolExecutor | None,
        conn_of: Callable[[], sqlite3.Connection | None],
        fn: Callable[[sqlite3.Connection], T],
    ) -> T:
        if pool is None:
            raise StoreError("store is not open")

        def body() -> T:
            conn = conn_of()
            if conn is None:
                raise StoreError("store is not open")
            return fn(conn)

        try:
            return await asyncio.get_running_loop().run_in_executor(pool, body)
        except sqlite3.Error as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    def _writer_conn(self) -> sqlite3.Connection:
        if self._wconn is None:
            raise StoreError("store is not open")
        return self._wconn

    async def _writer_call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._call(self._writer, lambda: self._wconn, fn)

    async def _reader_call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._path == ":memory:":
            return await self._writer_call(fn)
        return await self._call(self._reader, lambda: self._rconn, fn)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[_Tx]:
        async with self._lock:
            tx = _Tx(self)
            try:
                yield tx
                if tx.rows() <= INLINE_COMMIT_ROWS and tx._begun:
                    # A small commit runs on the loop's thread: its fsync blocks the loop
                    # for a fraction of a millisecond, while a hop to the writer's thread
                    # waits for the GIL behind a busy loop, often for milliseconds.
                    try:
                        tx._commit(self._writer_conn())
                    except sqlite3.Error as exc:
                        raise StoreError(f"{type(exc).__name__}: {exc}") from exc
                else:
                    await self._writer_call(tx._commit)
            except BaseException:
                with contextlib.suppress(StoreError):
                    # Shielded: a cancelled caller must not leave the transaction open.
                    await asyncio.shield(self._writer_call(tx._rollback))
                raise

    async def ping(self) -> None:
        async with self._lock:
            await self._writer_call(lambda conn: conn.execute("SELECT 1").fetchone())

    async def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A rare write in a transaction of its own."""

        def body(conn: sqlite3.Connection) -> T:
            _begin_waiting(conn)
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        async with self._lock:
            return await self._writer_call(body)

    # ------------------------------------------------------------------ settings

    async def meta_get_or_set(self, key: str, default: str) -> str:
        def body(conn: sqlite3.Connection) -> str:
            conn.execute(Q["meta_insert_default"], {"key": key, "value": default})
            return str(conn.execute(Q["meta_get"], {"key": key}).fetchone()[0])

        return await self._tx(body)

    # ------------------------------------------------------------------ tenants and tokens

    async def tenant_ensure(self, name: str, now: float) -> Tenant:
        def body(conn: sqlite3.Connection) -> Tenant:
            conn.execute(
                Q["tenant_insert"], {"id": str(uuid.uuid4()), "name": name, "created_at": now}
            )
            return Tenant(*conn.execute(Q["tenant_get_by_name"], {"name": name}).fetchone())

        return await self._tx(body)

    async def tenant_get(self, tenant_id: str) -> Tenant | None:
        def body(conn: sqlite3.Connection) -> Tenant | None:
            row = conn.execute(Q["tenant_get"], {"id": tenant_id}).fetchone()
            return Tenant(*row) if row else None

        return await self._reader_call(body)

    async def token_insert(self, token: ApiToken) -> None:
        params = {
            "id": token.id,
            "tenant_id": token.tenant_id,
            "name": token.name,
            "created_at": token.created_at,
            "expires_at": token.expires_at,
        }
        await self._tx(lambda conn: conn.execute(Q["token_insert"], params))

    async def token_get(self, token_id: str) -> ApiToken | None:
        def body(conn: sqlite3.Connection) -> ApiToken | None:
            row = conn.execute(Q["token_get"], {"id": token_id}).fetchone()
            return ApiToken(*row) if row else None

        return await self._reader_call(body)

    async def token_revoke(self, token_id: str, now: float) -> bool:
        return await self._tx(
            lambda conn: conn.execute(Q["token_revoke"], {"id": token_id, "now": now}).rowcount > 0
        )

    # ------------------------------------------------------------------ workflows

    async def workflow_put(self, workflow: Workflow, checksum: str, now: float) -> Workflow:
        definition = json.dumps(workflow.definition_json())

        def body(conn: sqlite3.Connection) -> Workflow:
            key = {"tenant_id": workflow.tenant_id, "name": workflow.name}
            current = conn.execute(Q["workflow_current"], key).fetchone()
            if current is not None and current[2] == checksum:
                workflow_id, version_id = current[0], current[1]
            else:
                workflow_id = current[0] if current else str(uuid.uuid4())
                version_id = str(uuid.uuid4())
                conn.execute(
                    Q["workflow_version_insert"],
                    {
                        "id": version_id,
                        "workflow_id": workflow_id,
                        "tenant_id": workflow.tenant_id,
                        "name": workflow.name,
                        "definition": definition,
                        "checksum": checksum,
                        "now": now,
                    },
                )
                params = {"id": workflow_id, "version_id": version_id, "now": now}
                if current is None:
                    conn.execute(Q["workflow_insert"], {**params, **key})
                else:
                    conn.execute(Q["workflow_set_version"], params)
            return dataclasses.replace(workflow, id=workflow_id, version_id=version_id)

        return await self._tx(body)

    async def workflows_current(self, tenant_id: str) -> list[Workflow]:
        def body(conn: sqlite3.Connection) -> list[Workflow]:
            rows = conn.execute(Q["workflows_current"], {"tenant_id": tenant_id})
            return [
                Workflow.from_definition(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows
            ]

        return await self._reader_call(body)

    async def workflow_get_by_name(self, tenant_id: str, name: str) -> Workflow | None:
        def body(conn: sqlite3.Connection) -> Workflow | None:
            r = conn.execute(
                Q["workflow_get_by_name"], {"tenant_id": tenant_id, "name": name}
            ).fetchone()
            return Workflow.from_definition(r[0], r[1], r[2], r[3], json.loads(r[4])) if r else None

        return await self._reader_call(body)

    async def workflow_versions(self, version_ids: Collection[str]) -> list[Workflow]:
        return await self._reader_call(lambda conn: _versions(conn, version_ids))

    # ------------------------------------------------------------------ runs and tasks

    async def run_get(self, tenant_id: str, run_id: str) -> tuple[RunRow, list[TaskRow]] | None:
        def body(conn: sqlite3.Connection) -> tuple[RunRow, list[TaskRow]] | None:
            r = conn.execute(Q["run_get"], {"tenant_id": tenant_id, "run_id": run_id}).fetchone()
            if r is None:
                return None
            return _run(r), [_task(t) for t in conn.execute(Q["run_tasks"], {"run_id": run_id})]

        return await self._reader_call(body)

    async def runs_get(
        self, tenant_id: str, run_ids: Collection[str]
    ) -> list[tuple[RunRow, list[TaskRow]]]:
        def body(conn: sqlite3.Connection) -> list[tuple[RunRow, list[TaskRow]]]:
            ids = _ids(run_ids)
            runs: dict[str, tuple[RunRow, list[TaskRow]]] = {
                r.id: (r, [])
                for r in map(
                    _run, conn.execute(Q["runs_get"], {"tenant_id": tenant_id, "ids": ids})
                )
            }
            if runs:
                for t in conn.execute(Q["tasks_by_runs"], {"ids": _ids(runs)}):
                    runs[t[3]][1].append(_task(t))
            return list(runs.values())

        return await self._reader_call(body)

    async def runs_find(self, tenant_id: str, match: RunFilter) -> list[str]:
        def body(conn: sqlite3.Connection) -> list[str]:
            statuses = {str(st) for st in match.statuses}
            workflows = set(match.workflows)
            found: list[str] = []
            rows = conn.execute(
                Q["runs_in_window"],
                {"tenant_id": tenant_id, "since": match.since, "until": match.until},
            )
            for run_id, status, workflow_id, workflow_name, meta_text, started in rows:
                if status == RunStatus.QUEUED and started:
                    status = RunStatus.RUNNING
                if statuses and status not in statuses:
                    continue
                if workflows and not workflows & {workflow_id, workflow_name}:
                    continue
                if match.additional_metadata and not _rows.metadata_matches(
                    meta_text, match.additional_metadata
                ):
                    continue
                found.append(run_id)
                if len(found) >= match.limit:
                    break
            return found

        return await self._reader_call(body)

    async def task_run_id(self, tenant_id: str, task_id: str) -> str | None:
        def body(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                Q["task_run_id"], {"task_id": task_id, "tenant_id": tenant_id}
            ).fetchone()
            return str(row[0]) if row else None

        return await self._reader_call(body)

    async def queue_depths(self) -> list[tuple[str, str, str, int]]:
        return await self._reader_call(
            lambda conn: [(r[0], r[1], r[2], int(r[3])) for r in conn.execute(Q["queue_depths"])]
        )

    async def task_stats(self, tenant_id: str, names: Collection[str] | None) -> list[TaskStatRow]:
        params = {"tenant_id": tenant_id, "names": _json_list(names)}
        return await self._reader_call(
            lambda conn: [
                TaskStatRow(r[0], r[1], r[2], int(r[3]), float(r[4]), r[5])
                for r in conn.execute(Q["task_stats"], params)
            ]
        )

    async def task_stat_claims(
        self, tenant_id: str, names: Collection[str] | None
    ) -> list[TaskClaimRow]:
        params = {"tenant_id": tenant_id, "names": _json_list(names)}
        return await self._reader_call(
            lambda conn: [TaskClaimRow(*r) for r in conn.execute(Q["task_stat_claims"], params)]
        )

    async def task_status_counts(
        self,
        tenant_id: str,
        since: float | None,
        until: float | None,
        workflows: Collection[str],
    ) -> dict[str, int]:
        params = {
            "tenant_id": tenant_id,
            "since": since,
            "until": until,
            "workflows": _json_list(workflows or None),
        }
        return await self._reader_call(
            lambda conn: {
                str(r[0]): int(r[1]) for r in conn.execute(Q["task_status_counts"], params)
            }
        )

    async def queue_keys(self) -> list[tuple[str, str]]:
        return await self._reader_call(
            lambda conn: [(r[0], r[1]) for r in conn.execute(Q["queue_keys"])]
        )

    async def tasks_queued_page(self, page: QueuePage) -> list[QueuedRow]:
        priority, seq = page.after if page.after is not None else (2**31, 0)
        params = {
            "tenant_id": page.tenant_id,
            "action_id": page.action_id,
            "priority": priority,
            "seq": seq,
            "limit": page.limit,
        }

        def body(conn: sqlite3.Connection) -> list[QueuedRow]:
            out = []
            for r in conn.execute(Q["tasks_queued_page"], params):
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

        return await self._reader_call(body)

    async def tasks_running(self) -> list[tuple[TaskRow, str]]:
        return await self._reader_call(
            lambda conn: [(_task(r), r[_N_TASK]) for r in conn.execute(Q["tasks_running"])]
        )

    async def attempts_holding(self) -> list[tuple[AttemptRow, TaskRow, str]]:
        def body(conn: sqlite3.Connection) -> list[tuple[AttemptRow, TaskRow, str]]:
            return [
                (_attempt(r), _task(r[_N_ATTEMPT:]), r[_N_ATTEMPT + _N_TASK])
                for r in conn.execute(Q["attempts_holding"])
            ]

        return await self._reader_call(body)

    async def attempts_list(self, tenant_id: str | None = None) -> list[AttemptRow]:
        return await self._reader_call(
            lambda conn: [
                _attempt(r) for r in conn.execute(Q["attempts_list"], {"tenant_id": tenant_id})
            ]
        )

    async def tasks_list(self, tenant_id: str | None = None) -> list[TaskRow]:
        return await self._reader_call(
            lambda conn: [_task(r) for r in conn.execute(Q["tasks_list"], {"tenant_id": tenant_id})]
        )

    async def runs_list(self, tenant_id: str | None = None) -> list[RunRow]:
        return await self._reader_call(
            lambda conn: [_run(r) for r in conn.execute(Q["runs_list"], {"tenant_id": tenant_id})]
        )

    async def _tasks(self, query: str, params: dict[str, Any]) -> list[TaskRow]:
        return await self._reader_call(
            lambda conn: [_task(r) for r in conn.execute(Q[query], params)]
        )

    async def tasks_timed_out(self, now: float, limit: int) -> list[TaskRow]:
        return await self._tasks("tasks_timed_out", {"now": now, "limit": limit})

    async def tasks_unacked(self, cutoff: float, limit: int) -> list[TaskRow]:
        return await self._tasks("tasks_unacked", {"cutoff": cutoff, "limit": limit})

    async def tasks_schedule_expired(self, now: float, limit: int) -> list[TaskRow]:
        return await self._tasks("tasks_schedule_expired", {"now": now, "limit": limit})

    async def gates_held(self) -> list[GateClaim]:
        def body(conn: sqlite3.Connection) -> list[GateClaim]:
            held: list[GateClaim] = []
            for status, claims in conn.execute(Q["gates_held"]):
                for data in json.loads(claims).get("gates", ()):
                    claim = GateClaim.from_json(data)
                    if claim.per_run or status == TaskStatus.RUNNING:
                        held.append(claim)
            return held

        return await self._reader_call(body)

    # ------------------------------------------------------------------ rate limits

    async def rate_limit_put(self, record: RateLimitRecord, now: float) -> None:
        params = {
            "tenant_id": record.tenant_id,
            "key": record.key,
            "limit": record.limit,
            "duration_s": record.duration_s,
            "now": now,
        }
        await self._tx(lambda conn: conn.execute(Q["rate_limit_put"], params))

    async def rate_limits_list(self) -> list[RateLimitRecord]:
        return await self._reader_call(
            lambda conn: [RateLimitRecord(*r) for r in conn.execute(Q["rate_limits_list"])]
        )

    # ------------------------------------------------------------------ workers

    async def worker_get(self, tenant_id: str, worker_id: str) -> WorkerRecord | None:
        def body(conn: sqlite3.Connection) -> WorkerRecord | None:
            row = conn.execute(
                Q["worker_get"], {"id": worker_id, "tenant_id": tenant_id}
            ).fetchone()
            return _worker(row) if row else None

        return await self._reader_call(body)

    async def workers_list(self, tenant_id: str | None = None) -> list[WorkerRecord]:
        return await self._reader_call(
            lambda conn: [
                _worker(r) for r in conn.execute(Q["workers_list"], {"tenant_id": tenant_id})
            ]
        )

    # ------------------------------------------------------------------ logs

    async def logs_list(self, query: LogQuery) -> list[LogLine]:
        params = {"tenant_id": query.tenant_id, "task_id": query.task_id, "limit": query.limit}
        return await self._reader_call(
            lambda conn: [LogLine(*r) for r in conn.execute(Q["logs_list"], params)]
        )

    # ------------------------------------------------------------------ events, schedules, crons

    async def _rows_of(
        self, name: str, params: dict[str, Any], convert: Callable[[Any], T]
    ) -> list[T]:
        def body(conn: sqlite3.Connection) -> list[T]:
            return [convert(r) for r in conn.execute(Q[name], params)]

        return await self._reader_call(body)

    async def _first(self, name: str, params: dict[str, Any]) -> Any:
        def body(conn: sqlite3.Connection) -> Any:
            row = conn.execute(Q[name], params).fetchone()
            return None if row is None else row[0]

        return await self._reader_call(body)

    async def _change(self, name: str, params: dict[str, Any]) -> int:
        def body(conn: sqlite3.Connection) -> int:
            return conn.execute(Q[name], params).rowcount

        return await self._tx(body)

    async def tasks_wake_due(self, now: float, limit: int) -> list[TaskRow]:
        return await self._tasks("tasks_wake_due", {"now": now, "limit": limit})

    async def durable_get(self, tenant_id: str, task_id: str) -> DurableLog | None:
        rows = await self._rows_of(
            "durable_get",
            {"tenant_id": tenant_id, "task_id": task_id},
            _rows.durable_log,
        )
        return rows[0] if rows else None

    async def durable_evicted(self, limit: int) -> list[tuple[str, str]]:
        return await self._rows_of("durable_evicted", {"limit": limit}, lambda r: (r[0], r[1]))

    async def runs_children(self, tenant_id: str, parent_task_ids: Collection[str]) -> list[str]:
        params = {"tenant_id": tenant_id, "ids": _ids(parent_task_ids)}
        return await self._rows_of("runs_children", params, operator.itemgetter(0))

    async def filters_of(self, tenant_id: str, workflow_ids: Collection[str]) -> list[FilterRecord]:
        params = {"tenant_id": tenant_id, "ids": _ids(workflow_ids)}
        return await self._rows_of("filters_of_workflows", params, _rows.filter_record)

    async def filters_list(
        self,
        tenant_id: str,
        workflow_ids: Collection[str] | None,
        scopes: Collection[str] | None,
        limit: int,
        offset: int,
    ) -> list[FilterRecord]:
        params = {
            "tenant_id": tenant_id,
            "workflows": _json_list(workflow_ids),
            "scopes": _json_list(scopes),
            "limit": limit,
            "offset": offset,
        }
        return await self._rows_of("filters_list", params, _rows.filter_record)

    async def filter_get(self, tenant_id: str, filter_id: str) -> FilterRecord | None:
        params = {"tenant_id": tenant_id, "id": filter_id}
        found = await self._rows_of("filter_get", params, _rows.filter_record)
        return found[0] if found else None

    async def filter_put(self, record: FilterRecord) -> None:
        def body(conn: sqlite3.Connection) -> None:
            updated = conn.execute(
                Q["filter_update"],
                (
                    record.scope,
                    record.expression,
                    record.payload,
                    record.updated_at,
                    record.tenant_id,
                    record.id,
                ),
            ).rowcount
            if not updated:
                conn.execute(Q["filter_insert"], _filter_values(record))

        await self._tx(body)

    async def filter_delete(self, tenant_id: str, filter_id: str) -> bool:
        return await self._change("filter_delete", {"tenant_id": tenant_id, "id": filter_id}) > 0

    async def filters_declare(
        self, tenant_id: str, workflow_id: str, records: Sequence[FilterRecord]
    ) -> None:
        def body(conn: sqlite3.Connection) -> None:
            params = {"tenant_id": tenant_id, "workflow_id": workflow_id}
            conn.execute(Q["filters_undeclare"], params)
            conn.executemany(Q["filter_insert"], [_filter_values(r) for r in records])

        await self._tx(body)

    async def events_list(
        self, tenant_id: str, keys: Collection[str] | None, limit: int, offset: int
    ) -> list[EventRecord]:
        params = {"tenant_id": tenant_id, "keys": _json_list(keys), "limit": limit}
        return await self._rows_of("events_list", {**params, "offset": offset}, _rows.event_record)

    async def event_get(self, tenant_id: str, event_id: str) -> EventRecord | None:
        found = await self._rows_of(
            "event_get", {"tenant_id": tenant_id, "id": event_id}, _rows.event_record
        )
        return found[0] if found else None

    async def schedule_insert(self, records: Sequence[ScheduleRecord]) -> None:
        def body(conn: sqlite3.Connection) -> None:
            conn.executemany(Q["schedule_insert"], [_schedule_values(r) for r in records])

        await self._tx(body)

    async def schedules_due(self, now: float, limit: int) -> list[ScheduleRecord]:
        params = {"now": now, "limit": limit}
        return await self._rows_of("schedules_due", params, _rows.schedule_record)

    async def schedule_next(self) -> float | None:
        return await self._first("schedule_next", {})  # type: ignore[no-any-return]

    async def schedules_list(
        self, tenant_id: str, workflow_name: str | None, limit: int, offset: int
    ) -> list[ScheduleRecord]:
        params = {"tenant_id": tenant_id, "workflow": workflow_name, "limit": limit}
        return await self._rows_of(
            "schedules_list", {**params, "offset": offset}, _rows.schedule_record
        )

    async def schedule_get(self, tenant_id: str, schedule_id: str) -> ScheduleRecord | None:
        params = {"tenant_id": tenant_id, "id": schedule_id}
        found = await self._rows_of("schedule_get", params, _rows.schedule_record)
        return found[0] if found else None

    async def schedule_delete(self, tenant_id: str, schedule_id: str) -> bool:
        return (
            await self._change("schedule_delete", {"tenant_id": tenant_id, "id": schedule_id}) > 0
        )

    async def schedule_move(self, tenant_id: str, schedule_id: str, trigger_at: float) -> bool:
        params = {"tenant_id": tenant_id, "id": schedule_id, "trigger_at": trigger_at}
        return await self._change("schedule_move", params) > 0

    async def cron_insert(self, record: CronRecord) -> None:
        def body(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(Q["cron_insert"], _cron_values(record))
            except sqlite3.IntegrityError:
                raise AlreadyExists(
                    f"workflow {record.workflow_name!r} has a cron named {record.name!r}"
                ) from None

        await self._tx(body)

    async def crons_declare(
        self, tenant_id: str, workflow_name: str, records: Sequence[CronRecord]
    ) -> None:
        def body(conn: sqlite3.Connection) -> None:
            names = json.dumps([r.name for r in records])
            params = {"tenant_id": tenant_id, "workflow": workflow_name, "names": names}
            conn.execute(Q["crons_undeclare"], params)
            conn.executemany(Q["cron_insert_declared"], [_cron_values(r) for r in records])

        await self._tx(body)

    async def crons_due(self, now: float, limit: int) -> list[CronRecord]:
        return await self._rows_of("crons_due", {"now": now, "limit": limit}, _rows.cron_record)

    async def cron_next(self) -> float | None:
        return await self._first("cron_next", {})  # type: ignore[no-any-return]

    async def crons_list(
        self,
        tenant_id: str,
        workflow_name: str | None,
        limit: int,
        offset: int,
        name: str | None = None,
    ) -> list[CronRecord]:
        params = {"tenant_id": tenant_id, "workflow": workflow_name, "limit": limit, "name": name}
        return await self._rows_of("crons_list", {**params, "offset": offset}, _rows.cron_record)

    async def cron_get(self, tenant_id: str, cron_id: str) -> CronRecord | None:
        params = {"tenant_id": tenant_id, "id": cron_id}
        found = await self._rows_of("cron_get", params, _rows.cron_record)
        return found[0] if found else None

    async def cron_delete(self, tenant_id: str, cron_id: str) -> bool:
        return await self._change("cron_delete", {"tenant_id": tenant_id, "id": cron_id}) > 0


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    for version, name, sql in _queries.migrations("sqlite"):
        if version in done:
            continue
        logger.info("applying migration %04d_%s", version, name)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _queries.split_statements(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


_worker = _rows.worker_record


def _json_list(values: Collection[str] | None) -> str | None:
    """A list parameter as the JSON text the queries read with ``json_each`` (NULL: none)."""
    return None if values is None else json.dumps(list(values))


def _private(path: Path) -> None:
    """The database holds the token signing secret: readable by its owner only, whatever
    the umask. SQLite gives its -wal and -shm files the database file's mode."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open the database {path}: {exc.strerror or exc}") from exc
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except OSError as exc:  # another user's file we may write: say so, carry on
        logger.warning("could not make %s private (mode 0600): %s", path, exc.strerror or exc)
    finally:
        os.close(fd)
