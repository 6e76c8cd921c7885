"""SQLite store: the embedded default.

One connection, used only from one dedicated thread, so every transaction is serialized
without locks in Python. WAL journal with ``synchronous=FULL``: a commit that returned is on
disk, which is what "acknowledged after commit" relies on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from hewer.domain import (
    ApiToken,
    Assignment,
    ConcurrencySpec,
    DesiredLabel,
    DispatchInfo,
    EventOutcome,
    EventType,
    GateClaim,
    LogLine,
    NewRun,
    QueueItem,
    RateClaim,
    RateLimitRecord,
    RunDetails,
    RunFilter,
    RunningTask,
    RunStatus,
    StickyStrategy,
    TaskDef,
    TaskEvent,
    TaskResult,
    TaskStatus,
    Tenant,
    TimedOutTask,
    WorkerRecord,
    WorkerStatus,
    Workflow,
    merge_labels,
)
from hewer.errors import StoreError
from hewer.store import _queries

logger = logging.getLogger(__name__)

T = TypeVar("T")
Q = _queries.load("sqlite")

# Retries with a backoff factor but no cap wait at most a day, as upstream.
DEFAULT_BACKOFF_MAX_S = 86_400.0


class SqliteStore:
    """The :class:`~hewer.store.Store` for one SQLite file (or ``:memory:``)."""

    def __init__(self, path: Path | str) -> None:
        self._path = str(path)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ plumbing

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hewer-sqlite")
        await self._run(self._open_sync)

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._run(self._close_sync)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _open_sync(self) -> None:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        self._conn = conn
        self._migrate()

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _migrate(self) -> None:
        conn = self._c
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

    @property
    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("store is not open")
        return self._conn

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._c
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            # Also after a failed COMMIT: an open transaction would block every later write.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def body() -> T:
            with self._tx() as conn:
                return fn(conn)

        return await self._run(body)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(lambda: fn(self._c))

    # ------------------------------------------------------------------ settings

    async def meta_get_or_set(self, key: str, default: str) -> str:
        def body(conn: sqlite3.Connection) -> str:
            conn.execute(Q["meta_insert_default"], {"key": key, "value": default})
            row = conn.execute(Q["meta_get"], {"key": key}).fetchone()
            return str(row["value"])

        return await self._write(body)

    # ------------------------------------------------------------------ tenants and tokens

    async def tenant_ensure(self, name: str, now: float) -> Tenant:
        def body(conn: sqlite3.Connection) -> Tenant:
            conn.execute(
                Q["tenant_insert"], {"id": str(uuid.uuid4()), "name": name, "created_at": now}
            )
            row = conn.execute(Q["tenant_get_by_name"], {"name": name}).fetchone()
            return Tenant(row["id"], row["name"], row["created_at"])

        return await self._write(body)

    async def tenant_get(self, tenant_id: str) -> Tenant | None:
        def body(conn: sqlite3.Connection) -> Tenant | None:
            row = conn.execute(Q["tenant_get"], {"id": tenant_id}).fetchone()
            return Tenant(row["id"], row["name"], row["created_at"]) if row else None

        return await self._read(body)

    async def token_insert(self, token: ApiToken) -> None:
        await self._write(
            lambda conn: conn.execute(
                Q["token_insert"],
                {
                    "id": token.id,
                    "tenant_id": token.tenant_id,
                    "name": token.name,
                    "created_at": token.created_at,
                    "expires_at": token.expires_at,
                },
            )
        )

    async def token_get(self, token_id: str) -> ApiToken | None:
        def body(conn: sqlite3.Connection) -> ApiToken | None:
            row = conn.execute(Q["token_get"], {"id": token_id}).fetchone()
            if row is None:
                return None
            return ApiToken(
                row["id"],
                row["tenant_id"],
                row["name"],
                row["created_at"],
                row["expires_at"],
                row["revoked_at"],
            )

        return await self._read(body)

    async def token_revoke(self, token_id: str, now: float) -> bool:
        return await self._write(
            lambda conn: conn.execute(Q["token_revoke"], {"id": token_id, "now": now}).rowcount > 0
        )

    # ------------------------------------------------------------------ workflows

    async def workflow_upsert(
        self,
        tenant_id: str,
        name: str,
        tasks: Sequence[TaskDef],
        default_priority: int,
        now: float,
        *,
        sticky: StickyStrategy | None = None,
        concurrency: Sequence[ConcurrencySpec] = (),
    ) -> Workflow:
        definition = json.dumps(
            {
                "tasks": [t.to_json() for t in tasks],
                "default_priority": default_priority,
                "sticky": sticky,
                "concurrency": [c.to_json() for c in concurrency],
            }
        )

        def body(conn: sqlite3.Connection) -> Workflow:
            row = conn.execute(
                Q["workflow_upsert"],
                {
                    "id": str(uuid.uuid4()),
                    "tenant_id": tenant_id,
                    "name": name,
                    "version_id": str(uuid.uuid4()),
                    "definition": definition,
                    "now": now,
                },
            ).fetchone()
            return Workflow(
                row["id"],
                tenant_id,
                name,
                row["version_id"],
                tuple(tasks),
                default_priority,
                sticky,
                tuple(concurrency),
            )

        return await self._write(body)

    async def workflow_get_by_name(self, tenant_id: str, name: str) -> Workflow | None:
        def body(conn: sqlite3.Connection) -> Workflow | None:
            row = conn.execute(
                Q["workflow_get_by_name"], {"tenant_id": tenant_id, "name": name}
            ).fetchone()
            if row is None:
                return None
            definition = json.loads(row["definition"])
            return Workflow(
                row["id"],
                row["tenant_id"],
                row["name"],
                row["version_id"],
                tuple(TaskDef.from_json(t) for t in definition["tasks"]),
                definition["default_priority"],
                StickyStrategy(definition["sticky"]) if definition.get("sticky") else None,
                tuple(ConcurrencySpec.from_json(c) for c in definition.get("concurrency", ())),
            )

        return await self._read(body)

    # ------------------------------------------------------------------ runs

    async def runs_create(self, runs: Sequence[NewRun], now: float) -> list[QueueItem]:
        def body(conn: sqlite3.Connection) -> list[QueueItem]:
            queued: list[QueueItem] = []
            for run in runs:
                wf = run.workflow
                conn.execute(
                    Q["run_insert"],
                    {
                        "id": run.id,
                        "tenant_id": wf.tenant_id,
                        "workflow_id": wf.id,
                        "workflow_name": wf.name,
                        "input": run.input,
                        "additional_metadata": run.additional_metadata,
                        "priority": run.priority,
                        "sticky": wf.sticky,
                        # A sticky child run is pinned to its parent's worker from the start.
                        "sticky_worker_id": run.desired_worker_id if wf.sticky else None,
                        "now": now,
                    },
                )
                gates = run.gates or tuple(() for _ in run.task_ids)
                rates = run.rates or tuple(() for _ in run.task_ids)
                for task_id, task, claims, rate in zip(
                    run.task_ids, wf.tasks, gates, rates, strict=True
                ):
                    is_root = not task.parents
                    labels = merge_labels(task.desired_labels, run.desired_labels)
                    seq = conn.execute(
                        Q["task_insert"],
                        {
                            "id": task_id,
                            "tenant_id": wf.tenant_id,
                            "run_id": run.id,
                            "step_id": f"{wf.id}:{task.readable_id}",
                            "readable_id": task.readable_id,
                            "action_id": task.action_id,
                            "status": TaskStatus.QUEUED if is_root else TaskStatus.PENDING,
                            "max_retries": task.retries,
                            "backoff_factor": task.backoff_factor,
                            "backoff_max": task.backoff_max_s,
                            "priority": run.priority,
                            "parents": json.dumps(list(task.parents)),
                            "slot_requests": json.dumps(task.slot_requests),
                            "desired_labels": _labels_json(labels),
                            "desired_worker_id": run.desired_worker_id if is_root else None,
                            "concurrency": _gates_json(claims),
                            "rate_limits": json.dumps([r.to_json() for r in rate]),
                            "timeout_s": task.timeout_s,
                            "schedule_timeout_s": task.schedule_timeout_s,
                            "now": now,
                            "queued_at": now if is_root else None,
                        },
                    ).fetchone()[0]
                    if is_root:
                        queued.append(
                            QueueItem(
                                task_id=task_id,
                                tenant_id=wf.tenant_id,
                                action_id=task.action_id,
                                priority=run.priority,
                                seq=seq,
                                retry_count=0,
                                slot_requests=dict(task.slot_requests),
                                schedule_deadline=now + task.schedule_timeout_s,
                                desired_labels=labels,
                                desired_worker_id=run.desired_worker_id,
                                sticky=wf.sticky,
                                gates=claims,
                                rates=rate,
                            )
                        )
            return queued

        return await self._write(body)

    async def run_get(self, tenant_id: str, run_id: str) -> RunDetails | None:
        def body(conn: sqlite3.Connection) -> RunDetails | None:
            row = conn.execute(Q["run_get"], {"tenant_id": tenant_id, "run_id": run_id}).fetchone()
            if row is None:
                return None
            tasks = tuple(
                TaskResult(
                    task_id=t["id"],
                    readable_id=t["readable_id"],
                    status=TaskStatus(t["status"]),
                    output=t["output"],
                    error=t["error"],
                    retry_count=t["retry_count"],
                )
                for t in conn.execute(Q["run_tasks"], {"run_id": run_id})
            )
            return RunDetails(
                id=row["id"],
                tenant_id=row["tenant_id"],
                workflow_name=row["workflow_name"],
                status=RunStatus(row["status"]),
                input=row["input"],
                additional_metadata=row["additional_metadata"],
                tasks=tasks,
            )

        return await self._read(body)

    async def runs_find(self, tenant_id: str, match: RunFilter) -> list[str]:
        def body(conn: sqlite3.Connection) -> list[str]:
            statuses = {str(st) for st in match.statuses}
            workflows = set(match.workflows)
            found: list[str] = []
            rows = conn.execute(
                Q["runs_in_window"],
                {"tenant_id": tenant_id, "since": match.since, "until": match.until},
            )
            for r in rows:
                if statuses and r["status"] not in statuses:
                    continue
                if workflows and not workflows & {r["workflow_id"], r["workflow_name"]}:
                    continue
                if match.additional_metadata:
                    meta = _json_or_empty(r["additional_metadata"])
                    if any(str(meta.get(k)) != v for k, v in match.additional_metadata):
                        continue
                found.append(r["id"])
                if len(found) >= match.limit:
                    break
            return found

        return await self._read(body)

    # ------------------------------------------------------------------ scheduling

    async def tasks_queued(self) -> list[QueueItem]:
        def body(conn: sqlite3.Connection) -> list[QueueItem]:
            return [
                QueueItem(
                    task_id=r["id"],
                    tenant_id=r["tenant_id"],
                    action_id=r["action_id"],
                    priority=r["priority"],
                    seq=r["seq"],
                    retry_count=r["retry_count"],
                    slot_requests=json.loads(r["slot_requests"]),
                    available_at=r["available_at"],
                    schedule_deadline=(r["queued_at"] or 0.0) + r["schedule_timeout_s"],
                    desired_labels=_labels(r["desired_labels"]),
                    desired_worker_id=r["desired_worker_id"],
                    sticky=StickyStrategy(r["sticky"]) if r["sticky"] else None,
                    gates=_gates(r["concurrency"]),
                    rates=_rates(r["rate_limits"]),
                )
                for r in conn.execute(Q["tasks_queued"])
            ]

        return await self._read(body)

    async def tasks_running(self, worker_id: str | None = None) -> list[RunningTask]:
        def body(conn: sqlite3.Connection) -> list[RunningTask]:
            if worker_id is None:
                rows = conn.execute(Q["tasks_running"])
            else:
                rows = conn.execute(Q["tasks_running_for_worker"], {"worker_id": worker_id})
            return [_running(r) for r in rows]

        return await self._read(body)

    async def tasks_assign(
        self, assignments: Sequence[Assignment], now: float
    ) -> list[DispatchInfo]:
        def body(conn: sqlite3.Connection) -> list[DispatchInfo]:
            out: list[DispatchInfo] = []
            runs: dict[str, Any] = {}
            for a in assignments:
                row = conn.execute(
                    Q["task_assign"],
                    {
                        "task_id": a.task_id,
                        "worker_id": a.worker_id,
                        "retry_count": a.retry_count,
                        "now": now,
                    },
                ).fetchone()
                if row is None:
                    continue
                conn.execute(
                    Q["attempt_insert"],
                    {
                        "task_id": a.task_id,
                        "retry_count": a.retry_count,
                        "worker_id": a.worker_id,
                        "now": now,
                    },
                )
                run_id = row["run_id"]
                run = runs.get(run_id)
                if run is None:
                    run = conn.execute(Q["run_for_dispatch"], {"run_id": run_id}).fetchone()
                    runs[run_id] = run
                    conn.execute(Q["run_mark_running"], {"run_id": run_id})
                conn.execute(Q["run_pin_worker"], {"run_id": run_id, "worker_id": a.worker_id})
                parents = json.loads(row["parents"])
                parent_outputs: dict[str, Any] = {}
                if parents:
                    for p in conn.execute(Q["run_task_outputs"], {"run_id": run_id}):
                        if p["readable_id"] in parents:
                            parent_outputs[p["readable_id"]] = _json_or_empty(p["output"])
                payload = json.dumps(
                    {
                        "input": json.loads(run["input"]),
                        "parents": parent_outputs,
                        "triggered_by": "manual",
                        "triggers": {},
                        "user_data": {},
                        "overrides": {},
                    },
                    separators=(",", ":"),
                )
                out.append(
                    DispatchInfo(
                        task_id=a.task_id,
                        tenant_id=a.tenant_id,
                        worker_id=a.worker_id,
                        run_id=run_id,
                        step_id=row["step_id"],
                        workflow_id=run["workflow_id"],
                        workflow_version_id=run["version_id"],
                        readable_id=row["readable_id"],
                        action_id=row["action_id"],
                        retry_count=a.retry_count,
                        priority=row["priority"],
                        payload=payload,
                        additional_metadata=run["additional_metadata"],
                    )
                )
            return out

        return await self._write(body)

    async def task_apply_event(self, event: TaskEvent, now: float) -> EventOutcome:
        def body(conn: sqlite3.Connection) -> EventOutcome:
            key = {"task_id": event.task_id, "retry_count": event.retry_count}
            live = conn.execute(
                Q["task_live"],
                {**key, "tenant_id": event.tenant_id, "worker_id": event.worker_id},
            ).fetchone()
            if live is None:
                if event.type is EventType.STARTED:
                    return EventOutcome(applied=False, reason="attempt is not live")
                # The engine already ended this attempt; its body has now really returned.
                return EventOutcome(
                    applied=False,
                    freed=_free_draining(conn, event),
                    reason="attempt is not live",
                )
            if event.type is EventType.STARTED:
                conn.execute(
                    Q["attempt_started"], {**key, "now": now, "worker_id": event.worker_id}
                )
                return EventOutcome(applied=True)
            if event.type is EventType.CANCELLED:
                return EventOutcome(applied=False, reason="CANCELLED for a live attempt")
            freed = _free_attempt(conn, event.task_id, event.retry_count, live["slot_requests"])
            if event.type is EventType.COMPLETED:
                conn.execute(
                    Q["task_complete"],
                    {"task_id": event.task_id, "output": event.payload, "now": now},
                )
                conn.execute(Q["attempt_finish"], {**key, "now": now, "outcome": "completed"})
                ready, finished = _advance_run(conn, live["run_id"], now)
                return EventOutcome(True, freed, tuple(ready), finished, ended=(event.task_id,))
            conn.execute(Q["attempt_finish"], {**key, "now": now, "outcome": "failed"})
            queued, finished = _fail_or_retry(conn, live, event, now)
            return EventOutcome(True, freed, queued, finished, ended=(event.task_id,))

        return await self._write(body)

    async def tasks_time_out(
        self, timed_out: Sequence[TimedOutTask], hold_slots_of: Collection[str], now: float
    ) -> EventOutcome:
        def body(conn: sqlite3.Connection) -> EventOutcome:
            freed: list[RunningTask] = []
            queued: list[QueueItem] = []
            finished: list[str] = []
            stop: list[RunningTask] = []
            for item in timed_out:
                held = item.task
                key = {"task_id": held.task_id, "retry_count": held.retry_count}
                live = conn.execute(
                    Q["task_live"],
                    {**key, "tenant_id": item.tenant_id, "worker_id": held.worker_id},
                ).fetchone()
                if live is None:
                    continue
                conn.execute(Q["attempt_stop"], {**key, "outcome": "timed_out"})
                if held.worker_id not in hold_slots_of:
                    freed.extend(
                        _free_attempt(conn, held.task_id, held.retry_count, live["slot_requests"])
                    )
                event = TaskEvent(
                    item.tenant_id,
                    held.task_id,
                    held.retry_count,
                    held.worker_id,
                    EventType.FAILED,
                    "task exceeded its execution timeout",
                )
                more, done = _fail_or_retry(conn, live, event, now)
                queued.extend(more)
                finished.extend(done)
                stop.append(held)
            return EventOutcome(
                bool(stop),
                tuple(freed),
                tuple(queued),
                tuple(finished),
                stop=tuple(stop),
                ended=tuple(h.task_id for h in stop),
            )

        return await self._write(body)

    async def tasks_requeue(
        self,
        tasks: Sequence[RunningTask],
        reason: str,
        now: float,
        *,
        max_reassignments: int | None = None,
        count: bool = True,
    ) -> EventOutcome:
        def body(conn: sqlite3.Connection) -> EventOutcome:
            queued: list[QueueItem] = []
            freed: list[RunningTask] = []
            finished: list[str] = []
            failed: list[str] = []
            handled: list[str] = []
            for t in tasks:
                fence = {"task_id": t.task_id, "retry_count": t.retry_count}
                held = conn.execute(Q["task_held"], {**fence, "worker_id": t.worker_id}).fetchone()
                if held is None:
                    freed.extend(_free_unstarted(conn, t, now))
                    continue
                handled.append(t.task_id)
                freed.extend(_free_attempt(conn, t.task_id, t.retry_count, held["slot_requests"]))
                conn.execute(Q["attempt_finish"], {**fence, "now": now, "outcome": "lost"})
                if (
                    count
                    and max_reassignments is not None
                    and held["reassignments"] >= max_reassignments
                ):
                    error = (
                        f"worker lost: {reason}; gave up after "
                        f"{held['reassignments']} reassignment(s)"
                    )
                    conn.execute(Q["task_fail"], {"task_id": t.task_id, "error": error, "now": now})
                    failed.append(t.task_id)
                    more, done = _advance_run(conn, held["run_id"], now)
                    queued.extend(more)
                    finished.extend(done)
                    continue
                row = conn.execute(
                    Q["task_requeue"],
                    {
                        **fence,
                        "worker_id": t.worker_id,
                        "app_failure": 0,
                        "lost": 1 if count else 0,
                        "now": now,
                        "available_at": now,
                        "error": reason,
                    },
                ).fetchone()
                queued.append(_queue_item(conn, t.task_id, row, now, now))
            return EventOutcome(
                bool(queued) or bool(failed),
                tuple(freed),
                tuple(queued),
                tuple(finished),
                failed=tuple(failed),
                ended=tuple(handled),
            )

        return await self._write(body)

    async def tasks_unstarted(self, cutoff: float, limit: int = 500) -> list[RunningTask]:
        def body(conn: sqlite3.Connection) -> list[RunningTask]:
            rows = conn.execute(Q["tasks_unstarted"], {"cutoff": cutoff, "limit": limit})
            return [_running(r) for r in rows]

        return await self._read(body)

    async def tasks_cancel(
        self,
        tenant_id: str,
        task_ids: Sequence[str],
        reason: str,
        now: float,
        hold_slots_of: Collection[str] = (),
    ) -> EventOutcome:
        def body(conn: sqlite3.Connection) -> EventOutcome:
            freed: list[RunningTask] = []
            stop: list[RunningTask] = []
            touched_runs: set[str] = set()
            cancelled: list[str] = []
            targets: list[str] = []
            for ident in task_ids:
                run_tasks = [
                    r["id"]
                    for r in conn.execute(
                        Q["tasks_by_run_ids"], {"tenant_id": tenant_id, "run_id": ident}
                    )
                ]
                targets.extend(run_tasks or [ident])
            for task_id in dict.fromkeys(targets):
                row = conn.execute(
                    Q["task_tenant_lookup"], {"task_id": task_id, "tenant_id": tenant_id}
                ).fetchone()
                if row is None or TaskStatus(row["status"]).terminal:
                    continue
                conn.execute(
                    Q["task_mark_cancelled"], {"task_id": task_id, "now": now, "error": reason}
                )
                cancelled.append(task_id)
                touched_runs.add(row["run_id"])
                if row["status"] == TaskStatus.RUNNING:
                    retry = row["retry_count"]
                    conn.execute(
                        Q["attempt_stop"],
                        {"task_id": task_id, "retry_count": retry, "outcome": "cancelled"},
                    )
                    stop.append(_running(row, task_id=task_id))
                    if row["worker_id"] not in hold_slots_of:
                        freed.extend(_free_attempt(conn, task_id, retry, row["slot_requests"]))
            finished: list[str] = []
            for run_id in touched_runs:
                _, done = _advance_run(conn, run_id, now)
                finished.extend(done)
            return EventOutcome(
                applied=bool(cancelled),
                freed=tuple(freed),
                finished_runs=tuple(finished),
                cancelled=tuple(cancelled),
                stop=tuple(stop),
                ended=tuple(cancelled),
            )

        return await self._write(body)

    async def tasks_schedule_expired(self, now: float, limit: int = 500) -> list[tuple[str, str]]:
        def body(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            rows = conn.execute(Q["tasks_schedule_expired"], {"now": now, "limit": limit})
            return [(r["tenant_id"], r["id"]) for r in rows]

        return await self._read(body)

    async def rate_limit_put(self, record: RateLimitRecord, now: float) -> None:
        await self._write(
            lambda conn: conn.execute(
                Q["rate_limit_put"],
                {
                    "tenant_id": record.tenant_id,
                    "key": record.key,
                    "limit": record.limit,
                    "duration_s": record.duration_s,
                    "now": now,
                },
            )
        )

    async def rate_limits_list(self) -> list[RateLimitRecord]:
        def body(conn: sqlite3.Connection) -> list[RateLimitRecord]:
            return [
                RateLimitRecord(r["tenant_id"], r["key"], r["limit_value"], r["duration_s"])
                for r in conn.execute(Q["rate_limits_list"])
            ]

        return await self._read(body)

    async def gates_held(self) -> list[GateClaim]:
        def body(conn: sqlite3.Connection) -> list[GateClaim]:
            held: list[GateClaim] = []
            for r in conn.execute(Q["gates_held"]):
                for claim in _gates(r["concurrency"]):
                    if claim.per_run or r["status"] == TaskStatus.RUNNING:
                        held.append(claim)
            return held

        return await self._read(body)

    async def attempts_recall(self, worker_id: str, hold: bool, since: float) -> list[RunningTask]:
        def body(conn: sqlite3.Connection) -> list[RunningTask]:
            out: list[RunningTask] = []
            rows = conn.execute(
                Q["attempts_recall"],
                {"worker_id": worker_id, "hold": 1 if hold else 0, "since": since},
            ).fetchall()
            for r in rows:
                slots = conn.execute(Q["task_slot_requests"], {"task_id": r["task_id"]}).fetchone()
                out.append(
                    RunningTask(
                        r["task_id"], worker_id, r["retry_count"], json.loads(slots[0]), False
                    )
                )
            return out

        return await self._write(body)

    async def attempts_holding(self) -> list[RunningTask]:
        return await self._read(
            lambda conn: [_running(r) for r in conn.execute(Q["attempts_holding"])]
        )

    async def worker_drop_attempts(self, worker_id: str, now: float) -> int:
        return await self._write(
            lambda conn: (
                conn.execute(
                    Q["worker_drop_attempts"], {"worker_id": worker_id, "now": now}
                ).rowcount
            )
        )

    async def tasks_timed_out(self, now: float, limit: int = 500) -> list[TimedOutTask]:
        def body(conn: sqlite3.Connection) -> list[TimedOutTask]:
            return [
                TimedOutTask(r["tenant_id"], _running(r), r["timeout_at"])
                for r in conn.execute(Q["tasks_timed_out"], {"now": now, "limit": limit})
            ]

        return await self._read(body)

    async def task_run_id(self, tenant_id: str, task_id: str) -> str | None:
        def body(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                Q["task_run_id"], {"task_id": task_id, "tenant_id": tenant_id}
            ).fetchone()
            return str(row["run_id"]) if row else None

        return await self._read(body)

    async def task_release_slot(self, tenant_id: str, task_id: str) -> RunningTask | None:
        def body(conn: sqlite3.Connection) -> RunningTask | None:
            row = conn.execute(
                Q["task_release_slot"], {"task_id": task_id, "tenant_id": tenant_id}
            ).fetchone()
            if row is None:
                return None
            freed = _free_attempt(conn, task_id, row["retry_count"], row["slot_requests"])
            return freed[0] if freed else None

        return await self._write(body)

    async def task_refresh_timeout(
        self, tenant_id: str, task_id: str, seconds: float, now: float
    ) -> float | None:
        def body(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                Q["task_refresh_timeout"],
                {"task_id": task_id, "tenant_id": tenant_id, "seconds": seconds, "now": now},
            ).fetchone()
            return float(row["timeout_at"]) if row else None

        return await self._write(body)

    # ------------------------------------------------------------------ workers

    async def worker_insert(self, worker: WorkerRecord) -> None:
        await self._write(
            lambda conn: conn.execute(
                Q["worker_insert"],
                {
                    "id": worker.id,
                    "tenant_id": worker.tenant_id,
                    "name": worker.name,
                    "actions": json.dumps(list(worker.actions)),
                    "slot_config": json.dumps(worker.slot_config),
                    "labels": json.dumps(worker.labels),
                    "runtime_info": json.dumps(worker.runtime_info),
                    "status": worker.status,
                    "status_reason": worker.status_reason,
                    "status_changed_at": worker.status_changed_at,
                    "last_heartbeat_at": worker.last_heartbeat_at,
                    "created_at": worker.created_at,
                },
            )
        )

    async def worker_get(self, tenant_id: str, worker_id: str) -> WorkerRecord | None:
        def body(conn: sqlite3.Connection) -> WorkerRecord | None:
            row = conn.execute(Q["worker_get"], {"id": worker_id}).fetchone()
            if row is None or row["tenant_id"] != tenant_id:
                return None
            return _worker(row)

        return await self._read(body)

    async def workers_list(self, tenant_id: str | None = None) -> list[WorkerRecord]:
        def body(conn: sqlite3.Connection) -> list[WorkerRecord]:
            rows = [_worker(r) for r in conn.execute(Q["workers_list"])]
            return [w for w in rows if tenant_id is None or w.tenant_id == tenant_id]

        return await self._read(body)

    async def worker_set_status(
        self, worker_id: str, status: WorkerStatus, reason: str, now: float
    ) -> bool:
        return await self._write(
            lambda conn: (
                conn.execute(
                    Q["worker_set_status"],
                    {"id": worker_id, "status": status, "reason": reason, "now": now},
                ).rowcount
                > 0
            )
        )

    async def worker_heartbeat(self, worker_id: str, now: float) -> None:
        await self._write(
            lambda conn: conn.execute(Q["worker_heartbeat"], {"id": worker_id, "now": now})
        )

    async def worker_set_labels(self, worker_id: str, labels: dict[str, str | int]) -> None:
        await self._write(
            lambda conn: conn.execute(
                Q["worker_set_labels"], {"id": worker_id, "labels": json.dumps(labels)}
            )
        )

    # ------------------------------------------------------------------ logs

    async def logs_insert(self, tenant_id: str, lines: Sequence[LogLine]) -> None:
        def body(conn: sqlite3.Connection) -> None:
            conn.executemany(
                Q["log_insert"],
                [
                    {
                        "tenant_id": tenant_id,
                        "task_id": line.task_id,
                        "created_at": line.created_at,
                        "level": line.level,
                        "message": line.message,
                        "retry_count": line.retry_count,
                    }
                    for line in lines
                ],
            )

        await self._write(body)

    async def logs_list(self, tenant_id: str, task_id: str, limit: int = 1000) -> list[LogLine]:
        def body(conn: sqlite3.Connection) -> list[LogLine]:
            return [
                LogLine(r["task_id"], r["created_at"], r["message"], r["level"], r["retry_count"])
                for r in conn.execute(
                    Q["logs_list"], {"tenant_id": tenant_id, "task_id": task_id, "limit": limit}
                )
            ]

        return await self._read(body)


# ---------------------------------------------------------------------- helpers


def _json_or_empty(text: str | None) -> Any:
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return {}


def _running(row: sqlite3.Row, task_id: str | None = None) -> RunningTask:
    return RunningTask(
        task_id=task_id if task_id is not None else row["id"],
        worker_id=row["worker_id"],
        retry_count=row["retry_count"],
        slot_requests=json.loads(row["slot_requests"]),
        slot_released=bool(row["slot_released"]),
    )


def _rates(text: str) -> tuple[RateClaim, ...]:
    return tuple(RateClaim.from_json(r) for r in json.loads(text or "[]"))


def _gates_json(claims: tuple[GateClaim, ...]) -> str:
    return json.dumps([c.to_json() for c in claims])


def _gates(text: str) -> tuple[GateClaim, ...]:
    return tuple(GateClaim.from_json(c) for c in json.loads(text or "[]"))


def _labels_json(labels: tuple[DesiredLabel, ...]) -> str:
    return json.dumps([d.to_json() for d in labels])


def _labels(text: str) -> tuple[DesiredLabel, ...]:
    return tuple(DesiredLabel.from_json(d) for d in json.loads(text or "[]"))


def _free_attempt(
    conn: sqlite3.Connection, task_id: str, retry_count: int, slot_requests: str
) -> tuple[RunningTask, ...]:
    """Give back an attempt's slot units; what was freed (nothing if it held none)."""
    row = conn.execute(
        Q["attempt_free"], {"task_id": task_id, "retry_count": retry_count}
    ).fetchone()
    if row is None:
        return ()
    return (RunningTask(task_id, row["worker_id"], retry_count, json.loads(slot_requests), False),)


def _free_unstarted(
    conn: sqlite3.Connection, t: RunningTask, now: float
) -> tuple[RunningTask, ...]:
    row = conn.execute(
        Q["attempt_free_unstarted"],
        {"task_id": t.task_id, "retry_count": t.retry_count, "worker_id": t.worker_id, "now": now},
    ).fetchone()
    if row is None:
        return ()
    slots = conn.execute(Q["task_slot_requests"], {"task_id": t.task_id}).fetchone()
    return (RunningTask(t.task_id, t.worker_id, t.retry_count, json.loads(slots[0]), False),)


def _free_draining(conn: sqlite3.Connection, event: TaskEvent) -> tuple[RunningTask, ...]:
    """A report from an attempt the engine already ended: its body returned, so the slot
    it kept (cancelled or timed out while still running) is free now."""
    key = {"task_id": event.task_id, "retry_count": event.retry_count}
    row = conn.execute(
        Q["attempt_draining"], {**key, "worker_id": event.worker_id, "tenant_id": event.tenant_id}
    ).fetchone()
    if row is None:
        return ()
    return _free_attempt(conn, event.task_id, event.retry_count, row["slot_requests"])


def _fail_or_retry(
    conn: sqlite3.Connection, live: sqlite3.Row, event: TaskEvent, now: float
) -> tuple[tuple[QueueItem, ...], tuple[str, ...]]:
    """A failed attempt: retry while app retries remain (unless told not to), else fail."""
    app_retries = live["app_retries"]
    if not event.should_not_retry and app_retries < live["max_retries"]:
        delay = _retry_delay(
            app_retries + 1, live["backoff_factor"], live["backoff_max"], event.retry_after_ms
        )
        row = conn.execute(
            Q["task_requeue"],
            {
                "task_id": event.task_id,
                "retry_count": event.retry_count,
                "worker_id": event.worker_id,
                "app_failure": 1,
                "lost": 0,
                "now": now,
                "available_at": now + delay,
                "error": event.payload,
            },
        ).fetchone()
        return (_queue_item(conn, event.task_id, row, now + delay, now),), ()
    conn.execute(Q["task_fail"], {"task_id": event.task_id, "error": event.payload, "now": now})
    queued, finished = _advance_run(conn, live["run_id"], now)
    return tuple(queued), finished


def _queue_item(
    conn: sqlite3.Connection, task_id: str, row: sqlite3.Row, available_at: float, now: float
) -> QueueItem:
    sticky, pinned = _run_sticky(conn, row["run_id"])
    return QueueItem(
        task_id=task_id,
        tenant_id=row["tenant_id"],
        action_id=row["action_id"],
        priority=row["priority"],
        seq=row["seq"],
        retry_count=row["retry_count"],
        slot_requests=json.loads(row["slot_requests"]),
        available_at=available_at,
        schedule_deadline=now + row["schedule_timeout_s"],
        desired_labels=_labels(row["desired_labels"]),
        # A retried task of a sticky run goes back to the run's worker.
        desired_worker_id=row["desired_worker_id"] or pinned,
        sticky=sticky,
        gates=_gates(row["concurrency"]),
        rates=_rates(row["rate_limits"]),
    )


def _run_sticky(conn: sqlite3.Connection, run_id: str) -> tuple[StickyStrategy | None, str | None]:
    row = conn.execute(Q["run_sticky"], {"run_id": run_id}).fetchone()
    if row is None or not row["sticky"]:
        return None, None
    return StickyStrategy(row["sticky"]), row["sticky_worker_id"]


def _worker(row: sqlite3.Row) -> WorkerRecord:
    return WorkerRecord(
        id=row["id"],
        tenant_id=row["tenant_id"],
        name=row["name"],
        actions=tuple(json.loads(row["actions"])),
        slot_config=json.loads(row["slot_config"]),
        labels=json.loads(row["labels"]),
        status=WorkerStatus(row["status"]),
        status_reason=row["status_reason"],
        status_changed_at=row["status_changed_at"],
        last_heartbeat_at=row["last_heartbeat_at"],
        created_at=row["created_at"],
        runtime_info=json.loads(row["runtime_info"]),
    )


def _retry_delay(
    attempt: int, factor: float | None, max_s: float | None, retry_after_ms: int | None
) -> float:
    """Seconds before retry number ``attempt`` (1 for the first retry) may start."""
    if retry_after_ms is not None and retry_after_ms >= 0:
        return retry_after_ms / 1000.0
    if not factor:
        return 0.0
    cap = max_s if max_s is not None else DEFAULT_BACKOFF_MAX_S
    try:
        return float(min(cap, factor**attempt))
    except OverflowError:
        return cap


def _advance_run(
    conn: sqlite3.Connection, run_id: str, now: float
) -> tuple[list[QueueItem], tuple[str, ...]]:
    """Queue tasks whose parents all completed, skip descendants of failed ones, and settle
    the run once every task is terminal. Runs inside the caller's transaction."""
    rows = list(conn.execute(Q["run_tasks"], {"run_id": run_id}))
    status = {r["readable_id"]: TaskStatus(r["status"]) for r in rows}
    sticky, pinned = _run_sticky(conn, run_id)
    queued: list[QueueItem] = []
    changed = True
    # Skipping cascades down the DAG, so repeat until nothing changes (DAGs are small).
    while changed:
        changed = False
        for r in rows:
            rid = r["readable_id"]
            if status[rid] is not TaskStatus.PENDING:
                continue
            parents = json.loads(r["parents"])
            parent_states = [status.get(p, TaskStatus.COMPLETED) for p in parents]
            if any(s.terminal and s is not TaskStatus.COMPLETED for s in parent_states):
                conn.execute(
                    Q["task_mark_skipped"],
                    {"task_id": r["id"], "now": now, "error": "an upstream task did not complete"},
                )
                status[rid] = TaskStatus.SKIPPED
                changed = True
            elif all(s is TaskStatus.COMPLETED for s in parent_states):
                conn.execute(Q["task_mark_queued"], {"task_id": r["id"], "now": now})
                if pinned is not None:
                    conn.execute(
                        Q["task_set_desired_worker"], {"task_id": r["id"], "worker_id": pinned}
                    )
                status[rid] = TaskStatus.QUEUED
                queued.append(
                    QueueItem(
                        task_id=r["id"],
                        tenant_id="",  # filled below; rows don't carry it
                        action_id=r["action_id"],
                        priority=r["priority"],
                        seq=r["seq"],
                        retry_count=r["retry_count"],
                        slot_requests=json.loads(r["slot_requests"]),
                        schedule_deadline=now + r["schedule_timeout_s"],
                        desired_labels=_labels(r["desired_labels"]),
                        desired_worker_id=pinned,
                        sticky=sticky,
                        gates=_gates(r["concurrency"]),
                        rates=_rates(r["rate_limits"]),
                    )
                )
                changed = True
    if queued:
        tenant = conn.execute(Q["run_tenant"], {"run_id": run_id}).fetchone()[0]
        queued = [replace(q, tenant_id=tenant) for q in queued]
    finished: tuple[str, ...] = ()
    if all(s.terminal for s in status.values()):
        states = set(status.values())
        if TaskStatus.FAILED in states:
            run_status = RunStatus.FAILED
        elif TaskStatus.CANCELLED in states:
            run_status = RunStatus.CANCELLED
        else:
            run_status = RunStatus.COMPLETED
        conn.execute(
            Q["run_set_status"], {"run_id": run_id, "status": run_status, "finished_at": now}
        )
        finished = (run_id,)
    return queued, finished
