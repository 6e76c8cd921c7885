"""Service ``v1.AdminService``: workflow registration, run details, cancellation."""

from __future__ import annotations

from typing import Any

from hewer import defaults
from hewer._proto.v1 import workflows_pb2 as pb
from hewer._proto.v1 import workflows_pb2_grpc as pb_grpc
from hewer._proto.v1.shared import condition_pb2
from hewer.domain import (
    ConcurrencySpec,
    ConcurrencyStrategy,
    ConditionAction,
    ConditionKind,
    ConditionSpec,
    IdempotencyMethod,
    IdempotencySpec,
    RateLimitSpec,
    RunDetails,
    RunStatus,
    StickyStrategy,
    TaskDef,
    TaskStatus,
)
from hewer.durations import parse_duration
from hewer.engine.api.filters import run_filter
from hewer.engine.grpc._common import Servicer, caller, seconds_of, unary
from hewer.engine.grpc._labels import desired_labels
from hewer.errors import InvalidInput, NotSupported, TooLarge

_STICKY = {pb.SOFT: StickyStrategy.SOFT, pb.HARD: StickyStrategy.HARD}

RUN_STATUS = {
    RunStatus.QUEUED: pb.QUEUED,
    RunStatus.RUNNING: pb.RUNNING,
    RunStatus.COMPLETED: pb.COMPLETED,
    RunStatus.FAILED: pb.FAILED,
    RunStatus.CANCELLED: pb.CANCELLED,
}
TASK_STATUS = {
    TaskStatus.PENDING: pb.QUEUED,
    TaskStatus.QUEUED: pb.QUEUED,
    TaskStatus.RUNNING: pb.RUNNING,
    TaskStatus.COMPLETED: pb.COMPLETED,
    TaskStatus.FAILED: pb.FAILED,
    TaskStatus.CANCELLED: pb.CANCELLED,
}


def _seconds(text: str, default: float, what: str) -> float:
    if not text:
        return default
    seconds = parse_duration(text).total_seconds()
    if seconds <= 0:
        raise InvalidInput(f"{what} must be positive, got {text!r}")
    return seconds


# The legacy v0 values map onto the strategies that mean the same thing.
_STRATEGY = {
    pb.CANCEL_IN_PROGRESS: ConcurrencyStrategy.CANCEL_IN_PROGRESS,
    pb.DROP_NEWEST: ConcurrencyStrategy.CANCEL_NEWEST,
    pb.QUEUE_NEWEST: ConcurrencyStrategy.GROUP_ROUND_ROBIN,
    pb.GROUP_ROUND_ROBIN: ConcurrencyStrategy.GROUP_ROUND_ROBIN,
    pb.CANCEL_NEWEST: ConcurrencyStrategy.CANCEL_NEWEST,
    pb.CANCEL_QUEUED_EXCEPT_NEWEST: ConcurrencyStrategy.CANCEL_QUEUED_EXCEPT_NEWEST,
    pb.CANCEL_QUEUED_EXCEPT_OLDEST: ConcurrencyStrategy.CANCEL_QUEUED_EXCEPT_OLDEST,
}


def concurrency_spec(msg: Any) -> ConcurrencySpec:
    """A ``Concurrency`` message; upstream's defaults (CANCEL_IN_PROGRESS, 1) when unset."""
    if not msg.expression.strip():
        raise InvalidInput("concurrency expression must not be empty")
    strategy = ConcurrencyStrategy.CANCEL_IN_PROGRESS
    if msg.HasField("limit_strategy"):
        if msg.limit_strategy not in _STRATEGY:
            raise InvalidInput(f"unknown concurrency strategy {msg.limit_strategy}")
        strategy = _STRATEGY[msg.limit_strategy]
    return ConcurrencySpec(
        expression=msg.expression,
        max_runs=msg.max_runs if msg.HasField("max_runs") else 1,
        strategy=strategy,
        max_runs_expression=(
            msg.max_runs_expression if msg.HasField("max_runs_expression") else None
        ),
        name=msg.name if msg.HasField("name") else None,
        tenant_scoped=msg.is_tenant_scoped if msg.HasField("is_tenant_scoped") else False,
    )


# Upstream's RateLimitDuration, in seconds (a month is 30 days, a year 365).
RATE_LIMIT_SECONDS: dict[int, float] = {
    pb.SECOND: 1.0,
    pb.MINUTE: 60.0,
    pb.HOUR: 3600.0,
    pb.DAY: 86400.0,
    pb.WEEK: 7 * 86400.0,
    pb.MONTH: 30 * 86400.0,
    pb.YEAR: 365 * 86400.0,
}


def rate_limit_seconds(duration: int) -> float:
    if duration not in RATE_LIMIT_SECONDS:
        raise InvalidInput(f"unknown rate limit duration {duration}")
    return RATE_LIMIT_SECONDS[duration]


def rate_limit_spec(task: str, msg: Any) -> RateLimitSpec:
    """A ``CreateTaskRateLimit``: dynamic when it has a key expression; a limit of "-1" (or
    none) means the limit declared with PutRateLimit."""
    limit = msg.limit_values_expr if msg.HasField("limit_values_expr") else None
    if limit is not None and limit.strip() in ("", "-1"):
        limit = None
    key_expr = msg.key_expr if msg.HasField("key_expr") and msg.key_expr else None
    if key_expr is None and not msg.key:
        raise InvalidInput(f"task {task!r}: a rate limit needs a key")
    return RateLimitSpec(
        key=None if key_expr else msg.key,
        key_expr=key_expr,
        units=msg.units if msg.HasField("units") else None,
        units_expr=msg.units_expr if msg.HasField("units_expr") and msg.units_expr else None,
        limit_expr=limit,
        duration_s=rate_limit_seconds(msg.duration) if msg.HasField("duration") else 60.0,
    )


def task_def(opts: Any, *, on_failure: bool = False) -> TaskDef:
    """A registered task from ``CreateTaskOpts``; features not built yet are refused."""
    name = opts.readable_id
    if opts.HasField("batch"):
        raise NotSupported(f"task {name!r} uses batching: not supported yet")
    return TaskDef(
        readable_id=name,
        durable=opts.is_durable,
        action_id=opts.action,
        parents=tuple(opts.parents),
        retries=opts.retries,
        timeout_s=_seconds(opts.timeout, defaults.EXECUTION_TIMEOUT_S, f"task {name!r} timeout"),
        schedule_timeout_s=_seconds(
            opts.schedule_timeout if opts.HasField("schedule_timeout") else "",
            defaults.SCHEDULE_TIMEOUT_S,
            f"task {name!r} schedule_timeout",
        ),
        backoff_factor=opts.backoff_factor if opts.HasField("backoff_factor") else None,
        backoff_max_s=(
            float(opts.backoff_max_seconds) if opts.HasField("backoff_max_seconds") else None
        ),
        slot_requests={k: int(v) for k, v in opts.slot_requests.items()}
        or {defaults.DEFAULT_SLOT_TYPE: 1},
        desired_labels=desired_labels(opts.worker_labels),
        concurrency=tuple(concurrency_spec(c) for c in opts.concurrency),
        rate_limits=tuple(rate_limit_spec(name, r) for r in opts.rate_limits),
        on_failure=on_failure,
        conditions=task_conditions(name, opts.conditions) if opts.HasField("conditions") else (),
    )


_ACTIONS = {
    condition_pb2.CREATE: ConditionAction.QUEUE,
    condition_pb2.QUEUE: ConditionAction.QUEUE,
    condition_pb2.CANCEL: ConditionAction.CANCEL,
    condition_pb2.SKIP: ConditionAction.SKIP,
}


def task_conditions(task: str, msg: Any) -> tuple[ConditionSpec, ...]:
    """A task's ``wait_for`` / ``skip_if`` / ``cancel_if`` conditions."""

    def base(b: Any, kind: ConditionKind, **fields: Any) -> ConditionSpec:
        if b.action not in _ACTIONS:
            raise InvalidInput(f"task {task!r}: unknown condition action {b.action}")
        if not b.readable_data_key:
            raise InvalidInput(f"task {task!r}: a condition needs a readable_data_key")
        return ConditionSpec(
            kind,
            _ACTIONS[b.action],
            b.or_group_id or b.readable_data_key,
            b.readable_data_key,
            expression=b.expression or None,
            **fields,
        )

    out = [
        base(c.base, ConditionKind.PARENT, parent=c.parent_readable_id)
        for c in getattr(msg, "parent_override_conditions", ())
    ]
    out += [
        base(
            c.base,
            ConditionKind.SLEEP,
            sleep_s=_seconds(c.sleep_for, 0.0, f"task {task!r} sleep condition"),
        )
        for c in msg.sleep_conditions
    ]
    out += [
        base(
            c.base,
            ConditionKind.EVENT,
            event_key=c.user_event_key,
            scope=c.event_scope if c.HasField("event_scope") else None,
            events_since=(
                seconds_of(c.consider_events_since, "consider_events_since")
                if c.HasField("consider_events_since")
                else None
            ),
        )
        for c in msg.user_event_conditions
    ]
    return tuple(out)


_IDEMPOTENCY = {pb.TTL: IdempotencyMethod.TTL, pb.STATUS: IdempotencyMethod.STATUS}


def idempotency_spec(workflow: str, msg: Any) -> IdempotencySpec:
    if not msg.expression.strip():
        raise InvalidInput(f"workflow {workflow!r}: the idempotency expression is empty")
    if msg.ttl_ms <= 0:
        raise InvalidInput(f"workflow {workflow!r}: the idempotency TTL must be positive")
    method = IdempotencyMethod.TTL
    if msg.HasField("method"):
        if msg.method not in _IDEMPOTENCY:
            raise InvalidInput(f"unknown idempotency method {msg.method}")
        method = _IDEMPOTENCY[msg.method]
    return IdempotencySpec(msg.expression, msg.ttl_ms / 1000.0, method)


def run_details_response(details: RunDetails) -> Any:
    resp = pb.GetRunDetailsResponse(
        input=details.input.encode(),
        status=RUN_STATUS[details.status],
        done=details.done,
    )
    if details.additional_metadata:
        resp.additional_metadata = details.additional_metadata.encode()
    for task in details.tasks:
        if task.status is TaskStatus.SKIPPED:
            continue  # never created, as far as a client can tell
        detail = resp.task_runs[task.readable_id]
        detail.external_id = task.task_id
        detail.readable_id = task.readable_id
        detail.status = TASK_STATUS[task.status]
        if task.status is TaskStatus.COMPLETED:
            detail.output = (task.output or "{}").encode()
        elif task.error is not None or task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            detail.error = task.error or task.status.name.lower()
    return resp


class AdminServicer(Servicer, pb_grpc.AdminServiceServicer):  # type: ignore[misc]
    @unary
    async def PutWorkflow(self, tenant_id: str, request: Any, context: Any) -> Any:
        tasks = [task_def(t) for t in request.tasks]
        if request.HasField("on_failure_task"):
            tasks.append(task_def(request.on_failure_task, on_failure=True))
        priority = request.default_priority if request.HasField("default_priority") else None
        sticky = None
        if request.HasField("sticky"):
            if request.sticky not in _STICKY:
                raise InvalidInput(f"unknown sticky strategy {request.sticky}")
            sticky = _STICKY[request.sticky]
        limits = [*request.concurrency_arr]
        if request.HasField("concurrency"):
            limits.insert(0, request.concurrency)
        concurrency = [concurrency_spec(c) for c in limits]
        idempotency = None
        if request.HasField("idempotency"):
            idempotency = idempotency_spec(request.name, request.idempotency)
        workflow = await self.core.put_workflow(
            tenant_id,
            request.name,
            tasks,
            priority,
            sticky,
            concurrency,
            event_triggers=list(request.event_triggers),
            cron_triggers=list(request.cron_triggers),
            cron_input=request.cron_input if request.HasField("cron_input") else None,
            idempotency=idempotency,
            default_filters=[
                (
                    f.expression,
                    f.scope,
                    f.payload.decode("utf-8", "replace") if f.HasField("payload") else None,
                )
                for f in request.default_filters
            ],
        )
        return pb.CreateWorkflowVersionResponse(id=workflow.version_id, workflow_id=workflow.id)

    @unary
    async def GetRunDetails(self, tenant_id: str, request: Any, context: Any) -> Any:
        await self.core.check_run_readers(tenant_id, [request.external_id], caller())
        details = await self.core.run_details(tenant_id, request.external_id)
        response = run_details_response(details)
        limit = self.core.max_message_bytes
        if limit is not None and response.ByteSize() > limit:
            # grpc would fail the send with no word to the client (and a traceback here).
            raise TooLarge(
                f"run {request.external_id}: its outputs take {response.ByteSize()} bytes, "
                f"over the {limit}-byte message limit; raise HEWER_MAX_MESSAGE_BYTES (and the "
                "client's limit) to read it"
            )
        return response

    @unary
    async def CancelTasks(self, tenant_id: str, request: Any, context: Any) -> Any:
        ids = list(request.external_ids)
        if request.HasField("filter"):
            if ids:
                raise InvalidInput("give external_ids or a filter, not both")
            f = request.filter
            match = run_filter(
                since=seconds_of(f.since, "filter.since") if f.HasField("since") else None,
                until=seconds_of(f.until, "filter.until") if f.HasField("until") else None,
                statuses=f.statuses,
                workflows=f.workflow_ids,
                additional_metadata=f.additional_metadata,
            )
            cancelled = await self.core.cancel_matching(tenant_id, match, "cancelled by request")
            return pb.CancelTasksResponse(cancelled_tasks=cancelled)
        if not ids:
            raise InvalidInput("external_ids must name at least one run or task")
        if any(not i.strip() for i in ids):
            raise InvalidInput("external_ids must not contain empty ids")
        cancelled = await self.core.cancel(tenant_id, ids, "cancelled by request")
        return pb.CancelTasksResponse(cancelled_tasks=cancelled)
