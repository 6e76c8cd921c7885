"""Hewer's client SDK: declare tasks and workflows, trigger runs, run workers."""

from __future__ import annotations

from hewer.domain import StickyStrategy
from hewer.sdk._admin import RunFilter, RunInfo, TaskInfo, WorkerInfo, Workers, WorkerState
from hewer.sdk._client import Hewer
from hewer.sdk._conditions import (
    OrGroup,
    ParentCondition,
    SleepCondition,
    UserEventCondition,
    or_,
)
from hewer.sdk._connection import Connection
from hewer.sdk._context import Context
from hewer.sdk._controls import (
    ConcurrencyExpression,
    ConcurrencyLimitStrategy,
    DesiredWorkerLabel,
    RateLimit,
    RateLimitDuration,
    WorkerLabelComparator,
)
from hewer.sdk._durable import (
    DurableContext,
    DurableError,
    Evicted,
    NonDeterminismError,
    SleepResult,
)
from hewer.sdk._options import (
    DefaultFilter,
    EvictionPolicy,
    StatusBasedIdempotencyConfig,
    TaskOptions,
    TTLBasedIdempotencyConfig,
    WorkflowOptions,
)
from hewer.sdk._rate_limits import RateLimits
from hewer.sdk._task import RunRef, StandaloneTask, Task, Workflow
from hewer.sdk._time import Clock, SystemClock
from hewer.sdk._triggers import (
    Cron,
    Crons,
    Event,
    EventFilter,
    EventPush,
    Events,
    Filters,
    Scheduled,
    ScheduledRun,
)
from hewer.sdk._worker import Worker

__all__ = [
    "Clock",
    "ConcurrencyExpression",
    "ConcurrencyLimitStrategy",
    "Connection",
    "Context",
    "Cron",
    "Crons",
    "DefaultFilter",
    "DesiredWorkerLabel",
    "DurableContext",
    "DurableError",
    "Event",
    "EventFilter",
    "EventPush",
    "Events",
    "Evicted",
    "EvictionPolicy",
    "Filters",
    "Hewer",
    "NonDeterminismError",
    "OrGroup",
    "ParentCondition",
    "RateLimit",
    "RateLimitDuration",
    "RateLimits",
    "RunFilter",
    "RunInfo",
    "RunRef",
    "Scheduled",
    "ScheduledRun",
    "SleepCondition",
    "SleepResult",
    "StandaloneTask",
    "StatusBasedIdempotencyConfig",
    "StickyStrategy",
    "SystemClock",
    "TTLBasedIdempotencyConfig",
    "Task",
    "TaskInfo",
    "TaskOptions",
    "UserEventCondition",
    "Worker",
    "WorkerInfo",
    "WorkerLabelComparator",
    "WorkerState",
    "Workers",
    "Workflow",
    "WorkflowOptions",
    "or_",
]
