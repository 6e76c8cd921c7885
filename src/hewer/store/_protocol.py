"""The store Protocol: the only way the engine reads or writes durable state.

Internal, not semver. Every backend implements it and passes ``tests/store``. Methods are
named entity-first and take/return the records of :mod:`hewer.domain`.

The store decides nothing. The hot path is one write transaction per batch
(:meth:`Store.write`): the engine core loads the rows a batch of operations needs
(:meth:`StoreTx.load`), decides every transition on those working copies, and hands the
store the changed rows (:meth:`StoreTx.stage`), which it writes in bulk and commits when the
context ends. A caller is answered only after that commit: acknowledged means durable.
Everything else is a read, or a rare write in a transaction of its own.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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
    Tenant,
    WorkerRecord,
    Workflow,
    WorkingSet,
)
from hewer.errors import StoreError

__all__ = [
    "Leases",
    "QueuedRow",
    "Store",
    "StoreError",
    "StoreTx",
    "TaskClaimRow",
    "TaskStatRow",
]


@dataclass(frozen=True, slots=True)
class QueuedRow:
    """A queued task with what the scheduler needs of its run."""

    task: TaskRow
    version_id: str
    sticky: StickyStrategy | None
    sticky_worker_id: str | None
    run_labels: str | None  # the trigger's desired labels (JSON), if any


@dataclass(frozen=True, slots=True)
class TaskStatRow:
    """Queued or running tasks of one name in one queue (action id). ``oldest``: the
    earliest time one of them was queued (queued) or started (running); ``oldest_first``:
    the same among first attempts only (None when every one is a retry)."""

    readable_id: str
    status: str
    queue: str
    count: int
    oldest: float
    oldest_first: float | None


@dataclass(frozen=True, slots=True)
class TaskClaimRow:
    """A queued or running task's concurrency claims (JSON) and its run's workflow
    version (whose limits hold the key expressions)."""

    readable_id: str
    status: str
    version_id: str
    claims: str


class StoreTx(Protocol):
    """One write transaction of the hot path; see the module docstring."""

    async def load(self, keys: Keys, known_versions: Collection[str], seqs: int = 0) -> WorkingSet:
        """Rows for ``keys``, locked for this transaction: the tasks named (by id), the
        running tasks and the slot-holding or lost attempts of the workers named, the runs of
        all those tasks and of the runs named, every task of the runs named and of runs with
        more than one task, the slot-holding attempts of every loaded task, and the workflow
        versions of the loaded runs missing from ``known_versions``, the scheduled runs and
        crons named, and the run spawned under each (tenant, parent task, child key) named
        (``WorkingSet.children``, None where there is none). ``seqs`` reserves that
        many queue positions for new tasks (``WorkingSet`` holds the first in
        ``next_seq``)."""

    async def load_more(self, ws: WorkingSet, keys: Keys, known_versions: Collection[str]) -> None:
        """Load more rows into ``ws`` (rows already in it keep their working copies)."""

    def stage(self, changes: Changes) -> None:
        """Rows to write when the transaction commits (new rows inserted in their final
        state, the others updated)."""


class Store(Protocol):
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None:
        """Release connections; idempotent."""

    async def ping(self) -> None:
        """One round trip to the database on the connection writes use (raises
        StoreError if it does not answer in time): how the engine learns that a database
        it lost is back."""

    def write(self) -> AbstractAsyncContextManager[StoreTx]:
        """A write transaction; committed when the context ends without an exception."""

    # installation settings
    async def meta_get_or_set(self, key: str, default: str) -> str:
        """Return the stored value of ``key``, storing ``default`` first if absent."""

    # tenants and tokens
    async def tenant_ensure(self, name: str, now: float) -> Tenant: ...
    async def tenant_get(self, tenant_id: str) -> Tenant | None: ...
    async def token_insert(self, token: ApiToken) -> None: ...
    async def token_get(self, token_id: str) -> ApiToken | None: ...
    async def token_revoke(self, token_id: str, now: float) -> bool: ...

    # workflows
    async def workflow_put(self, workflow: Workflow, checksum: str, now: float) -> Workflow:
        """Make ``workflow`` (ids ignored) the tenant's current version of its name; returns
        it with its stored ids. The workflow id is stable per (tenant, name); a new version
        is stored only when ``checksum`` differs from the current version's."""

    async def workflow_get_by_name(self, tenant_id: str, name: str) -> Workflow | None:
        """The current version of a workflow."""

    async def workflow_versions(self, version_ids: Collection[str]) -> list[Workflow]: ...

    async def workflows_current(self, tenant_id: str) -> list[Workflow]:
        """The current version of every workflow of the tenant, by name."""

    # runs and tasks (reads)
    async def run_get(self, tenant_id: str, run_id: str) -> tuple[RunRow, list[TaskRow]] | None:
        """A run and its tasks (seq order)."""

    async def runs_get(
        self, tenant_id: str, run_ids: Collection[str]
    ) -> list[tuple[RunRow, list[TaskRow]]]:
        """Those of ``run_ids`` the tenant has, each with its tasks."""

    async def runs_find(self, tenant_id: str, match: RunFilter) -> list[str]:
        """Ids of the tenant's runs that match, newest first, at most ``match.limit``."""

    async def task_run_id(self, tenant_id: str, task_id: str) -> str | None: ...

    async def tasks_wake_due(self, now: float, limit: int) -> list[TaskRow]:
        """Tasks waiting on conditions whose next sleep condition is due."""

    async def durable_get(self, tenant_id: str, task_id: str) -> DurableLog | None:
        """A durable task's event log (None: it has none yet)."""

    async def durable_evicted(self, limit: int) -> list[tuple[str, str]]:
        """(tenant id, task id) of durable tasks evicted from their workers."""

    async def runs_children(self, tenant_id: str, parent_task_ids: Collection[str]) -> list[str]:
        """Ids of the unfinished runs spawned by any of ``parent_task_ids``."""

    async def queue_depths(self) -> list[tuple[str, str, str, int]]:
        """(tenant id, action id, workflow name, queued tasks) for every non-empty queue."""

    async def task_stats(self, tenant_id: str, names: Collection[str] | None) -> list[TaskStatRow]:
        """Queued and running tasks per (name, status, queue); ``names`` None: every name."""

    async def task_stat_claims(
        self, tenant_id: str, names: Collection[str] | None
    ) -> list[TaskClaimRow]:
        """Every queued or running task with concurrency claims (``names`` as above)."""

    async def task_status_counts(
        self,
        tenant_id: str,
        since: float | None,
        until: float | None,
        workflows: Collection[str],
    ) -> dict[str, int]:
        """Tasks per status among the tenant's runs created in ``[since, until]`` of
        ``workflows`` (ids or names; empty: all)."""

    async def queue_keys(self) -> list[tuple[str, str]]:
        """(tenant id, action id) of every queue with queued tasks."""

    async def tasks_queued_page(self, page: QueuePage) -> list[QueuedRow]:
        """Queued tasks of one queue, in queue order (see :class:`QueuePage`)."""

    async def tasks_running(self) -> list[tuple[TaskRow, str]]:
        """Every running task with its run's version id (rebuilds slot accounting)."""

    async def attempts_holding(self) -> list[tuple[AttemptRow, TaskRow, str]]:
        """Ended attempts still holding slot units, with their task and its version id."""

    async def attempts_list(self, tenant_id: str | None = None) -> list[AttemptRow]:
        """Every ended attempt kept apart from its task row (tests, history views)."""

    async def tasks_list(self, tenant_id: str | None = None) -> list[TaskRow]:
        """Every task (tests, history views)."""

    async def runs_list(self, tenant_id: str | None = None) -> list[RunRow]:
        """Every run (tests, history views)."""

    async def tasks_timed_out(self, now: float, limit: int) -> list[TaskRow]:
        """Running tasks whose execution deadline has passed, earliest first."""

    async def tasks_unacked(self, cutoff: float, limit: int) -> list[TaskRow]:
        """Running tasks assigned before ``cutoff`` that no worker acknowledged (STARTED)."""

    async def tasks_schedule_expired(self, now: float, limit: int) -> list[TaskRow]:
        """Queued tasks past their schedule deadline."""

    async def gates_held(self) -> list[GateClaim]:
        """Concurrency claims held now (rebuilds the scheduler's gates after a restart): a
        running task holds its task-level claims; a started, unfinished run its run-level
        ones."""

    # rate limits
    async def rate_limit_put(self, record: RateLimitRecord, now: float) -> None: ...
    async def rate_limits_list(self) -> list[RateLimitRecord]: ...

    # workers (writes go through StoreTx.stage)
    async def worker_get(self, tenant_id: str, worker_id: str) -> WorkerRecord | None: ...
    async def workers_list(self, tenant_id: str | None = None) -> list[WorkerRecord]: ...

    # logs (writes go through StoreTx.stage)
    async def logs_list(self, query: LogQuery) -> list[LogLine]: ...

    # event filters
    async def filters_of(self, tenant_id: str, workflow_ids: Collection[str]) -> list[FilterRecord]:
        """Every filter of the workflows named (any scope)."""

    async def filters_list(
        self,
        tenant_id: str,
        workflow_ids: Collection[str] | None,
        scopes: Collection[str] | None,
        limit: int,
        offset: int,
    ) -> list[FilterRecord]: ...
    async def filter_get(self, tenant_id: str, filter_id: str) -> FilterRecord | None: ...
    async def filter_put(self, record: FilterRecord) -> None:
        """Insert the filter, or change the scope, expression and payload of the one with its
        id."""

    async def filter_delete(self, tenant_id: str, filter_id: str) -> bool: ...
    async def filters_declare(
        self, tenant_id: str, workflow_id: str, records: Sequence[FilterRecord]
    ) -> None:
        """Replace the workflow's declarative filters with ``records``."""

    # events (inserted through StoreTx.stage, with the runs they start)
    async def events_list(
        self, tenant_id: str, keys: Collection[str] | None, limit: int, offset: int
    ) -> list[EventRecord]:
        """The tenant's events, newest first (``keys`` None: every key)."""

    async def event_get(self, tenant_id: str, event_id: str) -> EventRecord | None: ...

    # scheduled runs (fired through StoreTx.stage, with the run they start)
    async def schedule_insert(self, records: Sequence[ScheduleRecord]) -> None: ...
    async def schedules_due(self, now: float, limit: int) -> list[ScheduleRecord]:
        """Scheduled runs not fired yet whose time has come, earliest first."""

    async def schedule_next(self) -> float | None:
        """The earliest time a scheduled run not fired yet is due (None: there is none)."""

    async def schedules_list(
        self, tenant_id: str, workflow_name: str | None, limit: int, offset: int
    ) -> list[ScheduleRecord]:
        """The tenant's scheduled runs (fired or not), by trigger time."""

    async def schedule_get(self, tenant_id: str, schedule_id: str) -> ScheduleRecord | None: ...
    async def schedule_delete(self, tenant_id: str, schedule_id: str) -> bool: ...
    async def schedule_move(self, tenant_id: str, schedule_id: str, trigger_at: float) -> bool:
        """Give a scheduled run that has not fired a new time (False: none such)."""

    # crons (ticks advanced through StoreTx.stage, with the run they start)
    async def cron_insert(self, record: CronRecord) -> None:
        """Raises AlreadyExists if the workflow has a cron of that name."""

    async def crons_declare(
        self, tenant_id: str, workflow_name: str, records: Sequence[CronRecord]
    ) -> None:
        """Make ``records`` the workflow's declared crons: those of another name go, new
        names are inserted, existing ones are kept as they are (their next tick too)."""

    async def crons_due(self, now: float, limit: int) -> list[CronRecord]:
        """Enabled crons whose next tick has come, earliest first."""

    async def cron_next(self) -> float | None:
        """The earliest next tick of an enabled cron (None: there is none)."""

    async def crons_list(
        self,
        tenant_id: str,
        workflow_name: str | None,
        limit: int,
        offset: int,
        name: str | None = None,
    ) -> list[CronRecord]:
        """The tenant's crons (of one workflow, of one name), oldest first."""

    async def cron_get(self, tenant_id: str, cron_id: str) -> CronRecord | None: ...
    async def cron_delete(self, tenant_id: str, cron_id: str) -> bool: ...


@runtime_checkable
class Leases(Protocol):
    """What a store shared by several engine replicas adds (PostgreSQL): the scheduling
    lease, its fencing, and the registry of replicas. Times come from the database's clock.
    A store without it (SQLite) has one engine, which always schedules."""

    def fence(self, lease: str, token: int) -> None:
        """From now on, every write transaction first checks that ``lease`` still has
        ``token`` (and keeps it from changing hands until it commits); if not, it is rolled
        back with :class:`~hewer.errors.LeaseLost`."""

    async def lease_claim(
        self, lease: str, holder: str, grpc_address: str, api_address: str, ttl_s: float
    ) -> int | None:
        """Take ``lease`` if it is free, expired or already ``holder``'s; returns the new
        fencing token, or None when another replica holds it."""

    async def lease_renew(self, lease: str, token: int, ttl_s: float) -> bool:
        """Extend the term of the lease held with ``token``; False if it changed hands."""

    async def lease_release(self, lease: str, token: int) -> None:
        """End the term now (a clean shutdown), so another replica may take it at once."""

    async def lease_get(self, lease: str) -> LeaseState | None: ...

    async def replica_seen(
        self, replica_id: str, grpc_address: str, api_address: str, scheduling: bool, fresh: bool
    ) -> None:
        """Record the replica as alive now (``fresh``: it has just started)."""

    async def replica_gone(self, replica_id: str) -> None: ...

    async def replicas_list(self) -> list[ReplicaRecord]: ...
