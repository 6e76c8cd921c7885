"""What is queued and running, per task name: the Task Stats API autoscalers poll (KEDA's
``metrics-api`` trigger, ``hewer worker start --autoscale``), and the task counts of the
metrics client.

Read from the store when asked, never kept up to date on the hot path: an autoscaler asks
every few seconds, and one grouped query over the queue indexes answers it.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field

from hewer.domain import TaskStatus
from hewer.engine.core.ingest import gate_spec
from hewer.store import Store

# The task states of upstream's metrics API, and which of ours each one counts. A skipped
# task ended without running because of an ancestor: upstream reports it completed.
METRIC_STATUSES: dict[str, tuple[TaskStatus, ...]] = {
    "QUEUED": (TaskStatus.PENDING, TaskStatus.QUEUED),
    "RUNNING": (TaskStatus.RUNNING,),
    "COMPLETED": (TaskStatus.COMPLETED, TaskStatus.SKIPPED),
    "FAILED": (TaskStatus.FAILED,),
    "CANCELLED": (TaskStatus.CANCELLED,),
}


@dataclass(slots=True)
class ConcurrencyCount:
    """Tasks per key of one concurrency limit (its key expression and strategy)."""

    expression: str
    strategy: str
    keys: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class StatusStat:
    total: int = 0
    queues: dict[str, int] = field(default_factory=dict)
    concurrency: list[ConcurrencyCount] = field(default_factory=list)
    oldest: float | None = None
    oldest_first: float | None = None  # among first attempts (retries left out)

    def add(self, queue: str, count: int, oldest: float, oldest_first: float | None) -> None:
        self.total += count
        self.queues[queue] = self.queues.get(queue, 0) + count
        self.oldest = oldest if self.oldest is None else min(self.oldest, oldest)
        if oldest_first is not None:
            first = self.oldest_first
            self.oldest_first = oldest_first if first is None else min(first, oldest_first)

    def count_key(self, expression: str, strategy: str, key: str) -> None:
        for entry in self.concurrency:
            if entry.expression == expression and entry.strategy == strategy:
                break
        else:
            entry = ConcurrencyCount(expression, strategy)
            self.concurrency.append(entry)
        entry.keys[key] = entry.keys.get(key, 0) + 1


@dataclass(slots=True)
class TaskStat:
    queued: StatusStat = field(default_factory=StatusStat)
    running: StatusStat = field(default_factory=StatusStat)

    def of(self, status: str) -> StatusStat:
        return self.queued if status == TaskStatus.QUEUED else self.running


async def task_stats(
    store: Store, tenant_id: str, names: Collection[str] | None
) -> dict[str, TaskStat]:
    """Per task name, its queued and running tasks. ``names`` given: exactly those names,
    with zeros for a name with nothing queued or running (an autoscaler scaling from zero
    must read 0, not a missing key); None: every name that has some."""
    wanted = None if names is None else sorted(set(names))
    stats: dict[str, TaskStat] = {name: TaskStat() for name in wanted or ()}
    for row in await store.task_stats(tenant_id, wanted):
        stat = stats.setdefault(row.readable_id, TaskStat())
        stat.of(row.status).add(row.queue, row.count, row.oldest, row.oldest_first)
    claim_rows = await store.task_stat_claims(tenant_id, wanted)
    if claim_rows:
        versions = {
            wf.version_id: wf
            for wf in await store.workflow_versions({r.version_id for r in claim_rows})
        }
        for claimed in claim_rows:
            wf = versions.get(claimed.version_id)
            stat = stats.setdefault(claimed.readable_id, TaskStat())
            for gate in json.loads(claimed.claims).get("gates", ()):
                spec = gate_spec(wf, gate["gate"]) if wf is not None else None
                # A limit this version does not name (cannot happen for rows written by
                # this engine) is still counted, under its gate's name.
                expression = spec.expression if spec is not None else gate["gate"]
                stat.of(claimed.status).count_key(expression, gate["strategy"], gate["key"])
    return stats


async def task_counts(
    store: Store,
    tenant_id: str,
    since: float | None,
    until: float | None,
    workflows: Collection[str],
) -> dict[str, int]:
    """Tasks of the runs created in ``[since, until]`` per upstream state (every state
    present, zero when none)."""
    found = await store.task_status_counts(tenant_id, since, until, workflows)
    return {name: sum(found.get(str(s), 0) for s in ours) for name, ours in METRIC_STATUSES.items()}
