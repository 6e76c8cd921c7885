"""The scheduler keeps a bounded window of each queue in memory and refills it from the
store: memory stays bounded, and every queued task is still assigned once, in order."""

from __future__ import annotations

import pytest

from hewer.domain import Assignment, QueueItem, QueuePage, RunningTask
from hewer.engine.core.clock import ManualClock
from hewer.engine.core.scheduler import Scheduler, worker_slots
from hewer.engine.core.scheduler import scheduler as scheduler_module

TENANT, ACTION = "tenant", "a"


@pytest.fixture(autouse=True)
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "WINDOW", 20)
    monkeypatch.setattr(scheduler_module, "REFILL_BELOW", 5)
    monkeypatch.setattr(scheduler_module, "TRIM_ABOVE", 40)


class Backlog:
    """The store's queue: every queued item, in queue order; assignment removes it."""

    def __init__(self) -> None:
        self.items: dict[str, QueueItem] = {}

    def add(self, item: QueueItem) -> None:
        self.items[item.task_id] = item

    def page(self, page: QueuePage) -> list[QueueItem]:
        ordered = sorted(self.items.values(), key=lambda i: (-i.priority, i.seq))
        if page.after is not None:
            prio, seq = page.after
            ordered = [i for i in ordered if (-i.priority, i.seq) > (-prio, seq)]
        return ordered[: page.limit]


class Rig:
    def __init__(self, slots: int = 3) -> None:
        self.clock = ManualClock()
        self.scheduler = Scheduler(self.clock)
        self.backlog = Backlog()
        self.assigned: list[Assignment] = []
        self.seq = 0
        w = worker_slots("w1", TENANT, [ACTION], {"default": slots})
        w.assignable = True
        self.scheduler.worker_up(w)

    def item(self, priority: int = 1) -> QueueItem:
        self.seq += 1
        return QueueItem(f"t{self.seq}", TENANT, ACTION, priority, self.seq, 0, {"default": 1})

    def trigger(self, items: list[QueueItem]) -> None:
        """Committed, then handed to the scheduler (as the engine loop does)."""
        for item in items:
            self.backlog.add(item)
        self.scheduler.enqueue(items)

    def turn(self) -> list[Assignment]:
        for page in self.scheduler.refills():
            self.scheduler.refilled(page, self.backlog.page(page))
        decided = self.scheduler.decide()
        self.scheduler.settle()
        for a in decided:
            del self.backlog.items[a.task_id]
        self.assigned.extend(decided)
        return decided

    def finish(self, decided: list[Assignment]) -> None:
        self.scheduler.free(
            RunningTask(a.task_id, a.worker_id, 0, a.slot_requests, False) for a in decided
        )

    def drain(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            decided = self.turn()
            if not decided and not self.backlog.items:
                return
            self.finish(decided)
        raise AssertionError("did not drain")


def test_memory_stays_bounded_and_every_task_runs_once_in_order() -> None:
    rig = Rig()
    items = [rig.item() for _ in range(500)]
    rig.trigger(items[:250])
    rig.trigger(items[250:])
    assert rig.scheduler.queued_count() <= scheduler_module.TRIM_ABOVE
    peak = 0
    for _ in range(1000):
        decided = rig.turn()
        peak = max(peak, rig.scheduler.queued_count())
        if not rig.backlog.items and not decided:
            break
        rig.finish(decided)
    assert [a.task_id for a in rig.assigned] == [i.task_id for i in items]
    assert peak <= scheduler_module.TRIM_ABOVE


def test_a_higher_priority_arrival_goes_ahead_of_the_backlog() -> None:
    rig = Rig(slots=1)
    backlog = [rig.item() for _ in range(200)]
    rig.trigger(backlog)
    urgent = rig.item(priority=3)
    rig.trigger([urgent])
    first = rig.turn()
    assert [a.task_id for a in first] == [urgent.task_id]
    rig.finish(first)
    rig.drain()
    assert sorted(a.task_id for a in rig.assigned) == sorted(
        [urgent.task_id, *(i.task_id for i in backlog)]
    )
    assert len(rig.assigned) == len(set(a.task_id for a in rig.assigned))


def test_after_a_restart_the_queue_is_read_from_its_head() -> None:
    rig = Rig()
    items = [rig.item() for _ in range(60)]
    for item in items:
        rig.backlog.add(item)  # queued before the restart; nothing in memory
    rig.scheduler.mark_backlog([(TENANT, ACTION)])
    rig.drain()
    assert [a.task_id for a in rig.assigned] == [i.task_id for i in items]


def test_items_beyond_the_window_wait_in_the_store_not_in_memory() -> None:
    rig = Rig(slots=1)
    rig.trigger([rig.item() for _ in range(100)])
    held = rig.scheduler.queued_count()
    later = [rig.item() for _ in range(100)]
    rig.trigger(later)  # behind the window: not kept
    assert rig.scheduler.queued_count() == held
    rig.drain()
    assert [a.task_id for a in rig.assigned][-100:] == [i.task_id for i in later]
