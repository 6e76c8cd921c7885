"""Who waits for what: clients waiting for runs to finish, and readers of a run's stream
events. A finished run is delivered from the transaction that finished it, never read back;
a new watcher's "is it done already?" reads are batched."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from hewer.domain import RunDetails
from hewer.engine.core.component import Component
from hewer.engine.core.transitions import details
from hewer.errors import NotFound, StoreError
from hewer.store import Store

logger = logging.getLogger(__name__)

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """A chunk a task streamed with ``put_stream``; ``None`` on a subscriber's queue = run done."""

    run_id: str
    task_id: str
    data: bytes
    index: int | None
    created_at: float


class _ByRun(Generic[V]):
    """Subscribers per run id, each with the tenant it subscribed as."""

    def __init__(self) -> None:
        self._by_run: dict[str, list[tuple[str, V]]] = {}

    def add(self, run_id: str, tenant_id: str, value: V) -> Callable[[], None]:
        """Register; returns the function that unregisters (idempotent)."""
        entry = (tenant_id, value)
        self._by_run.setdefault(run_id, []).append(entry)

        def remove() -> None:
            entries = self._by_run.get(run_id)
            if entries and entry in entries:
                entries.remove(entry)
                if not entries:
                    del self._by_run[run_id]

        return remove

    def get(self, run_id: str, tenant_id: str | None = None) -> list[tuple[str, V]]:
        return [e for e in self._by_run.get(run_id, ()) if tenant_id in (None, e[0])]

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._by_run


class Subscriptions(Component):
    def __init__(self, store: Store, spawn: Callable[..., asyncio.Task[object]]) -> None:
        self.store = store
        self._spawn = spawn
        self._watchers: _ByRun[Callable[[RunDetails], None]] = _ByRun()
        # Per run id and tenant: what to call if the initial check finds no such run.
        self._missing: dict[str, dict[str, list[Callable[[], None]]]] = {}
        self._streams: _ByRun[asyncio.Queue[StreamEvent | None]] = _ByRun()
        self._checks: dict[str, set[str]] = {}
        self._checking: asyncio.Task[object] | None = None

    async def stop(self, grace: float = 0.0) -> None:
        task, self._checking = self._checking, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def watch(
        self,
        tenant_id: str,
        run_id: str,
        callback: Callable[[RunDetails], None],
        on_missing: Callable[[], None] | None = None,
    ) -> Callable[[], None]:
        """Call ``callback`` once with the run's details when it is done (at once if it is);
        ``on_missing`` instead if the tenant has no such run. Returns an unwatch function."""
        fired = False

        def deliver(found: RunDetails) -> None:
            nonlocal fired
            if not fired and found.tenant_id == tenant_id:
                fired = True
                unwatch()
                callback(found)

        # Register before reading, so a run finishing in between is not missed.
        unwatch = self._watchers.add(run_id, tenant_id, deliver)
        if on_missing is not None:
            self._missing.setdefault(run_id, {}).setdefault(tenant_id, []).append(on_missing)
        self._checks.setdefault(tenant_id, set()).add(run_id)
        if self._checking is None:
            self._checking = self._spawn(self._check(), "watch-check")
        return unwatch

    def recheck(self) -> None:
        """Read every watched run again: after a commit whose outcome the engine could not
        learn (the connection went down during it), a run may have finished with nobody
        told."""
        for run_id, entries in self._watchers._by_run.items():
            for tenant_id, _ in entries:
                self._checks.setdefault(tenant_id, set()).add(run_id)
        if self._checks and self._checking is None:
            self._checking = self._spawn(self._check(), "watch-recheck")

    async def _check(self) -> None:
        """Read, in batches, whether newly watched runs are done or missing."""
        try:
            while self._checks:
                checks, self._checks = self._checks, {}
                for tenant_id, run_ids in checks.items():
                    try:
                        found = await self.store.runs_get(tenant_id, run_ids)
                    except StoreError as exc:
                        logger.warning("could not read watched runs: %s", exc)
                        found = []
                        await asyncio.sleep(0.1)
                        self._checks.setdefault(tenant_id, set()).update(run_ids)
                        continue
                    seen = set()
                    for run, tasks in found:
                        seen.add(run.id)
                        d = details(run, tasks)
                        if d.done:
                            for _, deliver in self._watchers.get(run.id, tenant_id):
                                deliver(d)
                        self._missing_of(run.id).pop(tenant_id, None)
                    for run_id in run_ids - seen:
                        for entry in self._watchers.get(run_id, tenant_id):
                            self._drop_watcher(run_id, entry)
                        for on_missing in self._missing_of(run_id).pop(tenant_id, ()):
                            on_missing()
        finally:
            self._checking = None

    def _missing_of(self, run_id: str) -> dict[str, list[Callable[[], None]]]:
        by_tenant = self._missing.get(run_id)
        if by_tenant is None:
            return {}
        if len(by_tenant) <= 1:
            del self._missing[run_id]
        return by_tenant

    def _drop_watcher(self, run_id: str, entry: tuple[str, Callable[[RunDetails], None]]) -> None:
        entries = self._watchers._by_run.get(run_id)
        if entries and entry in entries:
            entries.remove(entry)
            if not entries:
                del self._watchers._by_run[run_id]

    def finished(self, runs: Sequence[RunDetails]) -> None:
        """Runs that finished in a committed transaction."""
        for found in runs:
            for _, queue in self._streams.get(found.id):
                queue.put_nowait(None)
            for _, deliver in self._watchers.get(found.id):
                deliver(found)
            self._missing.pop(found.id, None)

    def put_stream(self, tenant_id: str, event: StreamEvent) -> None:
        for _, queue in self._streams.get(event.run_id, tenant_id):
            queue.put_nowait(event)

    async def subscribe_stream(
        self, tenant_id: str, run_id: str
    ) -> tuple[asyncio.Queue[StreamEvent | None], Callable[[], None]]:
        """A queue of the run's stream events, ending with None once the run is done."""
        queue: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
        # Register before reading, so a run finishing in between still ends the stream.
        unsubscribe = self._streams.add(run_id, tenant_id, queue)
        try:
            found = await self.store.run_get(tenant_id, run_id)
            if found is None:
                raise NotFound(f"run {run_id!r} not found")
        except BaseException:
            unsubscribe()
            raise
        if details(*found).done:
            queue.put_nowait(None)
        return queue, unsubscribe
