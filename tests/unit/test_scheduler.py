"""The scheduler on its own: slots, priority, FIFO, spread, refusals, delays."""

from __future__ import annotations

import pytest

from hewer.domain import (
    Assignment,
    DesiredLabel,
    LabelComparator,
    QueueItem,
    RunningTask,
)
from hewer.engine.core.clock import ManualClock
from hewer.engine.core.scheduler import Scheduler, worker_slots


class Harness:
    """Drives the scheduler as the engine loop does: decide, then "commit" (every decision
    is written except those for tasks in ``refuse``; with ``fail_next`` the whole write
    fails)."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.refuse: set[str] = set()
        self.fail_next = 0
        self.dispatched: list[Assignment] = []
        self.scheduler = Scheduler(self.clock)
        self._seq = 0

    def item(
        self,
        action: str = "a",
        priority: int = 1,
        slots: int = 1,
        delay: float = 0.0,
        labels: tuple[DesiredLabel, ...] = (),
    ) -> QueueItem:
        self._seq += 1
        return QueueItem(
            task_id=f"t{self._seq}",
            tenant_id="tenant",
            action_id=action,
            priority=priority,
            seq=self._seq,
            retry_count=0,
            slot_requests={"default": slots},
            available_at=self.clock.now() + delay,
            desired_labels=labels,
        )

    def worker(
        self,
        wid: str,
        slots: int = 5,
        actions: tuple[str, ...] = ("a",),
        labels: dict[str, str | int] | None = None,
    ) -> None:
        w = worker_slots(wid, "tenant", actions, {"default": slots}, labels)
        w.assignable = True
        self.scheduler.worker_up(w)

    async def settle(self) -> None:
        """Passes until the scheduler has nothing new to decide."""
        for _ in range(100):
            if not self.scheduler.has_work():
                return
            decided = self.scheduler.decide()
            if self.fail_next:
                self.fail_next -= 1
                self.scheduler.unwind()
                continue
            refused = [a for a in decided if a.task_id in self.refuse]
            self.scheduler.settle(refused)
            self.dispatched.extend(a for a in decided if a.task_id not in self.refuse)

    def placed(self) -> dict[str, str]:
        return {d.task_id: d.worker_id for d in self.dispatched}


@pytest.fixture
def h() -> Harness:
    return Harness()


async def test_never_exceeds_slots_and_resumes_when_freed(h: Harness) -> None:
    h.worker("w1", slots=2)
    items = [h.item() for _ in range(5)]
    h.scheduler.enqueue(items)
    await h.settle()
    assert list(h.placed()) == ["t1", "t2"]
    assert (await h.scheduler.slot_usage())["w1"] == {"default": 2}
    h.scheduler.free([RunningTask("t1", "w1", 0, {"default": 1}, False)])
    await h.settle()
    assert list(h.placed()) == ["t1", "t2", "t3"]
    assert h.scheduler.queued_count() == 2


async def test_priority_then_fifo(h: Harness) -> None:
    low1, high1, mid, low2, high2 = (
        h.item(priority=1),
        h.item(priority=3),
        h.item(priority=2),
        h.item(priority=1),
        h.item(priority=3),
    )
    h.scheduler.enqueue([low1, high1, mid, low2, high2])
    await h.settle()
    h.worker("w1", slots=5)
    await h.settle()
    order = [d.task_id for d in h.dispatched]
    assert order == [high1.task_id, high2.task_id, mid.task_id, low1.task_id, low2.task_id]


async def test_work_spreads_across_workers(h: Harness) -> None:
    h.worker("w1", slots=5)
    h.worker("w2", slots=5)
    h.scheduler.enqueue([h.item() for _ in range(6)])
    await h.settle()
    per_worker: dict[str, int] = {}
    for worker in h.placed().values():
        per_worker[worker] = per_worker.get(worker, 0) + 1
    assert per_worker == {"w1": 3, "w2": 3}


async def test_only_workers_with_the_action_and_assignable(h: Harness) -> None:
    h.worker("other", actions=("b",))
    paused = worker_slots("paused", "tenant", ("a",), {"default": 5})
    h.scheduler.worker_up(paused)  # not assignable (no stream yet)
    h.scheduler.enqueue([h.item("a")])
    await h.settle()
    assert h.placed() == {}
    h.scheduler.set_assignable("paused", True)
    await h.settle()
    assert h.placed() == {"t1": "paused"}


async def test_multi_unit_task_needs_all_units_on_one_worker(h: Harness) -> None:
    h.worker("w1", slots=1)
    h.worker("w2", slots=1)
    h.scheduler.enqueue([h.item(slots=2)])
    await h.settle()
    assert h.placed() == {}
    h.worker("big", slots=2)
    await h.settle()
    assert h.placed() == {"t1": "big"}


async def test_refused_assignment_gives_slot_back(h: Harness) -> None:
    h.worker("w1", slots=1)
    first, second = h.item(), h.item()
    h.refuse.add(first.task_id)  # e.g. cancelled between decision and commit
    h.scheduler.enqueue([first, second])
    await h.settle()
    await h.settle()
    assert h.placed() == {second.task_id: "w1"}


async def test_delayed_items_wait_for_their_time(h: Harness) -> None:
    h.worker("w1")
    h.scheduler.enqueue([h.item(delay=10.0)])
    await h.settle()
    assert h.placed() == {}
    h.clock.advance(10.5)
    await h.settle()
    assert h.placed() == {"t1": "w1"}


async def test_removed_and_duplicate_items_are_not_assigned(h: Harness) -> None:
    item = h.item()
    h.scheduler.enqueue([item, item])
    h.scheduler.remove([h.item().task_id])  # unknown ids are harmless
    gone = h.item()
    h.scheduler.enqueue([gone])
    h.scheduler.remove([gone.task_id])
    h.worker("w1")
    await h.settle()
    assert h.placed() == {item.task_id: "w1"}
    assert (await h.scheduler.slot_usage())["w1"] == {"default": 1}


async def test_worker_reregistration_keeps_slot_usage(h: Harness) -> None:
    h.worker("w1", slots=1)
    h.scheduler.enqueue([h.item(), h.item()])
    await h.settle()
    h.worker("w1", slots=1)  # the stream reconnects: same worker, same tasks held
    await h.settle()
    assert list(h.placed()) == ["t1"]


async def test_a_pass_that_fails_to_commit_keeps_its_tasks_queued(h: Harness) -> None:
    h.worker("w1", slots=2)
    h.fail_next = 1
    h.scheduler.enqueue([h.item(), h.item()])
    await h.settle()
    await h.settle()
    # The failed batch went back in line and a later pass placed it; nothing leaked.
    assert h.fail_next == 0
    assert set(h.placed()) == {"t1", "t2"}
    assert h.scheduler.queued_count() == 0
    assert (await h.scheduler.slot_usage())["w1"] == {"default": 2}


async def test_required_labels_filter_and_weights_rank(h: Harness) -> None:
    h.worker("cpu", slots=5, labels={"gpu": "none", "memory": 64})
    h.worker("gpu-small", slots=5, labels={"gpu": "a100", "memory": 128})
    h.worker("gpu-big", slots=5, labels={"gpu": "a100", "memory": 512})
    gpu = DesiredLabel("gpu", "a100", required=True)
    big = DesiredLabel("memory", 256, LabelComparator.GREATER_THAN_OR_EQUAL, weight=50)
    small = DesiredLabel("memory", 256, LabelComparator.LESS_THAN, weight=10)
    first = h.item(labels=(gpu, big))
    second = h.item(labels=(gpu, small))
    third = h.item(labels=(DesiredLabel("gpu", "a100", LabelComparator.NOT_EQUAL, required=True),))
    h.scheduler.enqueue([first, second, third])
    await h.settle()
    assert h.placed() == {
        first.task_id: "gpu-big",
        second.task_id: "gpu-small",
        third.task_id: "cpu",
    }


async def test_no_eligible_worker_waits_until_labels_change(h: Harness) -> None:
    h.worker("w1", labels={"model": "v1"})
    wanted = h.item(labels=(DesiredLabel("model", "v2", required=True),))
    soft = h.item(labels=(DesiredLabel("model", "v2"),))  # preferred, not required
    h.scheduler.enqueue([wanted, soft])
    await h.settle()
    assert h.placed() == {soft.task_id: "w1"}
    h.scheduler.set_labels("w1", {"model": "v2"})
    await h.settle()
    assert h.placed() == {soft.task_id: "w1", wanted.task_id: "w1"}


async def test_numeric_comparators_need_integers_on_both_sides(h: Harness) -> None:
    h.worker("text", labels={"memory": "512"})
    wanted = h.item(
        labels=(DesiredLabel("memory", 256, LabelComparator.GREATER_THAN, required=True),)
    )
    h.scheduler.enqueue([wanted])
    await h.settle()
    assert h.placed() == {}
    h.worker("number", labels={"memory": 512})
    await h.settle()
    assert h.placed() == {wanted.task_id: "number"}


async def test_likely_names_what_decide_picks_first_without_taking_it(h: Harness) -> None:
    items = [h.item(action="a", priority=p) for p in (1, 3, 2, 1, 3)]
    items += [h.item(action="b", priority=2) for _ in range(40)]
    h.scheduler.enqueue(items)
    await h.settle()  # no worker yet: all stay queued
    hint = h.scheduler.likely(4)
    assert hint == ["t2", "t5", "t3", "t6"]  # priority first, then queue order
    assert h.scheduler.likely(4) == hint, "a hint takes nothing"
    h.worker("w1", slots=4, actions=("a", "b"))
    await h.settle()
    assert list(h.placed()) == hint
    assert h.scheduler.likely(0) == []


async def test_likely_gives_no_hint_over_too_many_queues(h: Harness) -> None:
    from hewer.engine.core.scheduler.scheduler import LIKELY_MAX_QUEUES

    h.scheduler.enqueue([h.item(action=f"q{i}") for i in range(LIKELY_MAX_QUEUES + 1)])
    await h.settle()
    assert h.scheduler.likely(8) == []
