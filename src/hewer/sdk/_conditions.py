"""Task conditions: ``wait_for``, ``skip_if`` and ``cancel_if`` on a task of a workflow.

A task with conditions is judged once its parents are done: ``wait_for`` holds it until its
conditions are met, ``skip_if`` skips it (it completes with ``{"skipped": true}``; its
children run and see it with ``ctx.was_skipped``), ``cancel_if`` cancels it. Conditions in
one list must all hold; ``or_(a, b)`` makes alternatives.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from hewer.durations import format_duration
from hewer.errors import ConfigurationError

if TYPE_CHECKING:
    from hewer.sdk._task import Task


def _group() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class SleepCondition:
    """Holds once ``duration`` has passed since the task's parents were done."""

    duration: timedelta
    key: str | None = None

    def data_key(self) -> str:
        return self.key or f"sleep:{format_duration(self.duration)}"


@dataclass(frozen=True)
class UserEventCondition:
    """Holds once an event of ``event_key`` (namespaced) is pushed after the task's parents
    were done, whose payload matches ``expression`` (CEL, the payload as ``input``)."""

    event_key: str
    expression: str | None = None
    scope: str | None = None
    consider_events_since: datetime | None = None
    key: str | None = None

    def data_key(self) -> str:
        return self.key or self.event_key


@dataclass(frozen=True)
class ParentCondition:
    """Holds when ``parent`` completed and ``expression`` (CEL over its ``output``) is true."""

    parent: Task[Any, Any]
    expression: str | None = None
    key: str | None = None

    def data_key(self) -> str:
        return self.key or f"{self.parent.name}:{self.expression or 'completed'}"


Condition = SleepCondition | UserEventCondition | ParentCondition


@dataclass(frozen=True)
class OrGroup:
    """Alternatives: the group holds when any of its conditions does."""

    conditions: tuple[Condition, ...]
    group_id: str = field(default_factory=_group)


def or_(*conditions: Condition) -> OrGroup:
    """Conditions of which any one is enough."""
    if not conditions:
        raise ConfigurationError("or_() needs at least one condition")
    return OrGroup(tuple(conditions))


ConditionList = Sequence[Condition | OrGroup] | None


def flatten(conditions: ConditionList, what: str) -> list[tuple[str, Condition]]:
    """``(group id, condition)`` pairs; a condition outside an or-group is its own group."""
    out: list[tuple[str, Condition]] = []
    for item in conditions or ():
        if isinstance(item, OrGroup):
            out.extend((item.group_id, c) for c in item.conditions)
        elif isinstance(item, SleepCondition | UserEventCondition | ParentCondition):
            out.append((_group(), item))
        else:
            raise ConfigurationError(f"{what} takes conditions and or_(...) groups, got {item!r}")
    for _, c in out:
        if isinstance(c, SleepCondition) and c.duration.total_seconds() <= 0:
            raise ConfigurationError("a SleepCondition needs a positive duration")
        if isinstance(c, UserEventCondition) and not c.event_key:
            raise ConfigurationError("a UserEventCondition needs an event key")
    return out


__all__ = [
    "Condition",
    "OrGroup",
    "ParentCondition",
    "SleepCondition",
    "UserEventCondition",
    "or_",
]
