"""Task conditions (``wait_for``, ``skip_if``, ``cancel_if``): pure decisions.

A task with conditions is judged once its parents are all done, and again whenever one of
its sleeps falls due or an event it listens for arrives, until one action is satisfied:

- an action's conditions form groups (those sharing a group id are alternatives, any one
  satisfies the group); the action is satisfied when all its groups are;
- CANCEL wins over SKIP, SKIP over QUEUE; a task with no ``wait_for`` conditions is queued
  at once unless a cancel or skip condition already holds then;
- a parent condition holds when its parent completed and, with an expression, when that
  CEL expression over the parent's ``output`` is true; it is known at once, so a parent
  condition that does not hold when the task is judged never will;
- a sleep condition holds once its duration has passed since the task's parents were done;
- an event condition holds once an event of its key arrives after that (or after
  ``consider_events_since``) whose payload (``input`` in the expression) matches.

A skipped task completes with the output ``{"skipped": true}`` (its children run, and see
it with ``ctx.was_skipped``); a cancelled one ends CANCELLED and its descendants are
skipped, as a cancel by hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from hewer.domain import ConditionAction, ConditionKind, ConditionSpec, TaskStatus
from hewer.engine.core import cel

SKIPPED_OUTPUT = '{"skipped":true}'
CANCELLED_ERROR = "cancelled by its cancel_if condition"


class Verdict(StrEnum):
    QUEUE = "queue"
    SKIP = "skip"
    CANCEL = "cancel"
    WAIT = "wait"
    FAIL = "fail"  # a condition could not be evaluated (the task fails, saying why)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    wake_at: float | None = None  # the next sleep due (WAIT only)
    event_keys: tuple[str, ...] = ()  # the events that could still decide (WAIT only)


@dataclass(frozen=True, slots=True)
class WaitState:
    """What a waiting task has seen: since when it waits, and the event conditions hit."""

    since: float
    hits: frozenset[str] = frozenset()

    def to_text(self) -> str:
        return json.dumps({"since": self.since, "hits": sorted(self.hits)})

    @classmethod
    def from_text(cls, text: str) -> WaitState:
        data = json.loads(text)
        return cls(float(data["since"]), frozenset(data.get("hits", ())))


@dataclass(frozen=True, slots=True)
class ArrivedEvent:
    key: str
    payload: Mapping[str, Any]
    additional_metadata: Mapping[str, Any]
    scope: str | None
    at: float


def decide(
    conditions: Sequence[ConditionSpec],
    state: WaitState,
    now: float,
    parents: Mapping[str, tuple[TaskStatus, Any]],
    input: Mapping[str, Any],
    metadata: Mapping[str, Any],
) -> Decision:
    """The verdict for a task now. ``parents``: each parent's status and parsed output."""

    def holds(c: ConditionSpec) -> bool:
        if c.kind is ConditionKind.PARENT:
            status, output = parents.get(c.parent or "", (TaskStatus.PENDING, None))
            if status is not TaskStatus.COMPLETED:
                return False
            if not c.expression:
                return True
            value = output if isinstance(output, dict) else {}
            return cel.compile_expression(c.expression).truth(input, metadata, output=value)
        if c.kind is ConditionKind.SLEEP:
            return now >= state.since + (c.sleep_s or 0.0)
        return c.key in state.hits

    def satisfied(action: ConditionAction) -> bool | None:
        groups: dict[str, list[ConditionSpec]] = {}
        for c in conditions:
            if c.action is action:
                groups.setdefault(c.group, []).append(c)
        if not groups:
            return None
        return all(any(holds(c) for c in group) for group in groups.values())

    if satisfied(ConditionAction.CANCEL):
        return Decision(Verdict.CANCEL)
    if satisfied(ConditionAction.SKIP):
        return Decision(Verdict.SKIP)
    if satisfied(ConditionAction.QUEUE) is not False:
        return Decision(Verdict.QUEUE)
    pending = [c for c in conditions if not holds(c)]
    sleeps = [state.since + (c.sleep_s or 0.0) for c in pending if c.kind is ConditionKind.SLEEP]
    keys = tuple(
        sorted({c.event_key for c in pending if c.kind is ConditionKind.EVENT and c.event_key})
    )
    if not sleeps and not keys:
        # Only parent conditions are left, and they are final: it can never be queued.
        return Decision(Verdict.SKIP)
    return Decision(Verdict.WAIT, min(sleeps) if sleeps else None, keys)


def hit(
    conditions: Sequence[ConditionSpec],
    state: WaitState,
    event: ArrivedEvent,
) -> WaitState:
    """``state`` with the event conditions this event satisfies."""
    hits = set(state.hits)
    for c in conditions:
        if c.kind is not ConditionKind.EVENT or c.event_key != event.key or c.key in hits:
            continue
        if event.at < (c.events_since if c.events_since is not None else state.since):
            continue
        if c.scope is not None and c.scope != event.scope:
            continue
        if c.expression and not cel.compile_expression(c.expression).truth(
            event.payload, event.additional_metadata
        ):
            continue
        hits.add(c.key)
    return WaitState(state.since, frozenset(hits))


def check(task: str, conditions: Sequence[ConditionSpec], parents: Sequence[str]) -> None:
    """Refuse conditions that could never be judged (raises InvalidInput)."""
    from hewer.errors import InvalidInput

    seen: set[str] = set()
    for c in conditions:
        if c.key in seen:
            raise InvalidInput(f"task {task!r}: two conditions share the key {c.key!r}")
        seen.add(c.key)
        if c.kind is ConditionKind.PARENT and c.parent not in parents:
            raise InvalidInput(
                f"task {task!r}: a parent condition names {c.parent!r}, which is not a parent"
            )
        if c.kind is ConditionKind.SLEEP and not (c.sleep_s is not None and c.sleep_s >= 0):
            raise InvalidInput(f"task {task!r}: a sleep condition needs a duration")
        if c.kind is ConditionKind.EVENT and not c.event_key:
            raise InvalidInput(f"task {task!r}: an event condition needs an event key")
        if c.expression:
            cel.compile_expression(c.expression)
