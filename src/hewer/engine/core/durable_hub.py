"""Durable streams: which worker waits on which entries of which durable task's log, and
telling it when they are satisfied.

A worker says what it waits on (hatchet-sdk's ``worker_status``: when it starts waiting,
and every few seconds while it waits); the hub reads the task's log and hands over the
entries that are done. An entry satisfied by a commit of this engine is handed over at
once; one satisfied on another replica reaches the worker with its next status (the
durable log in the store is the truth, the wake-up only makes it prompt). A child run that
finished without its parent's log hearing of it (the engine stopped in between) is found
here too, and recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from hewer.domain import DurableEntry, DurableKind, RunStatus, TaskRow
from hewer.engine.core import durable
from hewer.engine.core.loop import EngineLoop
from hewer.engine.core.transitions import details
from hewer.errors import HewerError
from hewer.store import Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Completion:
    """An entry the worker waits on is satisfied."""

    task_id: str
    invocation: int
    node: int
    payload: bytes
    failure: bool
    error: str | None
    order: int | None


@dataclass(frozen=True, slots=True)
class Dropped:
    """The invocation is no longer its task's live one: the worker lets it go."""

    task_id: str
    invocation: int
    reason: str


Message = Completion | Dropped
Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]
TaskReader = Callable[[str, str], Coroutine[Any, Any, TaskRow | None]]


@dataclass(eq=False)
class DurableStream:
    """One worker's durable stream."""

    tenant_id: str
    worker_id: str
    send: Callable[[Message], None]
    # task -> the (invocation, node) pairs it waits on
    awaited: dict[str, set[tuple[int, int]]] = field(default_factory=dict)


class DurableHub:
    def __init__(self, store: Store, loop: EngineLoop, spawn: Spawn, task: TaskReader) -> None:
        self.store = store
        self.loop = loop
        self.spawn = spawn
        self.task = task
        self._waiting: dict[tuple[str, str], set[DurableStream]] = {}

    def open(
        self, tenant_id: str, worker_id: str, send: Callable[[Message], None]
    ) -> DurableStream:
        return DurableStream(tenant_id, worker_id, send)

    def close(self, stream: DurableStream) -> None:
        for task_id in stream.awaited:
            streams = self._waiting.get((stream.tenant_id, task_id))
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self._waiting[(stream.tenant_id, task_id)]
        stream.awaited.clear()

    def wait_on(self, stream: DurableStream, entries: Sequence[tuple[str, int, int]]) -> None:
        """The worker waits on these (task, invocation, node) entries."""
        tasks: set[str] = set()
        for task_id, invocation, node in entries:
            stream.awaited.setdefault(task_id, set()).add((invocation, node))
            self._waiting.setdefault((stream.tenant_id, task_id), set()).add(stream)
            tasks.add(task_id)
        for task_id in tasks:
            self.spawn(self.check(stream, task_id), "durable-check")

    def satisfied(self, tasks: Sequence[tuple[str, str]]) -> None:
        """Entries of these (tenant, task) logs were satisfied by a commit."""
        for key in set(tasks):
            for stream in list(self._waiting.get(key, ())):
                self.spawn(self.check(stream, key[1]), "durable-check")

    def _forget(self, stream: DurableStream, task_id: str, pair: tuple[int, int]) -> None:
        pairs = stream.awaited.get(task_id)
        if pairs is None:
            return
        pairs.discard(pair)
        if not pairs:
            del stream.awaited[task_id]
            streams = self._waiting.get((stream.tenant_id, task_id))
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self._waiting[(stream.tenant_id, task_id)]

    async def check(self, stream: DurableStream, task_id: str) -> None:
        """Hand the worker what it waits on of ``task_id``'s log and is done."""
        tenant_id = stream.tenant_id
        if not stream.awaited.get(task_id):
            return
        row = await self.task(tenant_id, task_id)
        log = await self.store.durable_get(tenant_id, task_id)
        finished: list[durable.ChildDone] = []
        for pair in sorted(stream.awaited.get(task_id, ())):
            invocation, node = pair
            if (
                row is None
                or row.retry_count + 1 != invocation
                or row.worker_id != stream.worker_id
            ):
                self._forget(stream, task_id, pair)
                stream.send(
                    Dropped(task_id, invocation, "the invocation is no longer the task's live one")
                )
                continue
            entry = log.entries.get(node) if log is not None else None
            if entry is None:
                continue
            if entry.done:
                self._forget(stream, task_id, pair)
                stream.send(
                    Completion(
                        task_id,
                        invocation,
                        node,
                        durable.completion_payload(entry),
                        entry.failure,
                        entry.error,
                        entry.order,
                    )
                )
            else:
                done = await self._finished_child(tenant_id, task_id, entry)
                if done is not None:
                    finished.append(done)
        if finished:
            # Recorded now; the commit wakes this check again, which hands them over.
            await self.children_done(finished)

    async def _finished_child(
        self, tenant_id: str, task_id: str, entry: DurableEntry
    ) -> durable.ChildDone | None:
        """What the log should record for a child run entry whose run has finished (None
        while it runs, or for any other entry)."""
        if entry.kind is not DurableKind.RUN or entry.done or not entry.child_run_id:
            return None
        found = await self.store.run_get(tenant_id, entry.child_run_id)
        if found is None or found[0].status is RunStatus.QUEUED:
            return None
        return durable.ChildDone.of(task_id, details(*found))

    async def children_done(self, done: Sequence[durable.ChildDone]) -> None:
        try:
            await self.loop.run(durable.ChildrenDone(done))
        except HewerError as exc:
            logger.debug("recording finished child runs failed: %s", exc)

    async def recheck_evicted(self, limit: int = 10_000) -> None:
        """At start: evicted tasks whose child runs finished while no engine listened are
        recorded (and so queued again)."""
        for tenant_id, task_id in await self.store.durable_evicted(limit):
            log = await self.store.durable_get(tenant_id, task_id)
            if log is None:
                continue
            finished = [
                done
                for entry in log.entries.values()
                if (done := await self._finished_child(tenant_id, task_id, entry)) is not None
            ]
            if finished:
                await self.children_done(finished)
