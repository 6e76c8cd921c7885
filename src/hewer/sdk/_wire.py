"""Typed edges of the Hatchet wire: builders for requests, plain views of responses.

Generated protobuf classes stay inside this module (and are ``Any`` to mypy); the rest of
the SDK passes the dataclasses below around.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from importlib import metadata
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from hewer._proto import (
    dispatcher_pb2,
    dispatcher_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    workflows_pb2,
    workflows_pb2_grpc,
)
from hewer._proto.hewer.v1 import worker_pb2 as hewer_v1_pb2
from hewer._proto.hewer.v1 import worker_pb2_grpc as hewer_v1_pb2_grpc
from hewer._proto.v1 import dispatcher_pb2 as v1_dispatcher_pb2
from hewer._proto.v1 import dispatcher_pb2_grpc as v1_dispatcher_pb2_grpc
from hewer._proto.v1 import workflows_pb2 as v1_workflows_pb2
from hewer._proto.v1 import workflows_pb2_grpc as v1_workflows_pb2_grpc
from hewer._proto.v1.shared import condition_pb2, trigger_pb2
from hewer.domain import StickyStrategy
from hewer.durations import format_duration
from hewer.sdk._conditions import Condition, ParentCondition, SleepCondition
from hewer.sdk._controls import (
    ConcurrencyExpression,
    ConcurrencyLimitStrategy,
    DesiredWorkerLabel,
    LabelValue,
    RateLimit,
    RateLimitDuration,
    WorkerLabelComparator,
)
from hewer.sdk._options import StatusBasedIdempotencyConfig, TaskOptions, WorkflowOptions


def sdk_version() -> str:
    """The installed Hewer version, reported to the engine at registration."""
    try:
        return metadata.version("hewer")
    except metadata.PackageNotFoundError:
        return "0.0.0"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def set_timestamp(target: Any, at: datetime) -> None:
    """Fill a protobuf Timestamp field with ``at`` (naive counts as UTC, like
    ``Timestamp.FromDatetime``, which is several times slower)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    seconds, micros = divmod((at - _EPOCH) // _MICROSECOND, 1_000_000)
    target.seconds = seconds
    target.nanos = micros * 1000


def timestamp(at: datetime) -> Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    ts = Timestamp()
    set_timestamp(ts, at)
    return ts


# --- stubs -------------------------------------------------------------------------------


def dispatcher_stub(channel: Any) -> Any:
    """``Dispatcher`` stub over a sync or aio channel."""
    return dispatcher_pb2_grpc.DispatcherStub(channel)


def events_stub(channel: Any) -> Any:
    """``EventsService`` stub."""
    return events_pb2_grpc.EventsServiceStub(channel)


def workflow_stub(channel: Any) -> Any:
    """v0 ``WorkflowService`` stub (triggering)."""
    return workflows_pb2_grpc.WorkflowServiceStub(channel)


def admin_stub(channel: Any) -> Any:
    """``v1.AdminService`` stub (registration, run details)."""
    return v1_workflows_pb2_grpc.AdminServiceStub(channel)


def hewer_worker_stub(channel: Any) -> Any:
    """``hewer.v1.Worker`` stub (Hello, batched Listen and Report)."""
    return hewer_v1_pb2_grpc.WorkerStub(channel)


def durable_stub(channel: Any) -> Any:
    """``v1.V1Dispatcher`` stub (the durable task stream)."""
    return v1_dispatcher_pb2_grpc.V1DispatcherStub(channel)


def hewer_runs_stub(channel: Any) -> Any:
    """``hewer.v1.Runs`` stub (batched Wait)."""
    return hewer_v1_pb2_grpc.RunsStub(channel)


# --- enums ---------------------------------------------------------------------------------
# Spelled out rather than looked up by name: the numbers are the contract with the engine,
# and v1's ConcurrencyLimitStrategy has legacy values (DROP_NEWEST=1, QUEUE_NEWEST=2) the
# SDK never sends.

STICKY_STRATEGIES = {
    StickyStrategy.SOFT: v1_workflows_pb2.StickyStrategy.SOFT,
    StickyStrategy.HARD: v1_workflows_pb2.StickyStrategy.HARD,
}

CONCURRENCY_STRATEGIES = {
    ConcurrencyLimitStrategy.CANCEL_IN_PROGRESS: v1_workflows_pb2.CANCEL_IN_PROGRESS,
    ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN: v1_workflows_pb2.GROUP_ROUND_ROBIN,
    ConcurrencyLimitStrategy.CANCEL_NEWEST: v1_workflows_pb2.CANCEL_NEWEST,
    ConcurrencyLimitStrategy.CANCEL_QUEUED_EXCEPT_NEWEST: (
        v1_workflows_pb2.CANCEL_QUEUED_EXCEPT_NEWEST
    ),
    ConcurrencyLimitStrategy.CANCEL_QUEUED_EXCEPT_OLDEST: (
        v1_workflows_pb2.CANCEL_QUEUED_EXCEPT_OLDEST
    ),
}

# Task rate limits use v1's RateLimitDuration, PutRateLimit the v0 one (numbered alike).
RATE_LIMIT_DURATIONS = {
    RateLimitDuration.SECOND: v1_workflows_pb2.SECOND,
    RateLimitDuration.MINUTE: v1_workflows_pb2.MINUTE,
    RateLimitDuration.HOUR: v1_workflows_pb2.HOUR,
    RateLimitDuration.DAY: v1_workflows_pb2.DAY,
    RateLimitDuration.WEEK: v1_workflows_pb2.WEEK,
    RateLimitDuration.MONTH: v1_workflows_pb2.MONTH,
    RateLimitDuration.YEAR: v1_workflows_pb2.YEAR,
}

V0_RATE_LIMIT_DURATIONS = {
    RateLimitDuration.SECOND: workflows_pb2.SECOND,
    RateLimitDuration.MINUTE: workflows_pb2.MINUTE,
    RateLimitDuration.HOUR: workflows_pb2.HOUR,
    RateLimitDuration.DAY: workflows_pb2.DAY,
    RateLimitDuration.WEEK: workflows_pb2.WEEK,
    RateLimitDuration.MONTH: workflows_pb2.MONTH,
    RateLimitDuration.YEAR: workflows_pb2.YEAR,
}

LABEL_COMPARATORS = {
    WorkerLabelComparator.EQUAL: trigger_pb2.EQUAL,
    WorkerLabelComparator.NOT_EQUAL: trigger_pb2.NOT_EQUAL,
    WorkerLabelComparator.GREATER_THAN: trigger_pb2.GREATER_THAN,
    WorkerLabelComparator.GREATER_THAN_OR_EQUAL: trigger_pb2.GREATER_THAN_OR_EQUAL,
    WorkerLabelComparator.LESS_THAN: trigger_pb2.LESS_THAN,
    WorkerLabelComparator.LESS_THAN_OR_EQUAL: trigger_pb2.LESS_THAN_OR_EQUAL,
}


# --- labels, limits ----------------------------------------------------------------------


def set_desired_label(target: Any, label: DesiredWorkerLabel) -> None:
    """Fill a ``DesiredWorkerLabels`` message: the value in its typed field, ``required`` and
    ``comparator`` always (the engine's defaults differ between versions), ``weight`` only
    when given (unset means the engine's default, ``defaults.LABEL_WEIGHT``)."""
    if isinstance(label.value, int):
        target.int_value = label.value
    else:
        target.str_value = label.value
    target.required = label.required
    target.comparator = LABEL_COMPARATORS[label.comparator]
    if label.weight is not None:
        target.weight = label.weight


def set_worker_label(target: Any, value: LabelValue) -> None:
    """Fill a ``WorkerLabels`` message (values were normalized by ``check_worker_labels``)."""
    if isinstance(value, int):
        target.int_value = value
    else:
        target.str_value = value


def set_concurrency(target: Any, limit: ConcurrencyExpression) -> None:
    """Fill a ``v1.Concurrency`` message."""
    target.expression = limit.expression
    target.limit_strategy = CONCURRENCY_STRATEGIES[limit.limit_strategy]
    if limit.max_runs_expression is not None:
        target.max_runs_expression = limit.max_runs_expression
        # The static fallback the engine keeps for keys it has not evaluated yet.
        target.max_runs = 1
    else:
        target.max_runs = limit.max_runs
    if limit.name is not None:
        target.name = limit.name


def set_rate_limit(target: Any, limit: RateLimit) -> None:
    """Fill a ``CreateTaskRateLimit`` the way hatchet-sdk does: ``key`` is the static key or
    the dynamic key's expression (then also in ``key_expr``); int units in ``units``, CEL in
    ``units_expr``; ``limit_values_expr`` is the limit as text, ``"-1"`` when absent (a static
    key's limit comes from PutRateLimit); ``duration`` always."""
    target.key = limit.key
    if limit.dynamic_key is not None:
        target.key_expr = limit.dynamic_key
    if isinstance(limit.units, int):
        target.units = limit.units
    else:
        target.units_expr = limit.units
    target.limit_values_expr = "-1" if limit.limit is None else str(limit.limit)
    target.duration = RATE_LIMIT_DURATIONS[limit.duration]


# --- registration ------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """One task of a workflow as the engine registers it."""

    readable_id: str
    action: str
    parents: tuple[str, ...]
    options: TaskOptions
    namespace: Callable[[str], str] = str  # what event keys of its conditions become


def put_workflow_request(
    name: str,
    tasks: Sequence[TaskSpec],
    options: WorkflowOptions | None = None,
    *,
    on_failure: TaskSpec | None = None,
    event_keys: Sequence[str] = (),
) -> Any:
    """``CreateWorkflowVersionRequest`` for ``v1.AdminService/PutWorkflow``; ``event_keys``
    are ``options.on_events`` namespaced."""
    options = options or WorkflowOptions()
    request = v1_workflows_pb2.CreateWorkflowVersionRequest(name=name)
    for spec in tasks:
        set_task(request.tasks.add(), spec)
    if on_failure is not None:
        set_task(request.on_failure_task, on_failure)
    request.event_triggers.extend(event_keys)
    request.cron_triggers.extend(options.on_crons)
    for f in options.default_filters:
        request.default_filters.add(
            expression=f.expression, scope=f.scope, payload=json.dumps(dict(f.payload)).encode()
        )
    idem = options.idempotency
    if idem is not None:
        by_status = isinstance(idem, StatusBasedIdempotencyConfig)
        ttl = idem.fallback_ttl if isinstance(idem, StatusBasedIdempotencyConfig) else idem.ttl
        request.idempotency.expression = idem.key_expression
        request.idempotency.ttl_ms = int(ttl.total_seconds() * 1000)
        request.idempotency.method = v1_workflows_pb2.STATUS if by_status else v1_workflows_pb2.TTL
    if options.cron_input is not None:
        request.cron_input = json.dumps(dict(options.cron_input), separators=(",", ":"))
    if options.default_priority is not None:
        request.default_priority = options.default_priority
    if options.sticky is not None:
        request.sticky = STICKY_STRATEGIES[options.sticky]
    # Always the repeated field, even for one limit: the scalar ``concurrency`` (field 7) is
    # the legacy single-limit form hatchet-sdk still fills for a lone expression.
    for limit in options.concurrency_limits:
        set_concurrency(request.concurrency_arr.add(), limit)
    return request


def set_task(task: Any, spec: TaskSpec) -> None:
    """Fill a ``CreateTaskOpts`` from a task's spec."""
    opts = spec.options
    task.readable_id = spec.readable_id
    task.action = spec.action
    task.timeout = format_duration(opts.execution_timeout)
    task.inputs = "{}"
    task.parents.extend(spec.parents)
    task.retries = opts.retries
    task.schedule_timeout = format_duration(opts.schedule_timeout)
    task.slot_requests.update(opts.slot_requests)
    task.is_durable = opts.durable
    if opts.backoff_factor is not None:
        task.backoff_factor = opts.backoff_factor
    if opts.backoff_max_seconds is not None:
        task.backoff_max_seconds = opts.backoff_max_seconds
    for key, label in (opts.desired_worker_labels or {}).items():
        set_desired_label(task.worker_labels[key], label)
    for limit in opts.concurrency_limits:
        set_concurrency(task.concurrency.add(), limit)
    for rate_limit in opts.rate_limits or ():
        set_rate_limit(task.rate_limits.add(), rate_limit)
    conditions = opts.conditions()
    if conditions:
        set_conditions(task.conditions, conditions, spec.namespace)


_CONDITION_ACTIONS = {
    "queue": condition_pb2.QUEUE,
    "skip": condition_pb2.SKIP,
    "cancel": condition_pb2.CANCEL,
}


def set_conditions(
    msg: Any, conditions: Sequence[tuple[str, str, Condition]], namespace: Callable[[str], str]
) -> None:
    """Fill ``TaskConditions`` (``wait_for`` queues, ``skip_if`` skips, ``cancel_if``
    cancels)."""
    for action, group, c in conditions:
        if isinstance(c, ParentCondition):
            target = msg.parent_override_conditions.add(parent_readable_id=c.parent.name)
        elif isinstance(c, SleepCondition):
            target = msg.sleep_conditions.add(sleep_for=format_duration(c.duration))
        else:
            target = msg.user_event_conditions.add(user_event_key=namespace(c.event_key))
            if c.scope is not None:
                target.event_scope = c.scope
            if c.consider_events_since is not None:
                target.consider_events_since.FromDatetime(c.consider_events_since)
        target.base.readable_data_key = c.data_key()
        target.base.action = _CONDITION_ACTIONS[action]
        target.base.or_group_id = group
        expression = None if isinstance(c, SleepCondition) else c.expression
        if expression:
            target.base.expression = expression


def register_request(
    worker_name: str,
    actions: Sequence[str],
    slot_config: Mapping[str, int],
    labels: Mapping[str, LabelValue],
) -> Any:
    """``WorkerRegisterRequest`` for ``Dispatcher/Register``."""
    request = dispatcher_pb2.WorkerRegisterRequest(
        worker_name=worker_name,
        actions=list(actions),
        services=["default"],
        runtime_info=dispatcher_pb2.RuntimeInfo(
            sdk_version=sdk_version(),
            language=dispatcher_pb2.PYTHON,
            language_version=platform.python_version(),
            os=platform.system().lower(),
            # Tells the engine this SDK reports when a cancelled body really returns.
            extra=json.dumps({"sdk": "hewer", "reports_cancellation": True}),
        ),
    )
    request.slot_config.update(slot_config)
    for key, value in labels.items():
        set_worker_label(request.labels[key], value)
    return request


def upsert_labels_request(worker_id: str, labels: Mapping[str, LabelValue]) -> Any:
    """``UpsertWorkerLabelsRequest`` for ``Dispatcher/UpsertWorkerLabels``."""
    request = dispatcher_pb2.UpsertWorkerLabelsRequest(worker_id=worker_id)
    for key, value in labels.items():
        set_worker_label(request.labels[key], value)
    return request


def put_rate_limit_request(key: str, limit: int, duration: RateLimitDuration) -> Any:
    """``PutRateLimitRequest`` for ``WorkflowService/PutRateLimit``."""
    return workflows_pb2.PutRateLimitRequest(
        key=key, limit=limit, duration=V0_RATE_LIMIT_DURATIONS[duration]
    )


def get_version_request() -> Any:
    """Empty ``GetVersionRequest``."""
    return dispatcher_pb2.GetVersionRequest()


def listen_request(worker_id: str) -> Any:
    """``WorkerListenRequest`` for ``Dispatcher/ListenV2``."""
    return dispatcher_pb2.WorkerListenRequest(worker_id=worker_id)


# --- hewer.v1: the batched calls -----------------------------------------------------------


@dataclass(frozen=True)
class EngineLimits:
    """What an engine offering ``hewer.v1`` answered to ``Hello``."""

    version: str
    max_actions_per_batch: int
    max_reports_per_call: int
    max_runs_per_wait: int

    @classmethod
    def from_proto(cls, msg: Any) -> EngineLimits:
        """View of a ``HelloResponse``; a zero limit (unset) counts as 1."""
        return cls(
            version=msg.version,
            max_actions_per_batch=max(1, int(msg.max_actions_per_batch)),
            max_reports_per_call=max(1, int(msg.max_reports_per_call)),
            max_runs_per_wait=max(1, int(msg.max_runs_per_wait)),
        )


def hello_request() -> Any:
    """Empty ``HelloRequest``."""
    return hewer_v1_pb2.HelloRequest()


def batch_listen_request(
    worker_id: str, max_batch: int, running: Sequence[tuple[str, int]] = ()
) -> Any:
    """``ListenRequest`` for ``hewer.v1.Worker/Listen``, naming the attempts the worker runs
    (``(task run id, retry count)``)."""
    return hewer_v1_pb2.ListenRequest(
        worker_id=worker_id,
        max_batch=max_batch,
        running=[
            hewer_v1_pb2.RunningAttempt(task_run_external_id=task, retry_count=retry)
            for task, retry in running
        ],
    )


def report_batch(events: Sequence[Any]) -> Any:
    """``ReportBatch`` for ``hewer.v1.Worker/Report``."""
    return hewer_v1_pb2.ReportBatch(events=events)


def wait_request(run_ids: Sequence[str]) -> Any:
    """``WaitRequest`` for ``hewer.v1.Runs/Wait``."""
    return hewer_v1_pb2.WaitRequest(run_ids=run_ids)


def heartbeat_request(worker_id: str, at: datetime) -> Any:
    """``HeartbeatRequest``."""
    return dispatcher_pb2.HeartbeatRequest(worker_id=worker_id, heartbeat_at=timestamp(at))


def unsubscribe_request(worker_id: str) -> Any:
    """``WorkerUnsubscribeRequest``."""
    return dispatcher_pb2.WorkerUnsubscribeRequest(worker_id=worker_id)


# --- actions and their events ------------------------------------------------------------


class ActionKind(IntEnum):
    """``ActionType`` on the wire."""

    START = 0
    CANCEL = 1
    START_GET_GROUP_KEY = 2
    START_BATCH = 3


class EventKind(IntEnum):
    """``StepActionEventType`` values the SDK sends."""

    STARTED = 1
    COMPLETED = 2
    FAILED = 3
    CANCELLED = 5


@dataclass(frozen=True)
class Action:
    """An ``AssignedAction`` from ``ListenV2``, with the id of the worker that received it."""

    worker_id: str
    tenant_id: str
    workflow_run_id: str
    job_id: str
    job_name: str
    job_run_id: str
    task_id: str
    task_run_external_id: str
    action_id: str
    kind: int
    payload: str
    task_name: str
    retry_count: int
    additional_metadata: str | None
    priority: int
    parent_workflow_run_id: str | None = None
    child_index: int = 0
    child_key: str | None = None
    triggering_event_id: str | None = None
    triggering_event_key: str | None = None
    durable_invocation: int = 0
    """Which invocation of a durable task's log this attempt is (0: not said)."""

    @classmethod
    def from_proto(cls, msg: Any, worker_id: str) -> Action:
        """View of an ``AssignedAction`` message."""
        # One per task on the worker's hot path: filling the instance's __dict__ at once is
        # the same object as cls(...) at less than half the cost of a frozen __init__.
        action = object.__new__(cls)
        action.__dict__.update(
            worker_id=worker_id,
            tenant_id=msg.tenant_id,
            workflow_run_id=msg.workflow_run_id,
            job_id=msg.job_id,
            job_name=msg.job_name,
            job_run_id=msg.job_run_id,
            task_id=msg.task_id,
            task_run_external_id=msg.task_run_external_id,
            action_id=msg.action_id,
            kind=int(msg.action_type),
            payload=msg.action_payload,
            task_name=msg.task_name,
            retry_count=int(msg.retry_count),
            additional_metadata=(
                msg.additional_metadata if msg.HasField("additional_metadata") else None
            ),
            priority=int(msg.priority),
            parent_workflow_run_id=(
                msg.parent_workflow_run_id if msg.HasField("parent_workflow_run_id") else None
            ),
            child_index=int(msg.child_workflow_index),
            child_key=msg.child_workflow_key if msg.HasField("child_workflow_key") else None,
            triggering_event_id=(
                msg.triggering_event_external_id
                if msg.HasField("triggering_event_external_id")
                else None
            ),
            triggering_event_key=(
                msg.triggering_event_key if msg.HasField("triggering_event_key") else None
            ),
            durable_invocation=int(msg.durable_task_invocation_count),
        )
        return action


_EVENT_TYPES = {
    EventKind.STARTED: dispatcher_pb2.STEP_EVENT_TYPE_STARTED,
    EventKind.COMPLETED: dispatcher_pb2.STEP_EVENT_TYPE_COMPLETED,
    EventKind.FAILED: dispatcher_pb2.STEP_EVENT_TYPE_FAILED,
    EventKind.CANCELLED: dispatcher_pb2.STEP_EVENT_TYPE_CANCELLED,
}
OUTCOMES = {
    _EVENT_TYPES[kind]: kind.name.lower()
    for kind in (EventKind.COMPLETED, EventKind.FAILED, EventKind.CANCELLED)
}
"""Outcome name (completed, failed, cancelled) of an outcome event's type, for metrics."""


def step_event(
    action: Action,
    kind: EventKind,
    at: datetime,
    *,
    payload: str = "",
    should_not_retry: bool | None = None,
    retry_after_ms: int | None = None,
) -> Any:
    """``StepActionEvent`` reporting on ``action``; echoes the ids the engine fences on."""
    event = dispatcher_pb2.StepActionEvent(
        worker_id=action.worker_id,
        job_id=action.job_id,
        job_run_id=action.job_run_id,
        task_id=action.task_id,
        task_run_external_id=action.task_run_external_id,
        action_id=action.action_id,
        event_type=_EVENT_TYPES[kind],
        event_payload=payload,
        retry_count=action.retry_count,
    )
    set_timestamp(event.event_timestamp, at)
    if should_not_retry is not None:
        event.should_not_retry = should_not_retry
    if retry_after_ms is not None:
        event.retry_after_ms = retry_after_ms
    return event


# --- per-task side calls -----------------------------------------------------------------


def put_log_request(
    task_run_external_id: str, message: str, at: datetime, level: str, retry_count: int
) -> Any:
    """``PutLogRequest``."""
    return events_pb2.PutLogRequest(
        task_run_external_id=task_run_external_id,
        created_at=timestamp(at),
        message=message,
        level=level,
        task_retry_count=retry_count,
    )


def put_stream_request(task_run_external_id: str, data: bytes, at: datetime, index: int) -> Any:
    """``PutStreamEventRequest``."""
    return events_pb2.PutStreamEventRequest(
        task_run_external_id=task_run_external_id,
        created_at=timestamp(at),
        message=data,
        event_index=index,
    )


def refresh_timeout_request(task_run_external_id: str, increment: str) -> Any:
    """``RefreshTimeoutRequest``."""
    return dispatcher_pb2.RefreshTimeoutRequest(
        task_run_external_id=task_run_external_id, increment_timeout_by=increment
    )


def release_slot_request(task_run_external_id: str) -> Any:
    """``ReleaseSlotRequest``."""
    return dispatcher_pb2.ReleaseSlotRequest(task_run_external_id=task_run_external_id)


# --- triggering and results --------------------------------------------------------------


@dataclass(frozen=True)
class Parent:
    """The task a run is triggered from: the run becomes its child."""

    workflow_run_id: str
    task_run_external_id: str
    child_index: int
    child_key: str | None = None


def trigger_request(
    name: str,
    input_json: str,
    *,
    additional_metadata_json: str | None = None,
    priority: int | None = None,
    desired_worker_labels: Mapping[str, DesiredWorkerLabel] | None = None,
    parent: Parent | None = None,
    desired_worker_id: str | None = None,
) -> Any:
    """``v1.TriggerWorkflowRequest``; ``child_index`` is 0 for a top-level run."""
    request = trigger_pb2.TriggerWorkflowRequest(
        name=name, input=input_json, child_index=parent.child_index if parent else 0
    )
    if parent is not None:
        request.parent_id = parent.workflow_run_id
        request.parent_task_run_external_id = parent.task_run_external_id
        if parent.child_key is not None:
            request.child_key = parent.child_key
    if additional_metadata_json is not None:
        request.additional_metadata = additional_metadata_json
    if priority is not None:
        request.priority = priority
    if desired_worker_id is not None:
        request.desired_worker_id = desired_worker_id
    for key, label in (desired_worker_labels or {}).items():
        set_desired_label(request.desired_worker_labels[key], label)
    return request


def bulk_trigger_request(requests: Sequence[Any]) -> Any:
    """``BulkTriggerWorkflowRequest``."""
    return workflows_pb2.BulkTriggerWorkflowRequest(workflows=list(requests))


def subscribe_runs_request(run_id: str) -> Any:
    """``SubscribeToWorkflowRunsRequest``."""
    return dispatcher_pb2.SubscribeToWorkflowRunsRequest(workflow_run_id=run_id)


@dataclass(frozen=True)
class TaskResult:
    """One task's outcome within a finished run."""

    task_name: str
    output: str | None
    error: str | None


@dataclass(frozen=True)
class RunEvent:
    """A finished run as ``SubscribeToWorkflowRuns`` reports it."""

    run_id: str
    results: tuple[TaskResult, ...]

    @classmethod
    def from_proto(cls, msg: Any) -> RunEvent:
        """View of a ``WorkflowRunEvent`` message."""
        return cls(
            run_id=msg.workflow_run_id,
            results=tuple(
                TaskResult(
                    task_name=r.task_name,
                    output=r.output if r.HasField("output") else None,
                    error=r.error if r.HasField("error") else None,
                )
                for r in msg.results
            ),
        )


# --- durable tasks -------------------------------------------------------------------------

DURABLE_NONDETERMINISM = v1_dispatcher_pb2.DURABLE_TASK_ERROR_TYPE_NONDETERMINISM


def durable_register_request(worker_id: str) -> Any:
    """The first message of a ``DurableTask`` stream."""
    return v1_dispatcher_pb2.DurableTaskRequest(
        register_worker=v1_dispatcher_pb2.DurableTaskRequestRegisterWorker(worker_id=worker_id)
    )


def durable_status_request(worker_id: str, entries: Sequence[tuple[str, int, int]]) -> Any:
    """``worker_status``: the entries (task run id, invocation, node) this worker waits on."""
    status = v1_dispatcher_pb2.DurableTaskWorkerStatusRequest(worker_id=worker_id)
    for task_id, invocation, node in entries:
        status.waiting_entries.add(
            durable_task_external_id=task_id, invocation_count=invocation, node_id=node
        )
    return v1_dispatcher_pb2.DurableTaskRequest(worker_status=status)


def durable_wait_request(
    task_id: str,
    invocation: int,
    conditions: Sequence[tuple[str, str, Condition]],
    namespace: Callable[[str], str],
    label: str | None,
) -> Any:
    """``wait_for``: sleeps and events, as ``(action, or-group, condition)``."""
    wait = v1_dispatcher_pb2.DurableTaskWaitForRequest(
        durable_task_external_id=task_id, invocation_count=invocation
    )
    set_conditions(wait.wait_for_conditions, conditions, namespace)
    if label is not None:
        wait.label = label
    return v1_dispatcher_pb2.DurableTaskRequest(wait_for=wait)


def durable_memo_request(task_id: str, invocation: int, key: bytes) -> Any:
    """``memo``: is a value stored under ``key``?"""
    return v1_dispatcher_pb2.DurableTaskRequest(
        memo=v1_dispatcher_pb2.DurableTaskMemoRequest(
            durable_task_external_id=task_id, invocation_count=invocation, key=key
        )
    )


def durable_complete_memo_request(
    task_id: str, invocation: int, node: int, key: bytes, payload: bytes
) -> Any:
    """``complete_memo``: the value computed for a memo entry."""
    ref = v1_dispatcher_pb2.DurableEventLogEntryRef(
        durable_task_external_id=task_id, invocation_count=invocation, node_id=node
    )
    return v1_dispatcher_pb2.DurableTaskRequest(
        complete_memo=v1_dispatcher_pb2.DurableTaskCompleteMemoRequest(
            ref=ref, payload=payload, memo_key=key
        )
    )


def durable_trigger_request(task_id: str, invocation: int, requests: Sequence[Any]) -> Any:
    """``trigger_runs``: child runs (``v1.TriggerWorkflowRequest``s) spawned through the log."""
    return v1_dispatcher_pb2.DurableTaskRequest(
        trigger_runs=v1_dispatcher_pb2.DurableTaskTriggerRunsRequest(
            durable_task_external_id=task_id, invocation_count=invocation, trigger_opts=requests
        )
    )


def durable_evict_request(task_id: str, invocation: int, *, reason: str) -> Any:
    """``evict_invocation``: this worker gives up the waiting invocation and its slot."""
    return v1_dispatcher_pb2.DurableTaskRequest(
        evict_invocation=v1_dispatcher_pb2.DurableTaskEvictInvocationRequest(
            durable_task_external_id=task_id, invocation_count=invocation, reason=reason
        )
    )
