"""Domain types: the enums and records the engine core, the store and the SDK share.

Plain dataclasses and StrEnums, no driver or transport types."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hewer import defaults
from hewer.defaults import LABEL_WEIGHT


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskStatus(StrEnum):
    PENDING = "pending"  # waiting for its parents
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # an ancestor failed or was cancelled; never ran

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.SKIPPED}
)


class StickyStrategy(StrEnum):
    """Keep a run's tasks on one worker: SOFT prefers it, HARD waits for it."""

    SOFT = "soft"
    HARD = "hard"


class ConcurrencyStrategy(StrEnum):
    """What happens to a run or task whose concurrency key is full."""

    GROUP_ROUND_ROBIN = "group_round_robin"  # wait; keys take turns
    CANCEL_IN_PROGRESS = "cancel_in_progress"  # the newest wins: oldest running cancelled
    CANCEL_NEWEST = "cancel_newest"  # the newcomer is cancelled
    CANCEL_QUEUED_EXCEPT_NEWEST = "cancel_queued_except_newest"
    CANCEL_QUEUED_EXCEPT_OLDEST = "cancel_queued_except_oldest"


@dataclass(frozen=True, slots=True)
class ConcurrencySpec:
    """A concurrency limit as registered: a key expression and how many may run per key."""

    expression: str
    max_runs: int = 1
    strategy: ConcurrencyStrategy = ConcurrencyStrategy.GROUP_ROUND_ROBIN
    max_runs_expression: str | None = None
    name: str | None = None
    tenant_scoped: bool = False  # shared by every workflow using the same name

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant_scoped": self.tenant_scoped,
            "expression": self.expression,
            "max_runs": self.max_runs,
            "strategy": str(self.strategy),
            "max_runs_expression": self.max_runs_expression,
            "name": self.name,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConcurrencySpec:
        return cls(
            expression=data["expression"],
            max_runs=int(data["max_runs"]),
            strategy=ConcurrencyStrategy(data["strategy"]),
            max_runs_expression=data.get("max_runs_expression"),
            name=data.get("name"),
            tenant_scoped=bool(data.get("tenant_scoped", False)),
        )


@dataclass(frozen=True, slots=True)
class GateClaim:
    """One concurrency limit a queued task must pass: at most ``max_runs`` holders of
    ``(gate, key)`` at once. The holder is the run (workflow-level limits, held until the
    run finishes) or the task (task-level limits, held while its attempt lives)."""

    gate: str
    key: str
    max_runs: int
    strategy: ConcurrencyStrategy
    holder: str
    per_run: bool
    tenant_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "gate": self.gate,
            "key": self.key,
            "max_runs": self.max_runs,
            "strategy": str(self.strategy),
            "holder": self.holder,
            "per_run": self.per_run,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GateClaim:
        return cls(
            data["gate"],
            data["key"],
            int(data["max_runs"]),
            ConcurrencyStrategy(data["strategy"]),
            data["holder"],
            bool(data["per_run"]),
            data["tenant_id"],
        )


@dataclass(frozen=True, slots=True)
class RateLimitSpec:
    """A task's use of a rate limit, as registered. Static: ``key`` names a limit declared
    with PutRateLimit. Dynamic: ``key_expr`` (CEL) names it per run, ``limit_expr`` sets it."""

    key: str | None = None
    key_expr: str | None = None
    units: int | None = None
    units_expr: str | None = None
    limit_expr: str | None = None
    duration_s: float = 60.0

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "key_expr": self.key_expr,
            "units": self.units,
            "units_expr": self.units_expr,
            "limit_expr": self.limit_expr,
            "duration_s": self.duration_s,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RateLimitSpec:
        return cls(
            data.get("key"),
            data.get("key_expr"),
            data.get("units"),
            data.get("units_expr"),
            data.get("limit_expr"),
            float(data.get("duration_s", 60.0)),
        )


@dataclass(frozen=True, slots=True)
class RateClaim:
    """Units of a rate limit a queued task needs before it may start. ``limit`` is set for
    dynamic keys (static ones use the declared limit)."""

    key: str
    units: int
    limit: int | None
    duration_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "units": self.units,
            "limit": self.limit,
            "duration_s": self.duration_s,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RateClaim:
        return cls(data["key"], int(data["units"]), data.get("limit"), float(data["duration_s"]))


@dataclass(frozen=True, slots=True)
class RateLimitRecord:
    tenant_id: str
    key: str
    limit: int
    duration_s: float


class WorkerStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    INACTIVE = "inactive"
    STOPPED = "stopped"


class EventType(StrEnum):
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # a cancelled attempt's body has really returned


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    created_at: float


@dataclass(frozen=True, slots=True)
class ApiToken:
    id: str
    tenant_id: str
    name: str
    created_at: float
    expires_at: float
    revoked_at: float | None


class LabelComparator(StrEnum):
    """How a worker's label value is compared with the desired value (worker OP desired)."""

    EQUAL = "equal"
    NOT_EQUAL = "not_equal"
    GREATER_THAN = "greater_than"
    GREATER_THAN_OR_EQUAL = "greater_than_or_equal"
    LESS_THAN = "less_than"
    LESS_THAN_OR_EQUAL = "less_than_or_equal"


@dataclass(frozen=True, slots=True)
class DesiredLabel:
    """A task's wish about a worker label: required ones filter, satisfied weights rank."""

    key: str
    value: str | int
    comparator: LabelComparator = LabelComparator.EQUAL
    required: bool = False
    weight: int = LABEL_WEIGHT

    def satisfied_by(self, labels: Mapping[str, str | int]) -> bool:
        have = labels.get(self.key)
        if have is None:
            return False
        c = self.comparator
        if c is LabelComparator.EQUAL:
            return have == self.value
        if c is LabelComparator.NOT_EQUAL:
            return have != self.value
        # Ordering comparisons are defined for integers on both sides only.
        if not isinstance(have, int) or not isinstance(self.value, int):
            return False
        if c is LabelComparator.GREATER_THAN:
            return have > self.value
        if c is LabelComparator.GREATER_THAN_OR_EQUAL:
            return have >= self.value
        if c is LabelComparator.LESS_THAN:
            return have < self.value
        return have <= self.value

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "value": self.value,
            "comparator": str(self.comparator),
            "required": self.required,
            "weight": self.weight,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DesiredLabel:
        return cls(
            key=data["key"],
            value=data["value"],
            comparator=LabelComparator(data["comparator"]),
            required=bool(data["required"]),
            weight=int(data["weight"]),
        )


def merge_labels(
    base: tuple[DesiredLabel, ...], override: tuple[DesiredLabel, ...]
) -> tuple[DesiredLabel, ...]:
    """Labels of ``base`` with those of ``override`` replacing any of the same key."""
    keys = {d.key for d in override}
    return tuple(d for d in base if d.key not in keys) + override


class ConditionAction(StrEnum):
    """What a satisfied condition group does to its task (``wait_for`` queues it)."""

    QUEUE = "queue"
    SKIP = "skip"
    CANCEL = "cancel"


class ConditionKind(StrEnum):
    PARENT = "parent"  # a parent's output (CEL over ``output``; no expression: it completed)
    SLEEP = "sleep"  # a time after the task's parents were done
    EVENT = "event"  # a user event pushed after that (CEL over its payload as ``input``)


@dataclass(frozen=True, slots=True)
class ConditionSpec:
    """One condition of a task. Conditions of one action with the same ``group`` are
    alternatives (any one satisfies the group); an action needs each of its groups."""

    kind: ConditionKind
    action: ConditionAction
    group: str
    key: str  # readable_data_key: names the condition (unique within the task)
    expression: str | None = None
    parent: str | None = None
    sleep_s: float | None = None
    event_key: str | None = None
    scope: str | None = None
    events_since: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "action": str(self.action),
            "group": self.group,
            "key": self.key,
            "expression": self.expression,
            "parent": self.parent,
            "sleep_s": self.sleep_s,
            "event_key": self.event_key,
            "scope": self.scope,
            "events_since": self.events_since,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConditionSpec:
        return cls(
            ConditionKind(data["kind"]),
            ConditionAction(data["action"]),
            data["group"],
            data["key"],
            data.get("expression"),
            data.get("parent"),
            data.get("sleep_s"),
            data.get("event_key"),
            data.get("scope"),
            data.get("events_since"),
        )


@dataclass(frozen=True, slots=True)
class TaskDef:
    """One task of a workflow definition, as registered by PutWorkflow."""

    readable_id: str
    action_id: str
    parents: tuple[str, ...] = ()
    retries: int = 0
    timeout_s: float = defaults.EXECUTION_TIMEOUT_S
    schedule_timeout_s: float = defaults.SCHEDULE_TIMEOUT_S
    backoff_factor: float | None = None
    backoff_max_s: float | None = None
    slot_requests: dict[str, int] = field(default_factory=lambda: {defaults.DEFAULT_SLOT_TYPE: 1})
    desired_labels: tuple[DesiredLabel, ...] = ()
    concurrency: tuple[ConcurrencySpec, ...] = ()
    rate_limits: tuple[RateLimitSpec, ...] = ()
    # The workflow's on-failure task: no parents, queued only once the other tasks are all
    # done and one of them failed (skipped otherwise).
    on_failure: bool = False
    conditions: tuple[ConditionSpec, ...] = ()
    # A durable task keeps an event log (DurableLog) its later invocations replay.
    durable: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "durable": self.durable,
            "conditions": [c.to_json() for c in self.conditions],
            "on_failure": self.on_failure,
            "rate_limits": [r.to_json() for r in self.rate_limits],
            "desired_labels": [d.to_json() for d in self.desired_labels],
            "concurrency": [c.to_json() for c in self.concurrency],
            "readable_id": self.readable_id,
            "action_id": self.action_id,
            "parents": list(self.parents),
            "retries": self.retries,
            "timeout_s": self.timeout_s,
            "schedule_timeout_s": self.schedule_timeout_s,
            "backoff_factor": self.backoff_factor,
            "backoff_max_s": self.backoff_max_s,
            "slot_requests": self.slot_requests,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskDef:
        return cls(
            readable_id=data["readable_id"],
            action_id=data["action_id"],
            parents=tuple(data["parents"]),
            retries=data["retries"],
            timeout_s=data["timeout_s"],
            schedule_timeout_s=data["schedule_timeout_s"],
            backoff_factor=data["backoff_factor"],
            backoff_max_s=data["backoff_max_s"],
            slot_requests=dict(data["slot_requests"]),
            desired_labels=tuple(DesiredLabel.from_json(d) for d in data.get("desired_labels", ())),
            concurrency=tuple(ConcurrencySpec.from_json(c) for c in data.get("concurrency", ())),
            rate_limits=tuple(RateLimitSpec.from_json(r) for r in data.get("rate_limits", ())),
            on_failure=bool(data.get("on_failure", False)),
            conditions=tuple(ConditionSpec.from_json(c) for c in data.get("conditions", ())),
            durable=bool(data.get("durable", False)),
        )


@dataclass(frozen=True, slots=True)
class Workflow:
    """One version of a workflow definition. Versions never change once stored: a run keeps
    the definition it was created with."""

    id: str
    tenant_id: str
    name: str
    version_id: str
    tasks: tuple[TaskDef, ...]
    default_priority: int = defaults.DEFAULT_PRIORITY
    sticky: StickyStrategy | None = None
    concurrency: tuple[ConcurrencySpec, ...] = ()  # workflow-level, applied in order
    event_triggers: tuple[str, ...] = ()  # event keys that start a run
    cron_triggers: tuple[str, ...] = ()  # cron expressions declared with the workflow
    cron_input: str | None = None  # the input of runs its declared crons start (JSON)
    idempotency: IdempotencySpec | None = None
    # Declarative event filters: (expression, scope, payload JSON text).
    default_filters: tuple[tuple[str, str, str], ...] = ()
    steps: Mapping[str, TaskDef] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", {t.readable_id: t for t in self.tasks})

    def step(self, readable_id: str) -> TaskDef:
        return self.steps[readable_id]

    def definition_json(self) -> dict[str, Any]:
        """What a version stores (everything but the ids)."""
        return {
            "tasks": [t.to_json() for t in self.tasks],
            "default_priority": self.default_priority,
            "sticky": self.sticky,
            "concurrency": [c.to_json() for c in self.concurrency],
            "event_triggers": list(self.event_triggers),
            "cron_triggers": list(self.cron_triggers),
            "cron_input": self.cron_input,
            "idempotency": self.idempotency.to_json() if self.idempotency else None,
            "default_filters": [list(f) for f in self.default_filters],
        }

    @property
    def on_failure(self) -> TaskDef | None:
        return next((t for t in self.tasks if t.on_failure), None)

    @classmethod
    def from_definition(
        cls, id: str, tenant_id: str, name: str, version_id: str, data: Mapping[str, Any]
    ) -> Workflow:
        return cls(
            id,
            tenant_id,
            name,
            version_id,
            tuple(TaskDef.from_json(t) for t in data["tasks"]),
            data["default_priority"],
            StickyStrategy(data["sticky"]) if data.get("sticky") else None,
            tuple(ConcurrencySpec.from_json(c) for c in data.get("concurrency", ())),
            tuple(data.get("event_triggers", ())),
            tuple(data.get("cron_triggers", ())),
            data.get("cron_input"),
            IdempotencySpec.from_json(data["idempotency"]) if data.get("idempotency") else None,
            tuple((f[0], f[1], f[2]) for f in data.get("default_filters", ())),
        )


class IdempotencyMethod(StrEnum):
    TTL = "ttl"  # a key used once is refused until its TTL has passed
    STATUS = "status"  # refused while the run that used it is unfinished (TTL as a bound)


@dataclass(frozen=True, slots=True)
class IdempotencySpec:
    """A workflow's idempotency: a CEL expression over the input gives each run's key."""

    expression: str
    ttl_s: float
    method: IdempotencyMethod = IdempotencyMethod.TTL

    def to_json(self) -> dict[str, Any]:
        return {"expression": self.expression, "ttl_s": self.ttl_s, "method": str(self.method)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IdempotencySpec:
        return cls(data["expression"], float(data["ttl_s"]), IdempotencyMethod(data["method"]))


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """The key a new run takes (refused while another run of the workflow holds it)."""

    workflow_id: str
    key: str
    expires_at: float
    method: IdempotencyMethod


@dataclass(slots=True, eq=False)
class IdempotencyRow:
    """Who holds a key: the run that took it, until when, and whether that run finished."""

    tenant_id: str
    workflow_id: str
    key: str
    run_id: str
    expires_at: float
    method: str
    run_finished: bool = False


@dataclass(frozen=True, slots=True)
class RunLinks:
    """Where a run came from: the task that spawned it (a child run), or the event that
    triggered it."""

    parent_run_id: str | None = None
    parent_task_id: str | None = None
    child_index: int | None = None
    child_key: str | None = None
    event_id: str | None = None
    event_key: str | None = None
    triggered_by: str = "manual"  # manual | event | cron | schedule
    filter_payload: str | None = None  # the payload of the event filter that let it through


NO_LINKS = RunLinks()


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A pushed event, kept as it arrived."""

    id: str
    tenant_id: str
    key: str
    payload: str  # a JSON object's text
    additional_metadata: str | None
    priority: int | None
    scope: str | None
    created_at: float


@dataclass(slots=True, eq=False)
class FilterRecord:
    """An event filter of a workflow: an event pushed with ``scope`` starts a run of it
    only through a filter of that scope whose ``expression`` holds (``payload`` goes to
    the run). ``declarative`` ones come with the workflow's definition."""

    id: str
    tenant_id: str
    workflow_id: str
    scope: str
    expression: str
    payload: str  # a JSON object's text
    declarative: bool
    created_at: float
    updated_at: float


@dataclass(slots=True, eq=False)
class ScheduleRecord:
    """A run to start once at ``trigger_at``; ``run_id`` is set when it fired."""

    id: str
    tenant_id: str
    workflow_name: str
    trigger_at: float
    input: str
    additional_metadata: str | None
    priority: int | None
    created_at: float
    run_id: str | None = None


@dataclass(slots=True, eq=False)
class CronRecord:
    """A run to start at every tick of a cron expression. ``next_at`` is the next tick to
    fire; ``declared`` crons come with their workflow's definition (named by expression),
    the others were created at run time."""

    id: str
    tenant_id: str
    workflow_name: str
    name: str
    expression: str
    input: str
    additional_metadata: str | None
    priority: int | None
    created_at: float
    next_at: float
    declared: bool = False
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run to create: its id, workflow, input and the tasks derived from the definition."""

    id: str
    workflow: Workflow
    input: str
    additional_metadata: str | None
    priority: int
    task_ids: tuple[str, ...]  # one per workflow task, same order
    desired_labels: tuple[DesiredLabel, ...] = ()  # from the trigger; win over the task's
    desired_worker_id: str | None = None  # a sticky child run starts on its parent's worker
    gates: tuple[tuple[GateClaim, ...], ...] = ()  # per task (same order as task_ids)
    rates: tuple[tuple[RateClaim, ...], ...] = ()  # per task (same order as task_ids)
    links: RunLinks = NO_LINKS
    idempotency: IdempotencyClaim | None = None


@dataclass(frozen=True, slots=True)
class QueueItem:
    """What the scheduler needs to place a ready task; kept in memory while it waits."""

    task_id: str
    tenant_id: str
    action_id: str
    priority: int
    seq: int
    retry_count: int
    slot_requests: dict[str, int]
    available_at: float = 0.0
    schedule_deadline: float | None = None
    desired_labels: tuple[DesiredLabel, ...] = ()
    desired_worker_id: str | None = None
    sticky: StickyStrategy | None = None
    gates: tuple[GateClaim, ...] = ()
    rates: tuple[RateClaim, ...] = ()


@dataclass(frozen=True, slots=True)
class Assignment:
    """A decision of the scheduler: run this attempt of this task on this worker."""

    task_id: str
    tenant_id: str
    worker_id: str
    retry_count: int
    slot_requests: dict[str, int]


@dataclass(frozen=True, slots=True)
class DispatchInfo:
    """Everything a worker needs to start an assigned task (becomes an AssignedAction)."""

    task_id: str
    tenant_id: str
    worker_id: str
    run_id: str
    step_id: str
    workflow_id: str
    workflow_version_id: str
    readable_id: str
    action_id: str
    retry_count: int
    priority: int
    input: str  # the run's input, a JSON object's text
    parents: Mapping[str, str]  # readable id -> output JSON text, of the parents it depends on
    additional_metadata: str | None
    links: RunLinks = NO_LINKS
    errors: Mapping[str, str] | None = None  # an on-failure task's: failed task -> error


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    id: str
    tenant_id: str
    name: str
    actions: tuple[str, ...]
    slot_config: dict[str, int]
    labels: dict[str, str | int]
    status: WorkerStatus
    status_reason: str
    status_changed_at: float
    last_heartbeat_at: float | None
    created_at: float
    runtime_info: dict[str, Any] = field(default_factory=dict)
    owner_token: str | None = None  # the id of the token it registered with


@dataclass(frozen=True, slots=True)
class LeaseState:
    """A scheduling lease as the database holds it: who has it, with which fencing token,
    where that replica listens, and whether it is still within its term (by the database's
    clock)."""

    holder: str
    token: int
    grpc_address: str
    api_address: str
    live: bool
    remaining_s: float


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """An engine replica in the registry."""

    id: str
    grpc_address: str
    api_address: str
    scheduling: bool
    started_at: float
    seen_ago_s: float


@dataclass(frozen=True, slots=True)
class RunningTask:
    """A task held by a worker: what must be given back if that worker is lost."""

    task_id: str
    worker_id: str
    retry_count: int
    slot_requests: dict[str, int]
    slot_released: bool


@dataclass(frozen=True, slots=True)
class TimedOutTask:
    """A running attempt past its execution deadline."""

    tenant_id: str
    task: RunningTask
    timeout_at: float


@dataclass(frozen=True, slots=True)
class TaskResult:
    task_id: str
    readable_id: str
    status: TaskStatus
    output: str | None
    error: str | None
    retry_count: int


@dataclass(frozen=True, slots=True)
class RunDetails:
    id: str
    tenant_id: str
    workflow_name: str
    status: RunStatus
    input: str
    additional_metadata: str | None
    tasks: tuple[TaskResult, ...]

    @property
    def done(self) -> bool:
        return self.status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """A worker's report about one attempt; applied only if the attempt is still live."""

    tenant_id: str
    task_id: str
    retry_count: int
    worker_id: str
    type: EventType
    payload: str = ""
    should_not_retry: bool = False
    retry_after_ms: int | None = None


@dataclass(frozen=True, slots=True)
class EventOutcome:
    """What applying a task event changed, for the scheduler and for waiting clients."""

    applied: bool
    freed: tuple[RunningTask, ...] = ()
    queued: tuple[QueueItem, ...] = ()
    finished: tuple[RunDetails, ...] = ()  # runs this change finished, as they ended
    cancelled: tuple[str, ...] = ()
    stop: tuple[RunningTask, ...] = ()  # attempts whose workers must be told to cancel
    failed: tuple[str, ...] = ()  # tasks failed for good by this change
    ended: tuple[str, ...] = ()  # tasks whose live attempt (or wait) ended
    reason: str = ""

    @property
    def finished_runs(self) -> tuple[str, ...]:
        return tuple(d.id for d in self.finished)


@dataclass(frozen=True, slots=True)
class LogLine:
    task_id: str
    created_at: float
    message: str
    level: str | None
    retry_count: int | None


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs of a tenant an operation applies to; empty fields match everything."""

    since: float | None = None
    until: float | None = None
    statuses: tuple[RunStatus, ...] = ()
    workflows: tuple[str, ...] = ()  # workflow ids or names
    additional_metadata: tuple[tuple[str, str], ...] = ()
    limit: int = 10_000


# ---------------------------------------------------------------------- stored state
#
# The rows below are what the store keeps. The engine core decides every transition on
# working copies of them (loaded in one batch, edited in memory, written back together);
# the store maps them to and from its tables and decides nothing.


@dataclass(slots=True, eq=False)
class TaskRow:
    """A task of a run. One row serves every attempt: ``retry_count`` is the live attempt,
    and reports carrying another number are fenced off. The live (or last) attempt's worker
    and times are kept here; attempts that ended before it are :class:`AttemptRow` s."""

    seq: int  # queue order: FIFO within a priority
    id: str
    tenant_id: str
    run_id: str
    readable_id: str
    action_id: str
    status: TaskStatus
    priority: int
    retry_count: int = 0
    app_retries: int = 0  # attempts that failed in user code
    reassignments: int = 0  # attempts lost with their worker
    worker_id: str | None = None
    acked: bool = False  # the worker said STARTED for the live attempt
    slot_released: bool = False
    desired_worker_id: str | None = None
    claims: str | None = None  # {"gates": [...], "rates": [...]} as evaluated at trigger
    available_at: float = 0.0  # backoff: not before this
    queued_at: float | None = None
    schedule_deadline: float | None = None  # cancelled if still queued then
    assigned_at: float | None = None
    started_at: float | None = None
    timeout_at: float | None = None
    finished_at: float | None = None
    output: str | None = None
    error: str | None = None
    created_at: float = 0.0
    # A task waiting on its conditions (parents done): {"since": t, "hits": [keys]} as JSON.
    # When its next sleep is due is kept apart (Changes.wakes), off the hot path's updates.
    waiting: str | None = None

    def holds_slot(self) -> bool:
        """Whether the live attempt occupies slot units on its worker."""
        return self.status is TaskStatus.RUNNING and not self.slot_released


@dataclass(slots=True, eq=False)
class RunRow:
    id: str
    tenant_id: str
    workflow_id: str
    workflow_name: str
    version_id: str
    status: RunStatus  # QUEUED until it finishes (RUNNING is read off its tasks)
    input: str
    additional_metadata: str | None
    priority: int
    task_count: int
    first_seq: int  # its tasks are the rows first_seq .. first_seq + task_count - 1
    sticky: StickyStrategy | None = None
    sticky_worker_id: str | None = None
    desired_labels: str | None = None  # the trigger's, as JSON; they win over the tasks'
    created_at: float = 0.0
    finished_at: float | None = None
    parent_run_id: str | None = None
    parent_task_id: str | None = None
    child_index: int | None = None
    child_key: str | None = None
    event_id: str | None = None
    event_key: str | None = None
    triggered_by: str = "manual"
    filter_payload: str | None = None

    @property
    def links(self) -> RunLinks:
        return RunLinks(
            self.parent_run_id,
            self.parent_task_id,
            self.child_index,
            self.child_key,
            self.event_id,
            self.event_key,
            self.triggered_by,
            self.filter_payload,
        )


@dataclass(slots=True, eq=False)
class AttemptRow:
    """An attempt that ended while its task went on (retried, re-queued), or that ended for
    the engine while its body may still run (cancelled, timed out, lost): ``holds_slot``
    says its slot units stay taken until its worker reports that the body returned."""

    task_id: str
    retry_count: int
    worker_id: str
    assigned_at: float | None
    started_at: float | None
    finished_at: float | None
    outcome: str | None  # None: the live attempt (only in views built by the core)
    holds_slot: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class QueuePage:
    """A page of one queue in queue order (priority high to low, then seq), starting after
    the position ``after`` = (priority, seq), or at the head."""

    tenant_id: str
    action_id: str
    after: tuple[int, int] | None
    limit: int


@dataclass(frozen=True, slots=True)
class LogQuery:
    """The log lines of one task of a tenant, oldest first."""

    tenant_id: str
    task_id: str
    limit: int = 1000


class DurableKind(StrEnum):
    WAIT = "wait"  # sleeps and user events (DurableEventListenerConditions)
    MEMO = "memo"  # a value computed once by the task body, keyed by its arguments
    RUN = "run"  # a child run spawned by the task


@dataclass(slots=True)
class DurableEntry:
    """One node of a durable task's log: what the body asked for at that point, and (once
    ``done``) what it got. ``order`` numbers the entries of a task as they were satisfied."""

    node: int
    kind: DurableKind
    created_at: float
    conditions: tuple[ConditionSpec, ...] = ()  # WAIT
    hits: dict[str, Any] = field(default_factory=dict)  # WAIT: condition key -> its data
    memo_key: str | None = None  # MEMO: the key (hex)
    child_run_id: str | None = None  # RUN
    label: str | None = None
    done: bool = False
    order: int | None = None
    payload: str | None = None  # JSON text (WAIT, RUN) or the memoised bytes (MEMO, hex)
    failure: bool = False
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "kind": str(self.kind),
            "created_at": self.created_at,
            "conditions": [c.to_json() for c in self.conditions],
            "hits": self.hits,
            "memo_key": self.memo_key,
            "child_run_id": self.child_run_id,
            "label": self.label,
            "done": self.done,
            "order": self.order,
            "payload": self.payload,
            "failure": self.failure,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DurableEntry:
        return cls(
            int(d["node"]),
            DurableKind(d["kind"]),
            float(d["created_at"]),
            tuple(ConditionSpec.from_json(c) for c in d.get("conditions", ())),
            dict(d.get("hits") or {}),
            d.get("memo_key"),
            d.get("child_run_id"),
            d.get("label"),
            bool(d.get("done")),
            d.get("order"),
            d.get("payload"),
            bool(d.get("failure")),
            d.get("error"),
        )


@dataclass(slots=True)
class DurableLog:
    """A durable task's event log. Each invocation of the task (its first run, a retry, a
    resume on another worker or after an eviction) numbers the nodes it reaches from 1; a
    node the log holds already is replayed (its result handed back), not done again.
    ``evicted``: the body left its worker while waiting and is queued again once an entry
    is satisfied."""

    task_id: str
    tenant_id: str
    invocation: int = 0  # the invocation ``cursor`` counts in
    cursor: int = 0  # the last node that invocation reached
    orders: int = 0  # entries satisfied so far
    evicted: bool = False
    entries: dict[int, DurableEntry] = field(default_factory=dict)
    evicted_orders: int = 0  # ``orders`` when it was evicted (resumes once that grows)

    def body(self) -> str:
        return json.dumps(
            {
                "invocation": self.invocation,
                "cursor": self.cursor,
                "orders": self.orders,
                "evicted_orders": self.evicted_orders,
                "entries": [e.to_json() for e in self.entries.values()],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_row(cls, task_id: str, tenant_id: str, evicted: bool, body: str) -> DurableLog:
        d = json.loads(body)
        entries = [DurableEntry.from_json(e) for e in d.get("entries", ())]
        return cls(
            task_id,
            tenant_id,
            int(d.get("invocation", 0)),
            int(d.get("cursor", 0)),
            int(d.get("orders", 0)),
            bool(evicted),
            {e.node: e for e in entries},
            int(d.get("evicted_orders", 0)),
        )


@dataclass(slots=True)
class Keys:
    """What a batch of operations needs loaded before the core can decide it."""

    task_ids: set[str] = field(default_factory=set)  # tasks (or one-task runs) by id
    run_ids: set[str] = field(default_factory=set)  # runs by id, with all their tasks
    running_on: set[str] = field(default_factory=set)  # workers: their running tasks
    attempts_of: set[str] = field(default_factory=set)  # workers: slot-holding/lost attempts
    schedule_ids: set[str] = field(default_factory=set)  # scheduled runs by id
    cron_ids: set[str] = field(default_factory=set)  # crons by id
    # (tenant, parent task, child key): runs already spawned under that key
    child_keys: set[tuple[str, str, str]] = field(default_factory=set)
    # (tenant, event key): the tasks waiting for such an event (loaded with their runs)
    event_waits: set[tuple[str, str]] = field(default_factory=set)
    idempotency_keys: set[tuple[str, str, str]] = field(default_factory=set)  # (t, wf, key)
    # durable tasks by id: their logs (also loaded for the tasks an event waits on)
    durable: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(
            self.durable
            or self.task_ids
            or self.run_ids
            or self.running_on
            or self.attempts_of
            or self.schedule_ids
            or self.cron_ids
            or self.child_keys
            or self.idempotency_keys
            or self.event_waits
        )

    def merge(self, other: Keys) -> None:
        self.task_ids |= other.task_ids
        self.run_ids |= other.run_ids
        self.running_on |= other.running_on
        self.attempts_of |= other.attempts_of
        self.schedule_ids |= other.schedule_ids
        self.cron_ids |= other.cron_ids
        self.child_keys |= other.child_keys
        self.idempotency_keys |= other.idempotency_keys
        self.event_waits |= other.event_waits
        self.durable |= other.durable


@dataclass(slots=True)
class Changes:
    """Rows a batch writes: new ones are inserted in their final state, the others updated."""

    new_runs: dict[str, RunRow] = field(default_factory=dict)
    new_tasks: dict[str, TaskRow] = field(default_factory=dict)
    tasks: dict[str, TaskRow] = field(default_factory=dict)
    runs: dict[str, RunRow] = field(default_factory=dict)
    new_attempts: dict[tuple[str, int], AttemptRow] = field(default_factory=dict)
    attempts: dict[tuple[str, int], AttemptRow] = field(default_factory=dict)
    new_workers: list[WorkerRecord] = field(default_factory=list)
    worker_status: dict[str, tuple[WorkerStatus, str, float]] = field(default_factory=dict)
    heartbeats: dict[str, float] = field(default_factory=dict)
    worker_labels: dict[str, dict[str, str | int]] = field(default_factory=dict)
    logs: list[tuple[str, LogLine]] = field(default_factory=list)
    new_events: list[EventRecord] = field(default_factory=list)
    schedules_fired: dict[str, str] = field(default_factory=dict)  # schedule id -> run id
    cron_next: dict[str, float] = field(default_factory=dict)  # cron id -> next tick
    idempotency: list[IdempotencyRow] = field(default_factory=list)  # keys taken (upserted)
    waits_added: list[tuple[str, str, str]] = field(default_factory=list)  # (t, event, task)
    waits_dropped: set[str] = field(default_factory=set)  # tasks no longer waiting
    wakes: dict[str, float | None] = field(default_factory=dict)  # task -> next sleep due
    durable: dict[str, DurableLog] = field(default_factory=dict)  # logs written whole

    def task(self, row: TaskRow) -> None:
        """Mark a loaded (or new) task row changed."""
        if row.id not in self.new_tasks:
            self.tasks[row.id] = row

    def run(self, row: RunRow) -> None:
        if row.id not in self.new_runs:
            self.runs[row.id] = row

    def attempt(self, row: AttemptRow) -> None:
        key = (row.task_id, row.retry_count)
        if key not in self.new_attempts:
            self.attempts[key] = row

    def __bool__(self) -> bool:
        return any(
            (
                self.new_runs,
                self.new_tasks,
                self.tasks,
                self.runs,
                self.new_attempts,
                self.attempts,
                self.new_workers,
                self.worker_status,
                self.heartbeats,
                self.worker_labels,
                self.logs,
                self.new_events,
                self.schedules_fired,
                self.cron_next,
                self.idempotency,
                self.waits_added,
                self.waits_dropped,
                self.wakes,
                self.durable,
            )
        )


@dataclass(slots=True)
class WorkingSet:
    """Rows loaded for one batch, edited in place by the core, plus what it changed."""

    tasks: dict[str, TaskRow] = field(default_factory=dict)
    runs: dict[str, RunRow] = field(default_factory=dict)
    run_tasks: dict[str, list[TaskRow]] = field(default_factory=dict)  # in seq order
    attempts: dict[tuple[str, int], AttemptRow] = field(default_factory=dict)
    running_on: dict[str, list[TaskRow]] = field(default_factory=dict)
    attempts_of: dict[str, list[AttemptRow]] = field(default_factory=dict)
    versions: dict[str, Workflow] = field(default_factory=dict)  # loaded for these runs
    next_seq: int = 0  # the first queue position reserved for new tasks
    changes: Changes = field(default_factory=Changes)
    # Tasks whose slot-holding attempts are in ``attempts`` (all of them, if any).
    attempts_known: set[str] = field(default_factory=set)
    schedules: dict[str, ScheduleRecord] = field(default_factory=dict)
    crons: dict[str, CronRecord] = field(default_factory=dict)
    # (tenant, parent task, child key) -> the run spawned under it (None: there is none)
    children: dict[tuple[str, str, str], str | None] = field(default_factory=dict)
    idempotency: dict[tuple[str, str, str], IdempotencyRow] = field(default_factory=dict)
    waiters: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # event -> tasks
    durable: dict[str, DurableLog] = field(default_factory=dict)  # task -> its log, if any

    def add_run(self, run: RunRow, tasks: list[TaskRow]) -> None:
        """A run created in this batch."""
        self.runs[run.id] = run
        self.run_tasks[run.id] = tasks
        self.changes.new_runs[run.id] = run
        for t in tasks:
            self.tasks[t.id] = t
            self.changes.new_tasks[t.id] = t
            self.attempts_known.add(t.id)  # new: no attempts yet


def metadata_object(text: str | None) -> dict[str, Any]:
    """A run's additional metadata (JSON text) as a dict: empty when there is none, or
    when the text is not a JSON object."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
