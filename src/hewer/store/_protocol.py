"""The store Protocol: the only way the engine reads or writes durable state.

Internal, not semver. Every backend implements it and passes ``tests/store``. Methods are
named entity-first and take/return the records of :mod:`hewer.domain`. Methods that
change several rows do so in one transaction: a caller never sees half of a decision.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from hewer.domain import (
    ApiToken,
    Assignment,
    ConcurrencySpec,
    DispatchInfo,
    EventOutcome,
    GateClaim,
    LogLine,
    NewRun,
    QueueItem,
    RateLimitRecord,
    RunDetails,
    RunFilter,
    RunningTask,
    StickyStrategy,
    TaskDef,
    TaskEvent,
    Tenant,
    TimedOutTask,
    WorkerRecord,
    WorkerStatus,
    Workflow,
)


class Store(Protocol):
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None:
        """Release connections; idempotent."""

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
    ) -> Workflow: ...
    async def workflow_get_by_name(self, tenant_id: str, name: str) -> Workflow | None: ...

    # runs and tasks
    async def runs_create(self, runs: Sequence[NewRun], now: float) -> list[QueueItem]:
        """Write runs with all their tasks; returns the root tasks, now queued."""

    async def run_get(self, tenant_id: str, run_id: str) -> RunDetails | None: ...
    async def runs_find(self, tenant_id: str, match: RunFilter) -> list[str]:
        """Ids of the tenant's runs that match, newest first, at most ``match.limit``."""

    async def tasks_queued(self) -> list[QueueItem]: ...
    async def tasks_running(self, worker_id: str | None = None) -> list[RunningTask]: ...
    async def tasks_assign(
        self, assignments: Sequence[Assignment], now: float
    ) -> list[DispatchInfo]:
        """Apply scheduler decisions; a task no longer queued at that attempt is skipped."""

    async def task_apply_event(self, event: TaskEvent, now: float) -> EventOutcome:
        """Apply a worker's report if its attempt is live; advance the DAG and the run."""

    async def tasks_time_out(
        self, timed_out: Sequence[TimedOutTask], hold_slots_of: Collection[str], now: float
    ) -> EventOutcome:
        """End attempts past their execution timeout as failures (retried if retries remain),
        in one transaction; those still live are named in ``stop`` (to cancel on their
        workers). On workers in ``hold_slots_of`` the slot stays taken until the worker
        reports that the body returned."""

    async def tasks_requeue(
        self,
        tasks: Sequence[RunningTask],
        reason: str,
        now: float,
        *,
        max_reassignments: int | None = None,
        count: bool = True,
    ) -> EventOutcome:
        """Give attempts that were lost a new attempt, fenced on (task, attempt, worker).

        ``freed`` holds the slot units given back, ``queued`` the new attempts. With
        ``count`` the loss counts as a reassignment; a task already reassigned
        ``max_reassignments`` times fails instead, with a reason naming the lost worker.
        """

    async def tasks_schedule_expired(self, now: float, limit: int = 500) -> list[tuple[str, str]]:
        """(tenant id, task id) of queued tasks past their schedule timeout."""

    async def rate_limit_put(self, record: RateLimitRecord, now: float) -> None:
        """Declare (or change) a static rate limit."""

    async def rate_limits_list(self) -> list[RateLimitRecord]:
        """Every declared rate limit (loaded at start)."""

    async def gates_held(self) -> list[GateClaim]:
        """Concurrency claims held now (rebuilds the scheduler's gates after a restart)."""

    async def attempts_recall(self, worker_id: str, hold: bool, since: float) -> list[RunningTask]:
        """Attempts taken from a worker (lost since ``since``) that was declared lost and is
        back; with ``hold`` they take their slots again until it reports that they ended."""

    async def attempts_holding(self) -> list[RunningTask]:
        """Every attempt holding slot units (rebuilds slot accounting after a restart)."""

    async def worker_drop_attempts(self, worker_id: str, now: float) -> int:
        """The worker is gone: none of its attempts holds a slot any more."""

    async def tasks_unstarted(self, cutoff: float, limit: int = 500) -> list[RunningTask]:
        """Attempts assigned before ``cutoff`` that no worker acknowledged (STARTED)."""

    async def tasks_cancel(
        self,
        tenant_id: str,
        task_ids: Sequence[str],
        reason: str,
        now: float,
        hold_slots_of: Collection[str] = (),
    ) -> EventOutcome:
        """Cancel tasks (and runs, given run ids) that are not terminal yet. Running
        attempts on workers in ``hold_slots_of`` keep their slots until those workers report
        that the body returned; ``stop`` names the attempts to cancel on their workers."""

    async def tasks_timed_out(self, now: float, limit: int = 500) -> list[TimedOutTask]:
        """Running attempts whose execution deadline has passed."""

    async def task_run_id(self, tenant_id: str, task_id: str) -> str | None: ...
    async def task_release_slot(self, tenant_id: str, task_id: str) -> RunningTask | None: ...
    async def task_refresh_timeout(
        self, tenant_id: str, task_id: str, seconds: float, now: float
    ) -> float | None: ...

    # workers
    async def worker_insert(self, worker: WorkerRecord) -> None: ...
    async def worker_get(self, tenant_id: str, worker_id: str) -> WorkerRecord | None: ...
    async def workers_list(self, tenant_id: str | None = None) -> list[WorkerRecord]: ...
    async def worker_set_status(
        self, worker_id: str, status: WorkerStatus, reason: str, now: float
    ) -> bool: ...
    async def worker_heartbeat(self, worker_id: str, now: float) -> None: ...
    async def worker_set_labels(self, worker_id: str, labels: dict[str, str | int]) -> None: ...

    # logs
    async def logs_insert(self, tenant_id: str, lines: Sequence[LogLine]) -> None: ...
    async def logs_list(self, tenant_id: str, task_id: str, limit: int = 1000) -> list[LogLine]: ...
