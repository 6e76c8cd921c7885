"""Workers' slot pools, and the index that finds the one with the most free units."""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from hewer import defaults
from hewer.domain import DesiredLabel

logger = logging.getLogger(__name__)

QueueKey = tuple[str, str]  # (tenant id, action id)


@dataclass(slots=True, eq=False)
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

    def fits(self, requests: dict[str, int]) -> bool:
        # A plain loop: all() over a generator costs twice as much on the hot path.
        for t, n in requests.items():  # noqa: SIM110
            if self.capacity.get(t, 0) - self.used.get(t, 0) < n:
                return False
        return True

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


def worker_slots(
    worker_id: str,
    tenant_id: str,
    actions: Iterable[str],
    slot_config: dict[str, int],
    labels: dict[str, str | int] | None = None,
) -> WorkerSlots:
    capacity = (
        dict(slot_config) if slot_config else {defaults.DEFAULT_SLOT_TYPE: defaults.DEFAULT_SLOTS}
    )
    return WorkerSlots(
        worker_id, tenant_id, frozenset(actions), capacity, labels=dict(labels or {})
    )


_tiebreak = itertools.count()


class FreeHeap:
    """Workers of one group by free units of one slot type, most first.

    Lazy both ways: an entry claims the free units its worker had when it was pushed. A
    worker is pushed again whenever its free units grow; when they shrink nothing happens,
    and an entry that claims more than its worker has is corrected when it surfaces. So for
    every member with free units some entry claims at least as many, and the top entry, once
    corrected, is the best worker."""

    __slots__ = ("_heap", "members", "slot_type")

    def __init__(self, slot_type: str) -> None:
        self.slot_type = slot_type
        self._heap: list[tuple[int, int, WorkerSlots]] = []
        self.members: dict[str, WorkerSlots] = {}

    def push(self, w: WorkerSlots) -> None:
        free = w.capacity.get(self.slot_type, 0) - w.used.get(self.slot_type, 0)
        if free > 0:
            heapq.heappush(self._heap, (-free, next(_tiebreak), w))
            if len(self._heap) > 64 and len(self._heap) > 4 * len(self.members):
                self._rebuild()

    def _rebuild(self) -> None:
        t = self.slot_type
        self._heap = [
            (-(w.capacity.get(t, 0) - w.used.get(t, 0)), next(_tiebreak), w)
            for w in self.members.values()
            if w.assignable and w.capacity.get(t, 0) - w.used.get(t, 0) > 0
        ]
        heapq.heapify(self._heap)

    def _top(self) -> tuple[int, int, WorkerSlots] | None:
        """The best entry, corrected (None: no member has free units)."""
        heap = self._heap
        t = self.slot_type
        members = self.members
        while heap:
            entry = heap[0]
            w = entry[2]
            if not w.assignable or members.get(w.id) is not w:
                heapq.heappop(heap)
                continue
            free = w.capacity.get(t, 0) - w.used.get(t, 0)
            claimed = -entry[0]
            if claimed == free:
                return entry
            heapq.heappop(heap)
            if claimed > free > 0:
                heapq.heappush(heap, (-free, entry[1], w))
        return None

    def top_free(self) -> int:
        """Free units of the best worker (0 if none)."""
        entry = self._top()
        return -entry[0] if entry is not None else 0

    def best(self, requests: dict[str, int], scan: int = 32) -> WorkerSlots | None:
        """The fitting worker with the most free units, looking past at most ``scan`` that
        have free units of this type but do not fit the rest of the request."""
        heap = self._heap
        skipped: list[tuple[int, int, WorkerSlots]] = []
        found = None
        while len(skipped) < scan:
            entry = self._top()
            if entry is None:
                break
            w = entry[2]
            if requests.get(self.slot_type, 1) <= -entry[0] and (
                len(requests) == 1 or w.fits(requests)
            ):
                found = w
                break
            skipped.append(heapq.heappop(heap))
        for entry in skipped:
            heapq.heappush(heap, entry)
        return found


LabelKey = tuple[DesiredLabel, ...]


class CapacityIndex:
    """For each queue, heaps of its assignable workers by free units, so a decision does not
    scan every worker. Tasks with desired labels get heaps per label weight (best first),
    holding only the workers their required labels allow. A worker's change of free units
    re-pushes it onto each heap it is in."""

    def __init__(self) -> None:
        self._groups: dict[tuple[QueueKey, str, LabelKey], list[tuple[int, FreeHeap]]] = {}
        self._of_worker: dict[str, list[FreeHeap]] = {}

    def groups(
        self,
        key: QueueKey,
        slot_type: str,
        labels: LabelKey,
        workers: dict[str, WorkerSlots],
    ) -> list[tuple[int, FreeHeap]]:
        """(weight, heap) pairs, highest weight first, of the workers that may run a task
        of ``key`` wanting ``labels``."""
        found = self._groups.get((key, slot_type, labels))
        if found is None:
            tenant, action = key
            by_weight: dict[int, FreeHeap] = {}
            for w in workers.values():
                if w.tenant_id != tenant or action not in w.actions:
                    continue
                weight = _weight(labels, w.labels)
                if weight is None:
                    continue
                heap = by_weight.get(weight)
                if heap is None:
                    heap = by_weight[weight] = FreeHeap(slot_type)
                self._join(heap, w)
            found = sorted(by_weight.items(), key=lambda kv: -kv[0])
            self._groups[(key, slot_type, labels)] = found
        return found

    def _join(self, heap: FreeHeap, w: WorkerSlots) -> None:
        heap.members[w.id] = w
        self._of_worker.setdefault(w.id, []).append(heap)
        heap.push(w)

    def invalidate(self, tenant_id: str) -> None:
        """Workers of a tenant came, went or changed labels: rebuild its heaps lazily."""
        stale = [k for k in self._groups if k[0][0] == tenant_id]
        for k in stale:
            for _, heap in self._groups.pop(k):
                for wid in heap.members:
                    heaps = self._of_worker.get(wid)
                    if heaps is not None and heap in heaps:
                        heaps.remove(heap)

    def grew(self, w: WorkerSlots) -> None:
        """Its free units grew, or it became assignable (shrinking needs no call)."""
        if w.assignable:
            for heap in self._of_worker.get(w.id, ()):
                heap.push(w)


def _weight(labels: LabelKey, have: dict[str, str | int]) -> int | None:
    """The rank a worker's labels give (None: a required label is not satisfied)."""
    weight = 0
    for label in labels:
        if label.satisfied_by(have):
            weight += label.weight
        elif label.required:
            return None
    return weight
