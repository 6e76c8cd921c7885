"""The engine's Prometheus metrics, under upstream Hatchet's names where it has them.

Counters are fed from each committed turn of the engine loop (what the turn wrote: tasks
created and finished, attempts retried or lost, tasks assigned), so they cost a pass over
rows already in memory and nothing on the database. Gauges (queue depth, worker slots) are
read when Prometheus scrapes: the queue depth with one grouped query, the slots from the
scheduler. Labels are tenants, queues (action ids), workflows and slot types, never runs or
tasks, so the series stay bounded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hewer.domain import TaskStatus
from hewer.engine.core.loop import CommitInfo
from hewer.engine.core.service import EngineCore
from hewer.store import Store

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_RETRIED = frozenset({"failed", "timed_out"})
_FINISHED = {
    TaskStatus.COMPLETED: "succeeded",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "cancelled",
    TaskStatus.SKIPPED: "skipped",
}


class EngineMetrics:
    """One registry per engine process (tests run several engines in one process)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.registry = CollectorRegistry()
        r = self.registry

        def twin(name: str, what: str) -> tuple[Counter, Counter]:
            return (
                Counter(f"hatchet_{name}", what, registry=r),
                Counter(f"hatchet_tenant_{name}", f"{what}, per tenant", ["tenant_id"], registry=r),
            )

        self._created = twin("created_tasks", "Tasks created")
        self._finished = {
            status: twin(f"{word}_tasks", f"Tasks that ended {word}")
            for status, word in _FINISHED.items()
        }
        self._retried = twin("retried_tasks", "Attempts that failed and were retried")
        self._reassigned = twin("reassigned_tasks", "Attempts lost with their worker, re-queued")
        self._assigned = twin("assigned_tasks", "Tasks assigned to a worker")
        self._queued_to_assigned = Histogram(
            "hatchet_queued_to_assigned_time_seconds",
            "Time a task waited in its queue before it was assigned",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._commit = Histogram(
            "hewer_store_commit_seconds",
            "Time of one engine loop transaction, from its start to its commit",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._batch = Histogram(
            "hewer_store_batch_ops",
            "Operations (reports, triggers, ...) written by one engine loop transaction",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self._core: EngineCore | None = None
        # What cores of earlier terms counted (their counts live in the core and go with it).
        self._past: dict[str, dict[str, int]] = {"timed_out": {}, "rate_limited": {}}
        self._depths: list[tuple[str, str, str, int]] = []
        r.register(_Gauges(self))

    @property
    def core(self) -> EngineCore | None:
        """The core whose scheduler the slot gauges read: the current term's, None while
        this replica relays (the scheduling replica reports the slots)."""
        return self._core

    @core.setter
    def core(self, core: EngineCore | None) -> None:
        old, self._core = self._core, core
        if old is not None and old is not core:
            for name, counts in _core_counts(old).items():
                past = self._past[name]
                for tenant, n in counts.items():
                    past[tenant] = past.get(tenant, 0) + n

    def counts(self) -> dict[str, dict[str, int]]:
        """Per counter name and tenant, what every term of this process counted."""
        now = _core_counts(self._core) if self._core is not None else {}
        out: dict[str, dict[str, int]] = {}
        for name, past in self._past.items():
            merged = dict(past)
            for tenant, n in now.get(name, {}).items():
                merged[tenant] = merged.get(tenant, 0) + n
            out[name] = merged
        return out

    def committed(self, info: CommitInfo) -> None:
        """Count what one committed turn wrote (called by the engine loop)."""
        self._commit.observe(info.seconds)
        self._batch.observe(info.ops)
        changes = info.changes
        for row in changes.new_tasks.values():
            _inc(self._created, row.tenant_id)
        for rows in (changes.new_tasks.values(), changes.tasks.values()):
            for row in rows:
                pair = self._finished.get(row.status)
                # Stamped with this turn's time: it ended in this turn (a finished task
                # touched again later keeps its old stamp).
                if pair is not None and row.finished_at == info.now:
                    _inc(pair, row.tenant_id)
        for key, attempt in changes.new_attempts.items():
            task = changes.tasks.get(key[0])
            # A later attempt exists: the task went on (it may even be assigned again in
            # this same turn); else the attempt ended the task.
            if task is None or task.retry_count <= key[1]:
                continue
            if attempt.outcome in _RETRIED:
                _inc(self._retried, task.tenant_id)
            elif attempt.outcome == "lost":
                _inc(self._reassigned, task.tenant_id)
        for d in info.dispatched:
            _inc(self._assigned, d.tenant_id)
            # Created and assigned in one turn, the task is among the new rows.
            task = changes.tasks.get(d.task_id) or changes.new_tasks.get(d.task_id)
            if task is not None and task.queued_at is not None and task.assigned_at is not None:
                self._queued_to_assigned.observe(max(0.0, task.assigned_at - task.queued_at))

    async def render(self, tenant_id: str | None = None) -> bytes:
        """The text exposition, with the queue depths read now; ``tenant_id``: only the
        series labelled with that tenant (what the tenant's own metrics route shows)."""
        self._depths = await self.store.queue_depths()
        if tenant_id is None:
            return generate_latest(self.registry)
        return generate_latest(_OneTenant(self.registry, tenant_id))


def _core_counts(core: EngineCore) -> dict[str, dict[str, int]]:
    return {
        "timed_out": dict(core.sweeps.schedule_timeouts),
        "rate_limited": core.scheduler.rate_limited(),
    }


# Counters kept by the core (see EngineMetrics.counts): name, help.
_CORE_COUNTERS = {
    "timed_out": ("scheduling_timed_out", "Queued tasks cancelled at their schedule timeout"),
    "rate_limited": (
        "rate_limited",
        "Times a queued task was held back by a rate limit in a scheduling pass",
    ),
}


def _inc(pair: tuple[Counter, Counter], tenant_id: str) -> None:
    pair[0].inc()
    pair[1].labels(tenant_id).inc()


class _OneTenant(Collector):
    def __init__(self, registry: CollectorRegistry, tenant_id: str) -> None:
        self._registry = registry
        self._tenant_id = tenant_id

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            samples = [s for s in family.samples if s.labels.get("tenant_id") == self._tenant_id]
            # Families without a tenant label (engine-wide ones) are not the tenant's.
            if not samples and not family.name.startswith("hatchet_tenant_"):
                continue
            mine = Metric(family.name, family.documentation, family.type, family.unit)
            mine.samples = samples
            yield mine


class _Gauges(Collector):
    def __init__(self, metrics: EngineMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            "hatchet_tenant_queue_size",
            "Tasks queued, per queue (action id) and workflow",
            labels=["tenant_id", "queue", "workflow_name"],
        )
        for tenant, action, workflow, n in self._metrics._depths:
            queue.add_metric([tenant, action, workflow], n)
        yield queue
        for key, counts in self._metrics.counts().items():
            name, what = _CORE_COUNTERS[key]
            total = CounterMetricFamily(f"hatchet_{name}", what)
            total.add_metric([], sum(counts.values()))
            yield total
            per = CounterMetricFamily(
                f"hatchet_tenant_{name}", f"{what}, per tenant", labels=["tenant_id"]
            )
            for tenant, n in sorted(counts.items()):
                per.add_metric([tenant], n)
            yield per
        core = self._metrics.core
        workers = core.scheduler.worker_labels() if core is not None else []
        yield from _slot_families([(t, cap, used) for t, _, cap, used in workers])
        yield from _label_slot_families(workers)


def _slot_families(
    workers: Iterable[tuple[str, dict[str, int], dict[str, int]]],
) -> Iterator[Metric]:
    limit = GaugeMetricFamily(
        "hatchet_tenant_worker_slots",
        "Slot units of the workers that take tasks, per slot type",
        labels=["tenant_id", "slot_type"],
    )
    used = GaugeMetricFamily(
        "hatchet_tenant_used_worker_slots",
        "Slot units in use on those workers, per slot type",
        labels=["tenant_id", "slot_type"],
    )
    totals: dict[tuple[str, str], list[int]] = {}
    for tenant, capacity, in_use in workers:
        for slot_type, units in capacity.items():
            entry = totals.setdefault((tenant, slot_type), [0, 0])
            entry[0] += units
            entry[1] += in_use.get(slot_type, 0)
    for (tenant, slot_type), (cap, n) in sorted(totals.items()):
        limit.add_metric([tenant, slot_type], cap)
        used.add_metric([tenant, slot_type], n)
    yield limit
    yield used


def _label_slot_families(
    workers: Iterable[tuple[str, dict[str, str | int], dict[str, int], dict[str, int]]],
) -> Iterator[Metric]:
    """Slots per worker label (what affinity-routed work can use), upstream's names."""
    names = ["tenant_id", "label_key", "label_value", "slot_type"]
    limit = GaugeMetricFamily(
        "hatchet_tenant_worker_label_slots",
        "Slot units of the workers carrying a label, per slot type",
        labels=names,
    )
    used = GaugeMetricFamily(
        "hatchet_tenant_used_worker_label_slots",
        "Slot units in use on the workers carrying a label, per slot type",
        labels=names,
    )
    totals: dict[tuple[str, str, str, str], list[int]] = {}
    for tenant, labels, capacity, in_use in workers:
        for key, value in labels.items():
            for slot_type, units in capacity.items():
                entry = totals.setdefault((tenant, key, str(value), slot_type), [0, 0])
                entry[0] += units
                entry[1] += in_use.get(slot_type, 0)
    for labelset, (cap, n) in sorted(totals.items()):
        limit.add_metric(list(labelset), cap)
        used.add_metric(list(labelset), n)
    yield limit
    yield used
