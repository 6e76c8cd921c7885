"""Values of the assignment and flow-control options: which worker may run a task
(``DesiredWorkerLabel``; ``StickyStrategy`` is ``hewer.domain``'s), how many run at once
(``ConcurrencyExpression``) and how often (``RateLimit``).

Each is a frozen dataclass or an enum, checked when it is built so a bad declaration fails
at import time rather than when the engine first sees it. They hold no protobuf: ``_wire``
turns them into messages. The enums the engine shares are ``hewer.domain``'s own (under
their SDK names where those differ); a string naming a member, in any case, works too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import TypeAlias, TypeVar

from hewer.domain import ConcurrencyStrategy, LabelComparator
from hewer.errors import ConfigurationError

INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)

E = TypeVar("E", bound=StrEnum)


def coerce_enum(enum: type[E], value: E | str, what: str) -> E:
    """``value`` as a member of ``enum``: a member, or a member's name in any case
    (``"SOFT"``, ``"soft"``, ``"group_round_robin"``)."""
    if isinstance(value, enum):
        return value
    if isinstance(value, str):
        member = enum.__members__.get(value.strip().upper())
        if member is not None:
            return member
    choices = ", ".join(enum.__members__)
    raise ConfigurationError(f"{what} must be one of {choices}; got {value!r}")


def check_int32(value: object, what: str, *, minimum: int = INT32_MIN) -> int:
    """``value`` if it is an int (not a bool) in ``[minimum, 2**31-1]``: the wire's int32."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{what} must be >= {minimum}, got {value}")
    if value > INT32_MAX:
        raise ConfigurationError(f"{what} must be <= {INT32_MAX}, got {value}")
    return value


def check_port(value: object, what: str) -> int:
    """``value`` if it is a TCP port number (0: any free port)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigurationError(f"{what} must be a port number from 0 to 65535, got {value!r}")
    return value


def check_expression(value: object, what: str) -> str:
    """A non-blank CEL expression (its syntax is checked by the engine at registration)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{what} must be a non-empty CEL expression, got {value!r}")
    return value


def check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{what} must be a non-empty string, got {value!r}")
    return value


# --- worker affinity ---------------------------------------------------------------------

LabelValue: TypeAlias = str | int


def check_label_value(value: object, what: str) -> LabelValue:
    """A label value as the wire carries it: an int32, or a string. A bool is an int to
    Python but a word to whoever wrote it, so it travels as ``"True"``/``"False"``."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return check_int32(value, what)
    if isinstance(value, str):
        return value
    raise ConfigurationError(f"{what} must be a string or an integer, got {value!r}")


def check_worker_labels(labels: Mapping[str, object] | None) -> dict[str, LabelValue]:
    """Worker labels (``{key: str | int}``), validated."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise ConfigurationError(f"worker labels must be a mapping of key to value, got {labels!r}")
    return {
        check_name(key, "a worker label key"): check_label_value(value, f"worker label {key!r}")
        for key, value in labels.items()
    }


# hatchet-sdk's name for it.
WorkerLabelComparator = LabelComparator


_ORDERING = frozenset(
    {
        WorkerLabelComparator.GREATER_THAN,
        WorkerLabelComparator.GREATER_THAN_OR_EQUAL,
        WorkerLabelComparator.LESS_THAN,
        WorkerLabelComparator.LESS_THAN_OR_EQUAL,
    }
)


@dataclass(frozen=True, slots=True)
class DesiredWorkerLabel:
    """What a task (or a run) wants of a worker label, e.g.
    ``{"gpu": DesiredWorkerLabel("a100", required=True)}`` or
    ``{"memory_gb": DesiredWorkerLabel(32, comparator=GREATER_THAN_OR_EQUAL)}``
    (``GREATER_THAN_OR_EQUAL`` of ``WorkerLabelComparator``: the worker has at least 32).
    """

    value: str | int
    """The value the worker's label is compared with."""
    required: bool = False
    """True: only workers that satisfy it are eligible. False: satisfying it adds ``weight``
    to a worker's rank."""
    weight: int | None = None
    """Rank bonus when satisfied (None: the engine's default, ``defaults.LABEL_WEIGHT``)."""
    comparator: WorkerLabelComparator = WorkerLabelComparator.EQUAL
    """``worker value <comparator> desired value``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", check_label_value(self.value, "a desired label value"))
        if not isinstance(self.required, bool):
            raise ConfigurationError(f"required must be True or False, got {self.required!r}")
        if self.weight is not None:
            check_int32(self.weight, "a desired label weight")
        comparator = coerce_enum(WorkerLabelComparator, self.comparator, "comparator")
        object.__setattr__(self, "comparator", comparator)
        # The engine orders integers only; a string can never satisfy these.
        if comparator in _ORDERING and not isinstance(self.value, int):
            raise ConfigurationError(
                f"comparator {comparator.name} compares integers; {self.value!r} is a string"
            )


def check_desired_labels(
    labels: Mapping[str, DesiredWorkerLabel] | None,
) -> Mapping[str, DesiredWorkerLabel]:
    """``desired_worker_labels``, validated, as a read-only mapping."""
    if labels is None:
        return MappingProxyType({})
    if not isinstance(labels, Mapping):
        raise ConfigurationError(
            f"desired_worker_labels must map label keys to DesiredWorkerLabel, got {labels!r}"
        )
    checked: dict[str, DesiredWorkerLabel] = {}
    for key, label in labels.items():
        check_name(key, "a desired worker label key")
        if not isinstance(label, DesiredWorkerLabel):
            raise ConfigurationError(
                f"desired_worker_labels[{key!r}] must be a DesiredWorkerLabel, got {label!r} "
                f"(write DesiredWorkerLabel({label!r}))"
            )
        checked[key] = label
    return MappingProxyType(checked)


# --- concurrency -------------------------------------------------------------------------

# hatchet-sdk's name for it. What happens to a run whose key already has ``max_runs``
# running: GROUP_ROUND_ROBIN queues it (keys take turns), CANCEL_IN_PROGRESS admits it and
# cancels the key's oldest running one, CANCEL_NEWEST cancels it, CANCEL_QUEUED_EXCEPT_NEWEST
# (_OLDEST) keeps only the newest (oldest) of the key's queued runs.
ConcurrencyLimitStrategy = ConcurrencyStrategy


@dataclass(frozen=True, slots=True)
class ConcurrencyExpression:
    """A concurrency limit: at most ``max_runs`` runs per value of ``expression`` (a CEL
    expression over ``input`` and ``additional_metadata``, e.g. ``"input.user_id"``;
    ``"'constant'"`` makes one global key)."""

    expression: str
    max_runs: int = 1
    """Runs of one key that may run at once."""
    limit_strategy: ConcurrencyLimitStrategy = ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN
    max_runs_expression: str | None = None
    """CEL computing the limit from the run (e.g. ``"input.tier == 'pro' ? 10 : 1"``),
    instead of ``max_runs``."""
    name: str | None = None
    """Optional name of this limit, as the engine reports it."""

    def __post_init__(self) -> None:
        check_expression(self.expression, "a concurrency expression")
        check_int32(self.max_runs, "max_runs", minimum=1)
        strategy = coerce_enum(ConcurrencyLimitStrategy, self.limit_strategy, "limit_strategy")
        object.__setattr__(self, "limit_strategy", strategy)
        if self.max_runs_expression is not None:
            check_expression(self.max_runs_expression, "max_runs_expression")
            # The wire then carries max_runs=1 as the static fallback (as hatchet-sdk does);
            # another number here would be silently dropped.
            if self.max_runs != 1:
                raise ConfigurationError(
                    "give max_runs or max_runs_expression, not both "
                    f"(max_runs={self.max_runs}, max_runs_expression={self.max_runs_expression!r})"
                )
        if self.name is not None:
            check_name(self.name, "a concurrency name")

    @classmethod
    def constant(cls, max_runs: int) -> ConcurrencyExpression:
        """At most ``max_runs`` at once over all runs (what ``concurrency=int`` means)."""
        return cls("'constant'", max_runs, ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN)


ConcurrencyArg: TypeAlias = int | ConcurrencyExpression | Sequence[ConcurrencyExpression] | None


def concurrency_chain(value: ConcurrencyArg, what: str) -> tuple[ConcurrencyExpression, ...]:
    """``concurrency=`` as the ordered chain of limits it stands for."""
    if value is None:
        return ()
    if isinstance(value, bool):
        raise ConfigurationError(f"{what} must be an int or ConcurrencyExpression, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ConfigurationError(f"{what}={value}: at least one run must be allowed")
        return (ConcurrencyExpression.constant(value),)
    if isinstance(value, ConcurrencyExpression):
        return (value,)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigurationError(
            f"{what} must be an int, a ConcurrencyExpression or a list of them, got {value!r}"
        )
    for item in value:
        if not isinstance(item, ConcurrencyExpression):
            raise ConfigurationError(f"{what}: {item!r} is not a ConcurrencyExpression")
    return tuple(value)


# --- rate limits -------------------------------------------------------------------------


class RateLimitDuration(StrEnum):
    """The window a rate limit counts units over."""

    SECOND = "SECOND"
    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"
    YEAR = "YEAR"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A task consumes ``units`` of a rate-limited key per run.

    Static keys are declared beforehand with ``hw.rate_limits.put(key, limit, duration)``.
    Dynamic keys are CEL over ``input``/``additional_metadata`` (``dynamic_key="input.user"``)
    and need ``limit`` (an int or CEL). ``units`` may be CEL too (``units="input.cost"``).
    """

    static_key: str | None = None
    dynamic_key: str | None = None
    units: int | str = 1
    limit: int | str | None = None
    duration: RateLimitDuration = RateLimitDuration.MINUTE

    def __post_init__(self) -> None:
        if (self.static_key is None) == (self.dynamic_key is None):
            raise ConfigurationError("a RateLimit takes exactly one of static_key or dynamic_key")
        if self.static_key is not None:
            check_name(self.static_key, "static_key")
        else:
            check_expression(self.dynamic_key, "dynamic_key")
            if self.limit is None:
                raise ConfigurationError(
                    f"the dynamic rate limit {self.dynamic_key!r} needs a limit (int or CEL)"
                )
        if isinstance(self.units, str):
            check_expression(self.units, "units")
        else:
            check_int32(self.units, "units", minimum=1)
        if isinstance(self.limit, str):
            check_expression(self.limit, "limit")
        elif self.limit is not None:
            check_int32(self.limit, "limit", minimum=1)
        object.__setattr__(
            self, "duration", coerce_enum(RateLimitDuration, self.duration, "duration")
        )

    @property
    def key(self) -> str:
        """The static key, or the dynamic key's expression."""
        key = self.static_key if self.static_key is not None else self.dynamic_key
        assert key is not None
        return key


def check_rate_limits(value: Sequence[RateLimit] | None) -> tuple[RateLimit, ...]:
    if value is None:
        return ()
    if isinstance(value, RateLimit):
        return (value,)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigurationError(f"rate_limits must be a list of RateLimit, got {value!r}")
    for item in value:
        if not isinstance(item, RateLimit):
            raise ConfigurationError(f"rate_limits: {item!r} is not a RateLimit")
    return tuple(value)


# --- slots -------------------------------------------------------------------------------


def check_slot_counts(value: Mapping[str, int] | None, what: str) -> Mapping[str, int]:
    """``{slot type: count}`` with every count >= 1, as a read-only mapping."""
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{what} must map slot types to counts, got {value!r}")
    checked: dict[str, int] = {}
    for key, count in value.items():
        check_name(key, f"a slot type in {what}")
        checked[key] = check_int32(count, f"{what}[{key!r}]", minimum=1)
    return MappingProxyType(checked)
