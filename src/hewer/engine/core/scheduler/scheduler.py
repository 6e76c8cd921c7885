"""The scheduler: matches queued tasks to workers with free slots, in memory.

Ownership: the engine loop (:mod:`hewer.engine.core.loop`) owns this object; every method
runs on the loop's thread and none awaits, so its state is never seen half-changed.

A decision pass (:meth:`Scheduler.decide`) takes tasks highest priority first, then
oldest, and places each on the eligible worker with the most free units (required labels
filter, satisfied label weights rank, sticky runs go back to their worker). It takes the
slots at once; the engine loop writes the decisions in the same transaction as the reports
that freed those slots, and :meth:`Scheduler.settle` gives back what the store refused.

Memory is bounded by queue, not by backlog: each queue keeps a window of its best items
(:class:`Window`) and refills from the store as the window drains.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from hewer.domain import (
    Assignment,
    GateClaim,
    QueueItem,
    QueuePage,
    RunningTask,
    StickyStrategy,
)
from hewer.engine.core.clock import Clock
from hewer.engine.core.scheduler.gates import CancelFn, GateId, Gates
from hewer.engine.core.scheduler.pools import CapacityIndex, QueueKey, WorkerSlots
from hewer.engine.core.scheduler.rates import RateLimits

logger = logging.getLogger(__name__)

MAX_BATCH = 256  # decisions per pass: bounds how long a pass holds the loop (< 10 ms)
SCAN_LIMIT = 64  # how far past an unplaceable head a pass looks in one queue
LIKELY_MAX_QUEUES = 32  # more queues than this: no look-ahead hint (it would cost too much)
WINDOW = 2000  # items per queue kept in memory...
REFILL_BELOW = 500  # ...refilled from the store when fewer than this remain...
TRIM_ABOVE = 2 * WINDOW  # ...and trimmed back to WINDOW when more arrive than this

Position = tuple[int, int]  # (-priority, seq): smaller goes first


def position(item: QueueItem) -> Position:
    return (-item.priority, item.seq)


@dataclass(slots=True)
class Window:
    """One queue's items in memory. Invariant: every task of this queue that is queued in
    the store at a position up to ``mark`` is in memory (ready, delayed, waiting at a
    concurrency key, or being assigned). With ``more``, the store may hold tasks after
    ``mark`` (``mark`` None: after the start) that are not."""

    ready: list[tuple[int, int, int, QueueItem]] = field(default_factory=list)
    delayed: int = 0
    more: bool = False
    mark: Position | None = None

    def beyond(self, item: QueueItem) -> bool:
        """Whether the item lies after the part of the queue kept in memory."""
        return self.more and (self.mark is None or position(item) > self.mark)


class Scheduler:
    def __init__(
        self,
        clock: Clock,
        cancel: CancelFn | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self._clock = clock
        self._cancel: CancelFn = cancel or (lambda tenant, ids, reason: None)
        self._wake = wake or (lambda: None)
        self._workers: dict[str, WorkerSlots] = {}
        self._index = CapacityIndex()
        self._windows: dict[QueueKey, Window] = {}
        self._delayed: list[tuple[float, int, int, QueueItem]] = []
        self._queued: dict[str, int] = {}  # task id -> retry_count waiting in memory
        self._pending: dict[str, tuple[Assignment, QueueItem]] = {}  # decided, uncommitted
        self._gates = Gates(self._cancel_holders, self._is_live)
        self._rates = RateLimits()
        self._tiebreak = itertools.count()
        self._max_seq = 0
        self._dirty = True
        self.passes = 0

    # -- workers ----------------------------------------------------------------------

    def worker_up(self, worker: WorkerSlots) -> None:
        known = self._workers.get(worker.id)
        if known is not None:
            worker.used = known.used
            worker.assignable = worker.assignable or known.assignable
        self._workers[worker.id] = worker
        self._index.invalidate(worker.tenant_id)
        self._changed()

    def set_assignable(self, worker_id: str, assignable: bool) -> None:
        if (w := self._workers.get(worker_id)) is not None and w.assignable != assignable:
            w.assignable = assignable
            self._index.grew(w)
            self._changed()

    def worker_remove(self, worker_id: str) -> None:
        w = self._workers.pop(worker_id, None)
        if w is not None:
            self._index.invalidate(w.tenant_id)

    def set_labels(self, worker_id: str, labels: dict[str, str | int]) -> None:
        if (w := self._workers.get(worker_id)) is not None:
            w.labels = dict(labels)
            self._index.invalidate(w.tenant_id)
            self._changed()

    def has_worker(self, worker_id: str) -> bool:
        return worker_id in self._workers

    # -- slots ------------------------------------------------------------------------

    def free(self, tasks: Iterable[RunningTask]) -> None:
        grew: dict[str, WorkerSlots] = {}
        for t in tasks:
            if not t.slot_released and (w := self._workers.get(t.worker_id)) is not None:
                w.give_back(t.slot_requests)
                grew[w.id] = w
        for w in grew.values():
            self._index.grew(w)
        if grew:
            self._dirty = True

    def hold(self, tasks: Iterable[RunningTask]) -> None:
        for t in tasks:
            if not t.slot_released and (w := self._workers.get(t.worker_id)) is not None:
                w.take(t.slot_requests)

    # -- items ------------------------------------------------------------------------

    def enqueue(self, items: Iterable[QueueItem]) -> None:
        now = self._clock.now()
        for item in items:
            if self._queued.get(item.task_id, -1) >= item.retry_count:
                continue
            window = self._window(item)
            if not item.gates and window.beyond(item):
                continue  # the store has it; a refill brings it in its turn
            self._queued[item.task_id] = item.retry_count
            self._max_seq = max(self._max_seq, item.seq)
            self._dirty = True
            if item.gates:
                admitted = self._gates.arrive(item)
                if admitted is None:
                    self._queued.pop(item.task_id, None)
                if not admitted:
                    continue  # waits for its concurrency keys (or was refused)
            self._place(item, window, now)
        self._trim()
        self._wake()

    def _window(self, item: QueueItem) -> Window:
        key = (item.tenant_id, item.action_id)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = Window()
        return window

    def _place(self, item: QueueItem, window: Window, now: float, seq: int | None = None) -> None:
        """Into the ready heap (or the delayed one), at the item's place in line, or at
        ``seq`` if given."""
        place = item.seq if seq is None else seq
        if item.available_at > now:
            window.delayed += 1
            heapq.heappush(self._delayed, (item.available_at, next(self._tiebreak), place, item))
        else:
            heapq.heappush(window.ready, (-item.priority, place, next(self._tiebreak), item))

    def _trim(self) -> None:
        """Keep each queue's window at most TRIM_ABOVE items: the worst plain items go back
        to being only in the store."""
        for window in self._windows.values():
            if len(window.ready) <= TRIM_ABOVE:
                continue
            live = sorted(e for e in window.ready if self._is_live(e[3]))
            if len(live) <= WINDOW:
                window.ready = live
                continue
            keep = live[:WINDOW]
            for entry in live[WINDOW:]:
                item = entry[3]
                if item.gates:
                    keep.append(entry)  # its place in line is its own; it stays
                else:
                    del self._queued[item.task_id]
            heapq.heapify(keep)
            window.ready = keep
            # Everything evicted lies after the cut; what was beyond the old mark may be
            # missing too.
            last = live[WINDOW - 1]
            cut = (last[0], last[1])
            if not window.more:
                window.mark = cut
            elif window.mark is not None:
                window.mark = min(window.mark, cut)
            window.more = True

    def mark_backlog(self, keys: Iterable[QueueKey]) -> None:
        """These queues have tasks in the store that are not in memory (after a start)."""
        for key in keys:
            window = self._windows.setdefault(key, Window())
            window.more = True
            window.mark = None
        self._changed()

    def refills(self) -> list[QueuePage]:
        """Pages to read: queues that run low, have workers, and have more in the store."""
        out = []
        for key, window in self._windows.items():
            if not window.more:
                continue
            held = len(window.ready) + window.delayed + self._gates.waiting[key]
            if held >= REFILL_BELOW or not self._has_workers(key):
                continue
            after = None if window.mark is None else (-window.mark[0], window.mark[1])
            out.append(QueuePage(key[0], key[1], after, WINDOW))
        return out

    def refilled(self, refill: QueuePage, items: list[QueueItem]) -> None:
        """A page read for ``refill`` (in queue order)."""
        window = self._windows.setdefault((refill.tenant_id, refill.action_id), Window())
        expected = None if refill.after is None else (-refill.after[0], refill.after[1])
        if window.mark != expected or not window.more:
            return  # the window moved meanwhile; the next pass asks again
        now = self._clock.now()
        for item in items:
            if self._queued.get(item.task_id, -1) >= item.retry_count:
                continue
            self._queued[item.task_id] = item.retry_count
            self._max_seq = max(self._max_seq, item.seq)
            if item.gates:
                admitted = self._gates.arrive(item)
                if admitted is None:
                    self._queued.pop(item.task_id, None)
                if not admitted:
                    continue
            self._place(item, window, now)
        if len(items) < refill.limit:
            window.more = False
            window.mark = None
        else:
            window.mark = position(items[-1])
        self._dirty = True

    def remove(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            self._queued.pop(task_id, None)

    def release(self, holders: Iterable[str]) -> None:
        """Runs or tasks that no longer hold their concurrency keys (finished, ended)."""
        if self._gates.release(holders):
            self._dirty = True

    def hold_gates(self, claims: Iterable[GateClaim]) -> None:
        self._gates.hold_claims(claims)

    def set_rate_limit(self, tenant_id: str, key: str, limit: int, duration_s: float) -> None:
        self._rates.declare(tenant_id, key, limit, duration_s, self._clock.now())
        self._changed()

    def _cancel_holders(self, tenant_id: str, holders: list[str], reason: str) -> None:
        self._cancel(tenant_id, holders, reason)

    def _is_live(self, item: QueueItem) -> bool:
        return self._queued.get(item.task_id) == item.retry_count

    def _changed(self) -> None:
        self._dirty = True
        self._wake()

    # -- decisions --------------------------------------------------------------------

    def has_work(self) -> bool:
        """Whether a pass may decide something (something changed since the last one)."""
        if self._delayed and self._delayed[0][0] <= self._clock.now():
            return True
        wake = self._rates.wake
        if wake is not None and wake <= self._clock.now():
            return True
        return self._dirty

    def next_wake(self) -> float | None:
        """When (clock.now() time) a delayed item or a rate limit may let a task in."""
        times = []
        if self._delayed:
            times.append(self._delayed[0][0])
        if self._rates.wake is not None:
            times.append(self._rates.wake)
        return min(times) if times else None

    def _promote_delayed(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, place, item = heapq.heappop(self._delayed)
            window = self._window(item)
            window.delayed -= 1
            if self._is_live(item):
                heapq.heappush(window.ready, (-item.priority, place, next(self._tiebreak), item))

    def _release_admitted(self, item: QueueItem) -> None:
        # An item let in after waiting for its key joins the back of the line, as if it had
        # just arrived; its old place would let one key's backlog starve the others.
        self._max_seq += 1
        self._place(item, self._window(item), self._clock.now(), self._max_seq)

    def _has_workers(self, key: QueueKey) -> bool:
        tenant, action = key
        return any(
            w.assignable and w.tenant_id == tenant and action in w.actions
            for w in self._workers.values()
        )

    def likely(self, n: int) -> list[str]:
        """Up to ``n`` queued task ids the next :meth:`decide` would look at first (highest
        priority, oldest): a hint for loading their rows ahead, nothing is taken. Empty when
        there are too many queues to look at cheaply."""
        windows = self._windows
        if n <= 0 or not windows or len(windows) > LIKELY_MAX_QUEUES:
            return []
        # The k smallest entries of a binary heap lie in its first 2^k - 1 positions; 63
        # per queue keeps the hint cheap (exact for 6, a good guess beyond).
        span = (1 << min(n, 6)) - 1
        best = heapq.nsmallest(n, (e for w in windows.values() for e in w.ready[:span]))
        return [entry[3].task_id for entry in best]

    def decide(self, limit: int = MAX_BATCH) -> list[Assignment]:
        """Pick up to ``limit`` assignments, highest priority then oldest first; their slots
        are taken until :meth:`settle` says which the store refused."""
        now = self._clock.now()
        self._dirty = False
        self._rates.wake = None
        self._promote_delayed(now)
        self._gates.admit_waiting(self._release_admitted, 2 * limit)
        heads: list[tuple[int, int, QueueKey]] = []
        for key, window in self._windows.items():
            if self._drop_dead(window.ready):
                prio, seq, _, _ = window.ready[0]
                heads.append((prio, seq, key))
        heapq.heapify(heads)
        out: list[Assignment] = []
        workers = self._workers
        checked: set[QueueKey] = set()
        while heads and len(out) < limit:
            _, _, key = heapq.heappop(heads)
            queue = self._windows[key].ready
            if key not in checked:
                checked.add(key)
                if self._full(key, queue[0][3], workers):
                    continue  # nothing of this queue fits anywhere until slots free up
            # Items the head cannot use (labels, slot size) must not block the ones behind
            # it: look a bounded way down the queue, then put the skipped ones back.
            skipped: list[tuple[int, int, int, QueueItem]] = []
            placed = False
            while queue and len(skipped) < SCAN_LIMIT:
                entry = heapq.heappop(queue)
                item = entry[3]
                if not self._is_live(item):
                    continue
                if item.rates and not self._rates.allow(item, now):
                    skipped.append(entry)
                    continue
                best = self._best_worker(key, item, workers)
                if best is None:
                    skipped.append(entry)
                    if self._full(key, item, workers):
                        break  # the queue's workers are full: wait for a slot
                    continue
                self._rates.consume(item)
                del self._queued[item.task_id]
                best.take(item.slot_requests)
                assignment = Assignment(
                    item.task_id, item.tenant_id, best.id, item.retry_count, item.slot_requests
                )
                self._pending[item.task_id] = (assignment, item)
                out.append(assignment)
                placed = True
                break
            for entry in skipped:
                heapq.heappush(queue, entry)
            if placed and self._drop_dead(queue):
                prio, seq, _, _ = queue[0]
                heapq.heappush(heads, (prio, seq, key))
        if len(out) >= limit:
            self._dirty = True  # a full batch: there may be more to do
        if out:
            self.passes += 1
        return out

    def _full(self, key: QueueKey, item: QueueItem, workers: dict[str, WorkerSlots]) -> bool:
        """Whether no worker of the queue has a free unit of the item's slot type."""
        slot_type = next(iter(item.slot_requests), "default")
        groups = self._index.groups(key, slot_type, (), workers)
        return all(heap.top_free() <= 0 for _, heap in groups)

    def _best_worker(
        self, key: QueueKey, item: QueueItem, workers: dict[str, WorkerSlots]
    ) -> WorkerSlots | None:
        """The eligible worker for ``item``. A sticky task goes to its run's worker (HARD:
        only there). Otherwise every required label must be satisfied and all slot units
        free; the weights of satisfied labels rank, then free units (so that work
        spreads)."""
        if item.sticky is not None and item.desired_worker_id is not None:
            pinned = workers.get(item.desired_worker_id)
            if (
                pinned is not None
                and pinned.assignable
                and pinned.tenant_id == item.tenant_id
                and item.action_id in pinned.actions
                and pinned.fits(item.slot_requests)
            ):
                return pinned
            if item.sticky is StickyStrategy.HARD:
                return None  # only the pinned worker will do; wait for it
        slot_type = next(iter(item.slot_requests), "default")
        for _, heap in self._index.groups(key, slot_type, item.desired_labels, workers):
            found = heap.best(item.slot_requests)
            if found is not None:
                return found
        return None

    def _drop_dead(self, queue: list[tuple[int, int, int, QueueItem]]) -> bool:
        while queue and not self._is_live(queue[0][3]):
            heapq.heappop(queue)
        return bool(queue)

    def settle(self, refused: Iterable[Assignment] = ()) -> None:
        """The decisions of the last pass were written; ``refused`` ones were not (their
        tasks were no longer queued at that attempt): give their slots back."""
        for a in refused:
            pending = self._pending.get(a.task_id)
            if pending is not None:
                self._give_back(a)
                self._rates.consume(pending[1], -1)
        self._pending.clear()

    def unwind(self) -> None:
        """The last pass's decisions were not written at all: give their slots back and put
        their tasks back in line."""
        for assignment, item in self._pending.values():
            self._give_back(assignment)
            self._rates.consume(item, -1)
            self._queued[item.task_id] = item.retry_count
            self._place(item, self._window(item), self._clock.now())
        self._pending.clear()
        self._dirty = True

    def _give_back(self, a: Assignment) -> None:
        if (w := self._workers.get(a.worker_id)) is not None:
            w.give_back(a.slot_requests)
            self._index.grew(w)
            self._dirty = True

    def reset(self) -> None:
        """Forget everything (the engine rebuilds it from the store)."""
        self._workers.clear()
        self._index = CapacityIndex()
        self._windows.clear()
        self._delayed.clear()
        self._queued.clear()
        self._pending.clear()
        self._gates.clear()
        self._rates = RateLimits()
        self._dirty = True

    # -- reads --------------------------------------------------------------------------

    async def slot_usage(self) -> dict[str, dict[str, int]]:
        """Used units per worker and slot type."""
        return self.usage()

    def usage(self) -> dict[str, dict[str, int]]:
        return {wid: dict(w.used) for wid, w in self._workers.items()}

    def workers(self) -> list[tuple[str, dict[str, int], dict[str, int]]]:
        """(tenant id, capacity, used units) per slot type of every connected worker."""
        return [(w.tenant_id, dict(w.capacity), dict(w.used)) for w in self._workers.values()]

    def worker_labels(
        self,
    ) -> list[tuple[str, dict[str, str | int], dict[str, int], dict[str, int]]]:
        """(tenant id, labels, capacity, used units) of every connected worker."""
        return [
            (w.tenant_id, dict(w.labels), dict(w.capacity), dict(w.used))
            for w in self._workers.values()
        ]

    def rate_limited(self) -> dict[str, int]:
        """Per tenant, times a queued task was held back by a rate limit so far."""
        return dict(self._rates.refused)

    def queued_count(self) -> int:
        return len(self._queued)

    def gate_holders(self) -> dict[GateId, int]:
        """Holders per concurrency key."""
        return self._gates.holders()
