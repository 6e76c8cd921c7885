"""Time-based endings, swept from the store in pages, each fenced on the attempt it judged:

- an attempt past its execution timeout fails (retried if retries remain) and its worker is
  told to cancel it;
- a start no worker acknowledged within the liveness window was lost on the way and gets a
  new attempt;
- a queued task no worker took within its schedule timeout is cancelled.

No deadline is judged while the database is unavailable, nor for ``REPORT_GRACE`` after it
came back: reports that workers could not deliver meanwhile are still on their way (they
retry with a backoff capped at 5 s), and a task that finished in time must not be failed
for an outage of the engine's own database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from hewer.engine.core.clock import Clock
from hewer.engine.core.component import Component
from hewer.engine.core.loop import EngineLoop
from hewer.engine.core.sessions import Sessions
from hewer.engine.core.transitions import Judged, Requeue, TimeOut
from hewer.store import Store

logger = logging.getLogger(__name__)

SWEEP_BATCH = 500
MAX_SWEEPS = 20  # pages per kind and tick
REPORT_GRACE = 10.0
# After a restart, workers come back at their reconnect backoff (the SDKs cap it at 5 s),
# then connect, register and resend: a start sent before the restart is judged only once
# its worker had twice that long to say it runs it, else a live worker's task would be
# handed to a second one.
RECONNECT_ALLOWANCE = 10.0

CancelFn = Callable[[str, Sequence[str], str], Awaitable[list[str]]]


class Sweeps(Component):
    def __init__(
        self,
        store: Store,
        clock: Clock,
        loop: EngineLoop,
        sessions: Sessions,
        cancel: CancelFn,
        *,
        inactive_after: float,
    ) -> None:
        self.store = store
        self.clock = clock
        self.loop = loop
        self.sessions = sessions
        self.cancel = cancel
        self.inactive_after = inactive_after
        self.started_at = clock.monotonic()
        self.started_wall = clock.now()
        self._interval = 1.0
        self._reap: Callable[[], Awaitable[object]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.schedule_timeouts: dict[str, int] = {}
        """Per tenant, queued tasks cancelled at their schedule timeout (for metrics)."""

    async def expire(self) -> int:
        """One sweep of every kind; returns how many tasks or attempts ended."""
        if self.loop.unavailable is not None:
            return 0
        back = self.loop.back_at
        if back is not None and self.clock.monotonic() - back < REPORT_GRACE:
            return 0
        now = self.clock.now()
        ended = 0
        for _ in range(MAX_SWEEPS):
            batch = await self.store.tasks_timed_out(now, SWEEP_BATCH)
            if batch:
                judged = [
                    Judged(t.tenant_id, t.id, t.retry_count, t.worker_id or "") for t in batch
                ]
                ended += len((await self.loop.run(TimeOut(judged))).stop)
            if len(batch) < SWEEP_BATCH:
                break
        self.sessions.prune_sent()
        # Starts are judged only after a full window of this engine's life: one sent before
        # a restart gets a fresh window, plus the time its worker takes to reconnect.
        age = self.clock.monotonic() - self.started_at
        if age > self.inactive_after:
            settled = age > self.inactive_after + RECONNECT_ALLOWANCE
            lost = [
                Judged(t.tenant_id, t.id, t.retry_count, t.worker_id or "")
                for t in await self.store.tasks_unacked(now - self.inactive_after, SWEEP_BATCH)
                if (settled or (t.assigned_at or 0.0) >= self.started_wall)
                and not self.sessions.still_on_open_stream(t.id, t.retry_count, t.worker_id or "")
            ]
            for j in lost:
                self.sessions.forget_sent(j.task_id, j.retry_count)
            if lost:
                reason = "start never acknowledged by the worker"
                outcome = await self.loop.run(Requeue(reason, attempts=lost))
                ended += len(outcome.queued) + len(outcome.failed)
                if outcome.queued or outcome.failed:
                    logger.warning(
                        "re-queued %d task(s), failed %d at the reassignment cap: %s",
                        len(outcome.queued),
                        len(outcome.failed),
                        reason,
                    )
        for _ in range(MAX_SWEEPS):
            expired = await self.store.tasks_schedule_expired(now, SWEEP_BATCH)
            by_tenant: dict[str, list[str]] = {}
            for t in expired:
                by_tenant.setdefault(t.tenant_id, []).append(t.id)
            for tenant_id, task_ids in by_tenant.items():
                reason = "schedule timeout: no worker took the task in time"
                cancelled = set(await self.cancel(tenant_id, task_ids, reason))
                timed_out = len(cancelled.intersection(task_ids))
                self.schedule_timeouts[tenant_id] = (
                    self.schedule_timeouts.get(tenant_id, 0) + timed_out
                )
                ended += len(cancelled)
            if len(expired) < SWEEP_BATCH:
                break
        return ended

    def every(self, interval: float, reap: Callable[[], Awaitable[object]]) -> None:
        """Sweep (and ``reap`` silent workers) every ``interval`` seconds once started."""
        self._interval = interval
        self._reap = reap

    async def start(self) -> None:
        self.started_at = self.clock.monotonic()
        self.started_wall = self.clock.now()
        if self._task is None and self._reap is not None:
            self._task = asyncio.create_task(self._forever(), name="hewer-reaper")

    async def stop(self, grace: float = 0.0) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _forever(self) -> None:
        assert self._reap is not None
        while True:
            await asyncio.sleep(self._interval)
            for step in (self._reap, self.expire):
                try:
                    await step()
                except Exception:
                    logger.exception(
                        "%s pass failed; retrying next tick", getattr(step, "__name__", step)
                    )
