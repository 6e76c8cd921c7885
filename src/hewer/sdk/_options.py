"""Task, workflow and trigger options: frozen dataclasses, and the keyword sets the
decorators and run methods accept."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any, TypedDict

from hewer import defaults
from hewer.domain import StickyStrategy
from hewer.errors import ConfigurationError
from hewer.sdk._conditions import Condition, ConditionList, flatten
from hewer.sdk._controls import (
    ConcurrencyArg,
    ConcurrencyExpression,
    DesiredWorkerLabel,
    RateLimit,
    check_desired_labels,
    check_rate_limits,
    check_slot_counts,
    coerce_enum,
    concurrency_chain,
)

DEFAULT_EXECUTION_TIMEOUT = timedelta(seconds=defaults.EXECUTION_TIMEOUT_S)
DEFAULT_SCHEDULE_TIMEOUT = timedelta(seconds=defaults.SCHEDULE_TIMEOUT_S)
PRIORITY_RANGE = range(defaults.MIN_PRIORITY, defaults.MAX_PRIORITY + 1)


class TaskKwargs(TypedDict, total=False):
    """Keyword options of ``@hw.task(...)`` and ``@workflow.task(...)``; see ``TaskOptions``."""

    retries: int
    execution_timeout: timedelta
    schedule_timeout: timedelta
    backoff_factor: float | None
    backoff_max: timedelta | None
    desired_worker_labels: Mapping[str, DesiredWorkerLabel] | None
    slot_requests: Mapping[str, int]
    concurrency: ConcurrencyArg
    rate_limits: Sequence[RateLimit] | None
    wait_for: ConditionList
    skip_if: ConditionList
    cancel_if: ConditionList


class DurableTaskKwargs(TaskKwargs, total=False):
    """Keyword options of ``@hw.durable_task(...)`` and ``@workflow.durable_task(...)``."""

    eviction_policy: EvictionPolicy | None


@dataclass(frozen=True)
class EvictionPolicy:
    """When a waiting durable task gives its durable slot back: after ``ttl`` of waiting
    (None: never). The engine queues it again once the wait is satisfied, and the new
    invocation replays the task's log up to where it was."""

    ttl: timedelta | None = timedelta(minutes=15)

    def __post_init__(self) -> None:
        if self.ttl is not None and (
            not isinstance(self.ttl, timedelta) or self.ttl <= timedelta(0)
        ):
            raise ConfigurationError(f"an eviction ttl is a positive timedelta, not {self.ttl!r}")


DEFAULT_EVICTION_POLICY = EvictionPolicy()

DURABLE_SLOT_TYPE = "durable"
"""The slot pool durable tasks take by default (hatchet-sdk's name for it)."""


def _default_slot_requests() -> Mapping[str, int]:
    return MappingProxyType({defaults.DEFAULT_SLOT_TYPE: 1})


@dataclass(frozen=True, kw_only=True)
class TaskOptions:
    """How the engine runs one task.

    Collections given here are copied into read-only ones, so a declaration cannot change
    after the fact; ``concurrency`` is always stored as the tuple of its limits.
    """

    retries: int = defaults.RETRIES
    """Extra attempts after a failure (0 = run once)."""
    execution_timeout: timedelta = DEFAULT_EXECUTION_TIMEOUT
    """How long one attempt may run before the engine fails it."""
    schedule_timeout: timedelta = DEFAULT_SCHEDULE_TIMEOUT
    """How long the task may wait for a worker before the engine fails it."""
    backoff_factor: float | None = None
    """Retry delay grows as ``backoff_factor ** attempt`` seconds (None: retry at once)."""
    backoff_max: timedelta | None = None
    """Upper bound on the retry delay (whole seconds on the wire)."""
    desired_worker_labels: Mapping[str, DesiredWorkerLabel] | None = None
    """Worker labels this task wants (``{key: DesiredWorkerLabel(...)}``)."""
    slot_requests: Mapping[str, int] = field(default_factory=_default_slot_requests)
    """Slot units the task takes on its worker, per slot type; all on one worker."""
    concurrency: ConcurrencyArg = None
    """Limits on runs of this task at once: one ``ConcurrencyExpression``, a list applied in
    order, or an int (at most that many at once, keys taking turns)."""
    rate_limits: Sequence[RateLimit] | None = None
    """Rate-limited keys each run consumes units of."""
    wait_for: ConditionList = None
    """Conditions to meet, once the parents are done, before the task is queued."""
    skip_if: ConditionList = None
    """Conditions that skip the task (it completes with ``{"skipped": true}``)."""
    cancel_if: ConditionList = None
    """Conditions that cancel the task."""
    durable: bool = False
    """A durable task (made with ``durable_task``): its waits, memoised values and children
    are kept in a log that later invocations replay."""
    eviction_policy: EvictionPolicy | None = DEFAULT_EVICTION_POLICY
    """For a durable task: when a long wait gives its slot back."""

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ConfigurationError(f"retries must be >= 0, got {self.retries}")
        for label, value in (
            ("execution_timeout", self.execution_timeout),
            ("schedule_timeout", self.schedule_timeout),
        ):
            if value <= timedelta(0):
                raise ConfigurationError(f"{label} must be positive, got {value}")
        if self.backoff_factor is not None and self.backoff_factor <= 0:
            raise ConfigurationError(f"backoff_factor must be > 0, got {self.backoff_factor}")
        if self.backoff_max is not None and self.backoff_max < timedelta(seconds=1):
            raise ConfigurationError(f"backoff_max must be at least 1s, got {self.backoff_max}")
        labels = check_desired_labels(self.desired_worker_labels)
        object.__setattr__(self, "desired_worker_labels", labels)
        slots = (
            _default_slot_requests()
            if self.slot_requests is None
            else check_slot_counts(self.slot_requests, "slot_requests")
        )
        if not slots:
            raise ConfigurationError("slot_requests must name at least one slot type")
        object.__setattr__(self, "slot_requests", slots)
        object.__setattr__(self, "concurrency", concurrency_chain(self.concurrency, "concurrency"))
        object.__setattr__(self, "rate_limits", check_rate_limits(self.rate_limits))
        for label in ("wait_for", "skip_if", "cancel_if"):
            value = getattr(self, label)
            if value is not None:
                flatten(value, label)
                object.__setattr__(self, label, tuple(value))

    def conditions(self) -> list[tuple[str, str, Condition]]:
        """``(action, group id, condition)`` of every condition: queue, skip, cancel."""
        out: list[tuple[str, str, Condition]] = []
        for action, value in (
            ("queue", self.wait_for),
            ("skip", self.skip_if),
            ("cancel", self.cancel_if),
        ):
            out.extend((action, group, c) for group, c in flatten(value, action))
        return out

    @property
    def concurrency_limits(self) -> tuple[ConcurrencyExpression, ...]:
        """``concurrency`` as the ordered tuple of its limits."""
        return concurrency_chain(self.concurrency, "concurrency")

    @property
    def backoff_max_seconds(self) -> int | None:
        """``backoff_max`` as whole seconds, rounded up, or None."""
        if self.backoff_max is None:
            return None
        seconds = self.backoff_max.total_seconds()
        return int(seconds) + (0 if seconds == int(seconds) else 1)


@dataclass(frozen=True)
class TTLBasedIdempotencyConfig:
    """Runs whose ``key_expression`` (CEL over ``input`` and ``additional_metadata``) gives
    a key used by another run of the workflow within ``ttl`` are refused
    (``IdempotencyCollisionError`` names that run)."""

    key_expression: str
    ttl: timedelta


@dataclass(frozen=True)
class StatusBasedIdempotencyConfig:
    """Runs whose key another run of the workflow holds are refused while that run is
    unfinished (and at most for ``fallback_ttl``)."""

    key_expression: str
    fallback_ttl: timedelta


IdempotencyConfig = TTLBasedIdempotencyConfig | StatusBasedIdempotencyConfig


@dataclass(frozen=True)
class DefaultFilter:
    """An event filter declared with its workflow: an event pushed with ``scope`` starts a
    run only if ``expression`` (CEL over the event's ``input``, ``additional_metadata``, the
    filter's ``payload``, ``event_key``) holds; the task sees ``payload`` as
    ``ctx.filter_payload``. A workflow with filters is not started by events without a
    scope, or of a scope it has no filter for."""

    expression: str
    scope: str
    payload: Mapping[str, Any] = field(default_factory=dict)


class WorkflowKwargs(TypedDict, total=False):
    """Keyword options of ``hw.workflow(...)``; see ``WorkflowOptions``."""

    default_priority: int | None
    sticky: StickyStrategy | None
    concurrency: ConcurrencyArg
    on_events: Sequence[str]
    on_crons: Sequence[str]
    cron_input: Mapping[str, Any] | None
    idempotency: IdempotencyConfig | None
    default_filters: Sequence[DefaultFilter]


@dataclass(frozen=True, kw_only=True)
class WorkflowOptions:
    """How the engine treats every run of one workflow."""

    default_priority: int | None = None
    """Priority of runs triggered without one (1 = lowest .. 3 = highest; None: 1)."""
    sticky: StickyStrategy | None = None
    """Keep a run's tasks on one worker (SOFT: preferably, HARD: only)."""
    concurrency: ConcurrencyArg = None
    """Limits on runs of this workflow at once (as ``TaskOptions.concurrency``)."""
    on_events: Sequence[str] = ()
    """Event keys that start a run (with the event's payload as input; namespaced)."""
    on_crons: Sequence[str] = ()
    """Cron expressions (UTC; 5 fields, or 6 with seconds first) that start a run at every
    tick."""
    cron_input: Mapping[str, Any] | None = None
    """The input of the runs ``on_crons`` start."""
    idempotency: IdempotencyConfig | None = None
    """Refuse runs whose key another run holds (``TTLBasedIdempotencyConfig`` or
    ``StatusBasedIdempotencyConfig``)."""
    default_filters: Sequence[DefaultFilter] = ()
    """Event filters (``DefaultFilter``), replaced at each registration."""

    def __post_init__(self) -> None:
        check_priority(self.default_priority)
        for label, values in (("on_events", self.on_events), ("on_crons", self.on_crons)):
            if isinstance(values, str) or not all(isinstance(v, str) and v.strip() for v in values):
                raise ConfigurationError(f"{label} must be a list of non-empty strings")
            object.__setattr__(self, label, tuple(values))
        if self.cron_input is not None and not isinstance(self.cron_input, Mapping):
            raise ConfigurationError("cron_input must be a mapping")
        if not all(isinstance(f, DefaultFilter) for f in self.default_filters):
            raise ConfigurationError("default_filters takes DefaultFilter(...) items")
        object.__setattr__(self, "default_filters", tuple(self.default_filters))
        idem = self.idempotency
        if idem is not None:
            if not isinstance(idem, TTLBasedIdempotencyConfig | StatusBasedIdempotencyConfig):
                raise ConfigurationError(
                    "idempotency must be a TTLBasedIdempotencyConfig or a "
                    "StatusBasedIdempotencyConfig"
                )
            ttl = idem.ttl if isinstance(idem, TTLBasedIdempotencyConfig) else idem.fallback_ttl
            if not idem.key_expression.strip() or ttl.total_seconds() <= 0:
                raise ConfigurationError("idempotency needs a key expression and a positive TTL")
        if self.sticky is not None:
            object.__setattr__(self, "sticky", coerce_enum(StickyStrategy, self.sticky, "sticky"))
        object.__setattr__(self, "concurrency", concurrency_chain(self.concurrency, "concurrency"))

    @property
    def concurrency_limits(self) -> tuple[ConcurrencyExpression, ...]:
        """``concurrency`` as the ordered tuple of its limits."""
        return concurrency_chain(self.concurrency, "concurrency")


class TriggerKwargs(TypedDict, total=False):
    """Keyword options of every run method (``run``, ``aio_run``, ``run_no_wait``,
    ``run_many``, ..., ``hw.runs.trigger``).

    - ``additional_metadata``: JSON-able metadata stored with the run (concurrency and rate
      limit expressions see it).
    - ``priority``: 1 (lowest) .. 3 (highest); None: the workflow's default.
    - ``desired_worker_labels``: worker affinity for this run, as a task's
      ``desired_worker_labels``.
    - ``sticky``: only from inside a task: run the child on this task's worker (the child
      workflow should declare a sticky strategy).
    - ``child_key``: only from inside a task: a child triggered again with the same key by
      the same task is not started again; the trigger returns the first one's run id.
    """

    additional_metadata: Mapping[str, Any] | None
    priority: int | None
    desired_worker_labels: Mapping[str, DesiredWorkerLabel] | None
    sticky: bool
    child_key: str | None


def check_priority(priority: int | None) -> int | None:
    """Validate a run priority (1 = lowest .. 3 = highest)."""
    if priority is not None and priority not in PRIORITY_RANGE:
        raise ConfigurationError(
            f"priority must be from {defaults.MIN_PRIORITY} to {defaults.MAX_PRIORITY}, "
            f"got {priority}"
        )
    return priority
