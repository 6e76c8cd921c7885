"""The scheduler: matches ready tasks to workers with free slots.

Ownership rule: every structure in this module (worker slot pools, queues, the delayed
heap) belongs to the one asyncio task running :meth:`Scheduler.run`. Other coroutines never
touch them; they call the public methods, which only post a message to the inbox. No locks.

A pass decides in memory (priority, then FIFO; each task placed on the eligible worker with
the most free units, so work spreads), commits the whole batch in one store transaction
(queue item gone, attempt created, slot taken), then hands the committed assignments to the
dispatch callback. A decision the store refused (the task was cancelled meanwhile) gives its
slot back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from hewer.domain import (
    Assignment,
    ConcurrencyStrategy,
    DispatchInfo,
    GateClaim,
    QueueItem,
    RateClaim,
    RunningTask,
    StickyStrategy,
)
from hewer.engine.core.clock import Clock
from hewer.store import Store

logger = logging.getLogger(__name__)

DEFAULT_SLOT_TYPE = "default"
DEFAULT_SLOTS = 100
MAX_BATCH = 500
# How far past an unplaceable head a pass looks in one queue (labels, slot sizes).
SCAN_LIMIT = 64
RETRY_AFTER_FAILURE = 0.5  # seconds before a pass that failed to commit is tried again

QueueKey = tuple[str, str]  # (tenant id, action id)


@dataclass(slots=True)
class WorkerSlots:
    """The scheduler's view of one worker."""

    id: str
    tenant_id: str
    actions: frozenset[str]
    capacity: dict[str, int]
    used: dict[str, int] = field(default_factory=dict)
    assignable: bool = False
    labels: dict[str, str | int] = field(default_factory=dict)

    def free(self, slot_type: str) -> int:
        return self.capacity.get(slot_type, 0) - self.used.get(slot_type, 0)

    def has_free(self) -> bool:
        return any(self.free(t) > 0 for t in self.capacity)

    def fits(self, requests: dict[str, int]) -> bool:
        return all(self.free(t) >= n for t, n in requests.items())

    def take(self, requests: dict[str, int]) -> None:
        for t, n in requests.items():
            self.used[t] = self.used.get(t, 0) + n

    def give_back(self, requests: dict[str, int]) -> None:
        for t, n in requests.items():
            left = self.used.get(t, 0) - n
            if left < 0:
                logger.error("slot accounting underflow on worker %s (%s)", self.id, t)
                left = 0
            self.used[t] = left


# Inbox messages ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Enqueue:
    items: tuple[QueueItem, ...]


@dataclass(frozen=True, slots=True)
class _WorkerUp:
    worker: WorkerSlots


@dataclass(frozen=True, slots=True)
class _WorkerAssignable:
    worker_id: str
    assignable: bool


@dataclass(frozen=True, slots=True)
class _WorkerRemove:
    worker_id: str


@dataclass(frozen=True, slots=True)
class _WorkerLabels:
    worker_id: str
    labels: dict[str, str | int]


@dataclass(frozen=True, slots=True)
class _Free:
    tasks: tuple[RunningTask, ...]


@dataclass(frozen=True, slots=True)
class _Hold:
    tasks: tuple[RunningTask, ...]


@dataclass(frozen=True, slots=True)
class _Remove:
    task_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Release:
    holders: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _HoldGates:
    claims: tuple[GateClaim, ...]


@dataclass(frozen=True, slots=True)
class _SetRateLimit:
    tenant_id: str
    key: str
    limit: int
    duration_s: float


@dataclass(frozen=True, slots=True)
class _Inspect:
    future: asyncio.Future[dict[str, dict[str, int]]]


_Message = (
    _Enqueue
    | _WorkerUp
    | _WorkerAssignable
    | _WorkerRemove
    | _WorkerLabels
    | _Free
    | _Hold
    | _Remove
    | _Release
    | _HoldGates
    | _SetRateLimit
    | _Inspect
)

DispatchFn = Callable[[list[DispatchInfo]], None]
CancelFn = Callable[[str, list[str], str], None]  # tenant id, run or task ids, reason

GateId = tuple[str, str, str]  # (tenant id, gate, key)


@dataclass(slots=True)
class _Bucket:
    """``limit`` units per window of ``duration_s``; the whole limit comes back when a
    window ends (as upstream), the first window starting at first use."""

    limit: int
    duration_s: float
    tokens: float
    stamp: float  # when the current window started

    def refill(self, now: float) -> None:
        if now - self.stamp >= self.duration_s:
            windows = (now - self.stamp) // self.duration_s
            self.stamp += windows * self.duration_s
            self.tokens = float(self.limit)

    def wait(self, units: int, now: float) -> float:
        """Seconds until ``units`` are available (after a refill at ``now``)."""
        if units > self.limit:
            return float("inf")
        if self.tokens >= units:
            return 0.0
        return max(0.0, self.stamp + self.duration_s - now)


@dataclass(slots=True)
class _GateKey:
    """Holders of one concurrency key (insertion order = admission order) and the items
    waiting for it, oldest first."""

    holders: dict[str, None] = field(default_factory=dict)
    waiting: deque[QueueItem] = field(default_factory=deque)


class Scheduler:
    """Single-owner scheduling loop; see the module docstring for the ownership rule."""

    def __init__(
        self, store: Store, clock: Clock, dispatch: DispatchFn, cancel: CancelFn | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._dispatch = dispatch
        self._cancel = cancel or (lambda tenant, ids, reason: None)
        self._gates: dict[GateId, _GateKey] = {}
        # Per (tenant, gate): keys with waiting items, in round-robin order.
        self._turns: dict[tuple[str, str], dict[str, None]] = {}
        self._held_by: dict[str, set[GateId]] = {}
        self._max_seq = 0
        self._static_limits: dict[tuple[str, str], tuple[int, float]] = {}
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._rate_wake: float | None = None  # when a rate-limited task may fit again
        self._inbox: asyncio.Queue[_Message] = asyncio.Queue()
        self._workers: dict[str, WorkerSlots] = {}
        self._queues: dict[QueueKey, list[tuple[int, int, int, QueueItem]]] = {}
        self._delayed: list[tuple[float, int, QueueItem]] = []
        self._queued: dict[str, int] = {}  # task id -> retry_count waiting in a queue
        self._tiebreak = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._retry_at: float | None = None  # after a failed commit, try again then
        self.passes = 0

    # -- public API: post a message, never touch state ------------------------------

    def enqueue(self, items: Iterable[QueueItem]) -> None:
        batch = tuple(items)
        if batch:
            self._inbox.put_nowait(_Enqueue(batch))

    def worker_up(self, worker: WorkerSlots) -> None:
        self._inbox.put_nowait(_WorkerUp(worker))

    def set_assignable(self, worker_id: str, assignable: bool) -> None:
        self._inbox.put_nowait(_WorkerAssignable(worker_id, assignable))

    def worker_remove(self, worker_id: str) -> None:
        self._inbox.put_nowait(_WorkerRemove(worker_id))

    def set_labels(self, worker_id: str, labels: dict[str, str | int]) -> None:
        self._inbox.put_nowait(_WorkerLabels(worker_id, dict(labels)))

    def free(self, tasks: Iterable[RunningTask]) -> None:
        batch = tuple(t for t in tasks if not t.slot_released)
        if batch:
            self._inbox.put_nowait(_Free(batch))

    def hold(self, tasks: Iterable[RunningTask]) -> None:
        batch = tuple(t for t in tasks if not t.slot_released)
        if batch:
            self._inbox.put_nowait(_Hold(batch))

    def release(self, holders: Iterable[str]) -> None:
        """Runs or tasks that no longer hold their concurrency keys (finished, ended)."""
        batch = tuple(holders)
        if batch:
            self._inbox.put_nowait(_Release(batch))

    def set_rate_limit(self, tenant_id: str, key: str, limit: int, duration_s: float) -> None:
        self._inbox.put_nowait(_SetRateLimit(tenant_id, key, limit, duration_s))

    def hold_gates(self, claims: Iterable[GateClaim]) -> None:
        batch = tuple(claims)
        if batch:
            self._inbox.put_nowait(_HoldGates(batch))

    def remove(self, task_ids: Iterable[str]) -> None:
        batch = tuple(task_ids)
        if batch:
            self._inbox.put_nowait(_Remove(batch))

    async def slot_usage(self) -> dict[str, dict[str, int]]:
        """Used units per worker and slot type, read through the loop (for tests and APIs)."""
        future: asyncio.Future[dict[str, dict[str, int]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._inbox.put_nowait(_Inspect(future))
        return await future

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="hewer-scheduler")
            self._task.add_done_callback(_report_exit)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        while True:
            try:
                msg = await asyncio.wait_for(self._inbox.get(), self._next_delay())
                self._apply(msg)
            except TimeoutError:
                pass
            self._drain_inbox()
            try:
                while await self._pass():
                    # A full batch means more may fit: apply news first, then go again.
                    self._drain_inbox()
            except Exception:
                logger.exception("scheduling pass failed; its tasks stay queued, retrying")
                self._retry_at = self._clock.monotonic() + RETRY_AFTER_FAILURE

    def _drain_inbox(self) -> None:
        while not self._inbox.empty():
            self._apply(self._inbox.get_nowait())

    # -- state changes (loop task only) ----------------------------------------------

    def _apply(self, msg: _Message) -> None:
        try:
            self._apply_one(msg)
        except Exception:
            logger.exception("scheduler could not apply %s", type(msg).__name__)

    def _apply_one(self, msg: _Message) -> None:
        match msg:
            case _Enqueue(items):
                now = self._clock.now()
                for item in items:
                    if self._queued.get(item.task_id, -1) >= item.retry_count:
                        continue
                    self._queued[item.task_id] = item.retry_count
                    self._max_seq = max(self._max_seq, item.seq)
                    if item.gates and not self._arrive(item):
                        continue  # waits for its concurrency keys (or was refused)
                    if item.available_at > now:
                        heapq.heappush(
                            self._delayed, (item.available_at, next(self._tiebreak), item)
                        )
                    else:
                        self._push(item)
            case _WorkerUp(worker):
                known = self._workers.get(worker.id)
                if known is not None:
                    worker.used = known.used
                self._workers[worker.id] = worker
            case _WorkerAssignable(worker_id, assignable):
                if (w := self._workers.get(worker_id)) is not None:
                    w.assignable = assignable
            case _WorkerRemove(worker_id):
                self._workers.pop(worker_id, None)
            case _WorkerLabels(worker_id, labels):
                if (w := self._workers.get(worker_id)) is not None:
                    w.labels = labels
            case _Free(tasks):
                for t in tasks:
                    if (w := self._workers.get(t.worker_id)) is not None:
                        w.give_back(t.slot_requests)
            case _Hold(tasks):
                for t in tasks:
                    if (w := self._workers.get(t.worker_id)) is not None:
                        w.take(t.slot_requests)
            case _Release(holders):
                for holder in holders:
                    for gate_id in self._held_by.pop(holder, ()):
                        if (gk := self._gates.get(gate_id)) is not None:
                            gk.holders.pop(holder, None)
                            self._drop_if_idle(gate_id, gk)
            case _HoldGates(claims):
                for claim in claims:
                    self._hold(claim.holder, self._gate_id(claim))
            case _SetRateLimit(tenant_id, key, limit, duration_s):
                self._static_limits[(tenant_id, key)] = (limit, duration_s)
                bucket = self._buckets.get((tenant_id, key))
                if bucket is not None:
                    bucket.refill(self._clock.now())
                    bucket.limit, bucket.duration_s = limit, duration_s
                    bucket.tokens = min(bucket.tokens, float(limit))
            case _Remove(task_ids):
                for task_id in task_ids:
                    self._queued.pop(task_id, None)
            case _Inspect(future):
                if not future.done():
                    future.set_result({wid: dict(w.used) for wid, w in self._workers.items()})

    # -- concurrency gates (loop task only) ------------------------------------------

    def _gate_id(self, claim: GateClaim) -> GateId:
        return (claim.tenant_id, claim.gate, claim.key)

    def _gate(self, claim: GateClaim) -> _GateKey:
        return self._gates.setdefault(self._gate_id(claim), _GateKey())

    def _hold(self, holder: str, gate_id: GateId) -> None:
        self._gates.setdefault(gate_id, _GateKey()).holders[holder] = None
        self._held_by.setdefault(holder, set()).add(gate_id)

    def _drop_if_idle(self, gate_id: GateId, gk: _GateKey) -> None:
        if not gk.holders and not gk.waiting:
            del self._gates[gate_id]

    def _admissible(self, item: QueueItem) -> bool:
        for claim in item.gates:
            gk = self._gates.get(self._gate_id(claim))
            held = gk.holders if gk is not None else {}
            if claim.holder not in held and len(held) >= claim.max_runs:
                return False
        return True

    def _arrive(self, item: QueueItem) -> bool:
        """Apply each limit's strategy to a newcomer; True if it may go straight on."""
        for claim in item.gates:
            gk = self._gate(claim)
            if claim.holder in gk.holders:
                continue
            full = len(gk.holders) >= claim.max_runs
            if not full:
                continue
            tenant = claim.tenant_id
            match claim.strategy:
                case ConcurrencyStrategy.CANCEL_NEWEST:
                    self._refuse(item, claim, "concurrency limit reached (CANCEL_NEWEST)")
                    return False
                case ConcurrencyStrategy.CANCEL_IN_PROGRESS:
                    excess = len(gk.holders) - claim.max_runs + 1
                    oldest = list(gk.holders)[:excess]
                    waiting = [w for w in gk.waiting if self._is_live(w)]
                    gk.waiting.clear()
                    ids = oldest + [_claim_for(w, claim.gate).holder for w in waiting]
                    self._cancel(tenant, ids, "superseded by a newer run (CANCEL_IN_PROGRESS)")
                case ConcurrencyStrategy.CANCEL_QUEUED_EXCEPT_NEWEST:
                    waiting = [w for w in gk.waiting if self._is_live(w)]
                    gk.waiting.clear()
                    ids = [_claim_for(w, claim.gate).holder for w in waiting]
                    if ids:
                        reason = "superseded by a newer queued run (CANCEL_QUEUED_EXCEPT_NEWEST)"
                        self._cancel(tenant, ids, reason)
                case ConcurrencyStrategy.CANCEL_QUEUED_EXCEPT_OLDEST:
                    if any(self._is_live(w) for w in gk.waiting):
                        reason = "an older run is already queued (CANCEL_QUEUED_EXCEPT_OLDEST)"
                        self._refuse(item, claim, reason)
                        return False
                case ConcurrencyStrategy.GROUP_ROUND_ROBIN:
                    pass
        if self._admissible(item) and not self._waiting_ahead(item):
            self._admit(item)
            return True
        first = item.gates[0]
        self._gate(first).waiting.append(item)
        self._turns.setdefault((first.tenant_id, first.gate), {})[first.key] = None
        return False

    def _waiting_ahead(self, item: QueueItem) -> bool:
        """Whether older items wait for the same first key (FIFO within a key)."""
        first = item.gates[0]
        gk = self._gates.get(self._gate_id(first))
        return (
            gk is not None
            and first.holder not in gk.holders
            and any(self._is_live(w) for w in gk.waiting)
        )

    def _refuse(self, item: QueueItem, claim: GateClaim, reason: str) -> None:
        self._queued.pop(item.task_id, None)
        self._cancel(claim.tenant_id, [claim.holder], reason)

    def _admit(self, item: QueueItem) -> None:
        for claim in item.gates:
            self._hold(claim.holder, self._gate_id(claim))

    def _admit_waiting(self, now: float) -> None:
        """Let waiting items in while their keys have room, keys taking turns."""
        for turn_id, keys in list(self._turns.items()):
            tenant, gate = turn_id
            progress = True
            while progress and keys:
                progress = False
                for key in list(keys):
                    gk = self._gates.get((tenant, gate, key))
                    while gk is not None and gk.waiting and not self._is_live(gk.waiting[0]):
                        gk.waiting.popleft()
                    if gk is None or not gk.waiting:
                        keys.pop(key, None)
                        if gk is not None:
                            self._drop_if_idle((tenant, gate, key), gk)
                        continue
                    head = gk.waiting[0]
                    if not self._admissible(head):
                        continue
                    gk.waiting.popleft()
                    self._admit(head)
                    self._release_to_queues(head, now)
                    # Round robin: this key goes to the back of the line.
                    keys.pop(key, None)
                    keys[key] = None
                    progress = True
            if not keys:
                del self._turns[turn_id]

    def _release_to_queues(self, item: QueueItem, now: float) -> None:
        # An item let in after waiting for its key joins the back of the line, as if it had
        # just arrived; its old place would let one key's backlog starve the others.
        self._max_seq += 1
        item = replace(item, seq=self._max_seq)
        if item.available_at > now:
            heapq.heappush(self._delayed, (item.available_at, next(self._tiebreak), item))
        else:
            self._push(item)

    def _push(self, item: QueueItem) -> None:
        key = (item.tenant_id, item.action_id)
        entry = (-item.priority, item.seq, next(self._tiebreak), item)
        heapq.heappush(self._queues.setdefault(key, []), entry)

    def _is_live(self, item: QueueItem) -> bool:
        return self._queued.get(item.task_id) == item.retry_count

    def _next_delay(self) -> float | None:
        delays = []
        if self._delayed:
            delays.append(self._delayed[0][0] - self._clock.now())
        if self._retry_at is not None:
            delays.append(self._retry_at - self._clock.monotonic())
        if self._rate_wake is not None:
            delays.append(self._rate_wake - self._clock.now())
        return max(0.0, min(delays)) if delays else None

    def _promote_delayed(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, item = heapq.heappop(self._delayed)
            if self._is_live(item):
                self._push(item)

    def _decide(self) -> list[tuple[Assignment, QueueItem]]:
        """Pick up to MAX_BATCH assignments, highest priority then oldest first."""
        now = self._clock.now()
        self._rate_wake = None
        self._admit_waiting(now)
        by_key: dict[QueueKey, list[WorkerSlots]] = {}
        for w in self._workers.values():
            if not w.assignable:
                continue
            for action in w.actions:
                by_key.setdefault((w.tenant_id, action), []).append(w)

        heads: list[tuple[int, int, QueueKey]] = []
        for key, queue in self._queues.items():
            if key in by_key and self._drop_dead_heads(queue):
                prio, seq, _, _ = queue[0]
                heads.append((prio, seq, key))
        heapq.heapify(heads)

        out: list[tuple[Assignment, QueueItem]] = []
        while heads and len(out) < MAX_BATCH:
            _, _, key = heapq.heappop(heads)
            queue = self._queues[key]
            workers = by_key[key]
            if not any(w.has_free() for w in workers):
                continue  # this action waits until a slot frees up
            # Items the head cannot use (labels, slot size) must not block the ones behind
            # it: look a bounded way down the queue, then put the skipped ones back.
            skipped: list[tuple[int, int, int, QueueItem]] = []
            placed = False
            while queue and len(skipped) < SCAN_LIMIT:
                entry = heapq.heappop(queue)
                item = entry[3]
                if not self._is_live(item):
                    continue
                if item.rates and not self._rates_allow(item, now):
                    skipped.append(entry)
                    continue
                best = _best_worker(item, workers)
                if best is None:
                    skipped.append(entry)
                    continue
                self._consume(item, 1)
                del self._queued[item.task_id]
                best.take(item.slot_requests)
                assignment = Assignment(
                    item.task_id, item.tenant_id, best.id, item.retry_count, item.slot_requests
                )
                out.append((assignment, item))
                placed = True
                break
            for entry in skipped:
                heapq.heappush(queue, entry)
            if placed and self._drop_dead_heads(queue):
                prio, seq, _, _ = queue[0]
                heapq.heappush(heads, (prio, seq, key))
        for key in [k for k, q in self._queues.items() if not q]:
            del self._queues[key]
        return out

    # -- rate limits (loop task only) -------------------------------------------------

    def _bucket(self, tenant_id: str, claim: RateClaim, now: float) -> _Bucket | None:
        key = (tenant_id, claim.key)
        bucket = self._buckets.get(key)
        if claim.limit is not None:  # dynamic: the task says what the limit is
            limit, duration = claim.limit, claim.duration_s
        elif key in self._static_limits:
            limit, duration = self._static_limits[key]
        else:
            return None  # a static key nobody declared: wait until it is
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(limit, duration, float(limit), now)
        elif (bucket.limit, bucket.duration_s) != (limit, duration):
            bucket.refill(now)
            bucket.limit, bucket.duration_s = limit, duration
            bucket.tokens = min(bucket.tokens, float(limit))
        return bucket

    def _rates_allow(self, item: QueueItem, now: float) -> bool:
        """Whether every rate limit of the item has its units now; if not, note when the
        next pass should look again (no busy loop)."""
        for claim in item.rates:
            bucket = self._bucket(item.tenant_id, claim, now)
            if bucket is None:
                return False
            bucket.refill(now)
            wait = bucket.wait(claim.units, now)
            if wait > 0:
                if wait != float("inf"):
                    at = now + wait
                    self._rate_wake = at if self._rate_wake is None else min(self._rate_wake, at)
                return False
        return True

    def _consume(self, item: QueueItem, sign: int) -> None:
        for claim in item.rates:
            bucket = self._buckets.get((item.tenant_id, claim.key))
            if bucket is not None:
                bucket.tokens = min(float(bucket.limit), bucket.tokens - sign * claim.units)

    def _drop_dead_heads(self, queue: list[tuple[int, int, int, QueueItem]]) -> bool:
        while queue and not self._is_live(queue[0][3]):
            heapq.heappop(queue)
        return bool(queue)

    async def _pass(self) -> bool:
        """One scheduling pass; True if the batch was full (there may be more to do)."""
        now = self._clock.now()
        self._retry_at = None
        self._promote_delayed(now)
        decided = self._decide()
        if not decided:
            return False
        self.passes += 1
        try:
            committed = await self._store.tasks_assign([a for a, _ in decided], now)
        except Exception:
            # Nothing was written: give the slots back and put the tasks back in line.
            for assignment, item in decided:
                self._give_back(assignment)
                self._consume(item, -1)
                self._queued[item.task_id] = item.retry_count
                self._push(item)
            raise
        done = {d.task_id for d in committed}
        for assignment, item in decided:
            if assignment.task_id not in done:
                self._give_back(assignment)
                self._consume(item, -1)
        if committed:
            self._dispatch(committed)
        return len(decided) >= MAX_BATCH

    def _give_back(self, a: Assignment) -> None:
        if (w := self._workers.get(a.worker_id)) is not None:
            w.give_back(a.slot_requests)

    # -- read-only helpers for tests ---------------------------------------------------

    def queued_count(self) -> int:
        return len(self._queued)

    def gate_holders(self) -> dict[GateId, int]:
        """Holders per concurrency key (read from the loop's state; for tests)."""
        return {gid: len(gk.holders) for gid, gk in self._gates.items() if gk.holders}


def _claim_for(item: QueueItem, gate: str) -> GateClaim:
    return next(c for c in item.gates if c.gate == gate)


def _best_worker(item: QueueItem, workers: list[WorkerSlots]) -> WorkerSlots | None:
    """The eligible worker for ``item``. A sticky task goes to its run's worker (HARD: only
    there). Otherwise every required label must be satisfied and all slot units free; the
    weights of satisfied labels rank, then free units (so that work spreads)."""
    if item.sticky is not None and item.desired_worker_id is not None:
        pinned = next((w for w in workers if w.id == item.desired_worker_id), None)
        if pinned is not None and pinned.fits(item.slot_requests):
            return pinned
        if item.sticky is StickyStrategy.HARD:
            return None  # only the pinned worker will do; wait for it
    best: WorkerSlots | None = None
    best_rank: tuple[int, int] = (-1, -1)
    desired = item.desired_labels
    for w in workers:
        if not w.fits(item.slot_requests):
            continue
        weight = 0
        eligible = True
        for label in desired:
            if label.satisfied_by(w.labels):
                weight += label.weight
            elif label.required:
                eligible = False
                break
        if not eligible:
            continue
        rank = (weight, sum(w.free(t) for t in item.slot_requests))
        if rank > best_rank:
            best, best_rank = w, rank
    return best


def _report_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.critical("scheduler loop died; no task will be assigned", exc_info=exc)


def worker_slots(
    worker_id: str,
    tenant_id: str,
    actions: Sequence[str],
    slot_config: dict[str, int],
    labels: dict[str, str | int] | None = None,
) -> WorkerSlots:
    capacity = dict(slot_config) if slot_config else {DEFAULT_SLOT_TYPE: DEFAULT_SLOTS}
    return WorkerSlots(
        worker_id, tenant_id, frozenset(actions), capacity, labels=dict(labels or {})
    )
