"""The scheduler on its own: assignment decisions per second and time per scheduling pass.

    python bench/scheduler_bench.py [--tasks 10000] [--workers 100] [--slots 100]
                                    [--keys 1000] [--max-runs 5] [--repeat 3]

Drives ``hewer.engine.core.scheduler.Scheduler`` directly, as the engine loop does (decide,
then settle every decision as committed; no SQLite), so the numbers are the scheduler's own
decision cost: queue order, label matching, slot pools, concurrency gates.

Each variant queues ``--tasks`` tasks at once for ``--workers`` workers of ``--slots``
default slots, then runs rounds: let the scheduler assign all it can, then report every
assigned task finished (its slots freed, its concurrency key released), until every task has
been assigned. Variants:

- ``plain``: no labels, no keys;
- ``labels``: every worker has labels (zone, memory, gpu); every task wants a zone (required),
  memory >= some size (required) and prefers a gpu (weight), so each decision ranks workers;
- ``keys``: every task claims one of ``--keys`` concurrency keys (GROUP_ROUND_ROBIN,
  ``--max-runs`` per key), so most of them wait at their key and are let in by turns;
- ``labels+keys``: both.

Printed: wall time to assign everything, decisions per second, passes that decided something
and their duration (p50/p95/max, each pass deciding up to ``MAX_BATCH`` tasks), and the time
spent deciding (the rest is enqueueing, freeing slots and releasing keys). No assertions.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Any

from hewer.domain import (
    Assignment,
    ConcurrencyStrategy,
    DesiredLabel,
    GateClaim,
    LabelComparator,
    QueueItem,
    RunningTask,
)
from hewer.engine.core.clock import ManualClock
from hewer.engine.core.scheduler import MAX_BATCH, Scheduler, worker_slots

TENANT = "bench-tenant"
ACTIONS = tuple(f"bench:action-{i}" for i in range(10))
ZONES = ("z0", "z1", "z2", "z3")


@dataclass
class Result:
    name: str
    tasks: int
    wall: float
    rounds: int
    pass_times: list[float]
    decided_per_pass: list[int]
    placed: int

    def report(self) -> str:
        busy = [t for t, n in zip(self.pass_times, self.decided_per_pass, strict=True) if n]
        inside = sum(self.pass_times)
        p = percentiles(busy)
        return (
            f"{self.name:<12} {self.placed:>6} assigned in {self.wall * 1000:8.1f} ms "
            f"({self.placed / self.wall:>9,.0f} decisions/s; {self.rounds} rounds) | "
            f"passes {len(busy):>3}: p50 {p[0] * 1000:6.2f} ms  p95 {p[1] * 1000:6.2f} ms  "
            f"max {p[2] * 1000:6.2f} ms  (avg {statistics.mean(self.decided_per_pass_busy):.0f}"
            f" tasks/pass) | deciding {inside / self.wall:5.1%}"
        )

    @property
    def decided_per_pass_busy(self) -> list[int]:
        return [n for n in self.decided_per_pass if n] or [0]


def percentiles(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return (0.0, 0.0, 0.0)
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return (at(0.50), at(0.95), ordered[-1])


def make_workers(count: int, slots: int, labels: bool) -> list[Any]:
    workers = []
    for i in range(count):
        worker_labels: dict[str, str | int] = (
            {
                "zone": ZONES[i % len(ZONES)],
                "memory": 16 * (1 + i % 8),
                "gpu": "yes" if i % 5 == 0 else "no",
            }
            if labels
            else {}
        )
        w = worker_slots(f"w{i:03d}", TENANT, ACTIONS, {"default": slots}, worker_labels)
        w.assignable = True
        workers.append(w)
    return workers


def make_tasks(count: int, labels: bool, keys: int, max_runs: int) -> list[QueueItem]:
    items = []
    for i in range(count):
        desired: tuple[DesiredLabel, ...] = ()
        if labels:
            desired = (
                DesiredLabel("zone", ZONES[i % len(ZONES)], required=True),
                DesiredLabel(
                    "memory", 16 * (1 + i % 4), LabelComparator.GREATER_THAN_OR_EQUAL, True
                ),
                DesiredLabel("gpu", "yes", weight=10),
            )
        gates: tuple[GateClaim, ...] = ()
        if keys:
            gates = (
                GateClaim(
                    "bench/gate",
                    f"key-{i % keys}",
                    max_runs,
                    ConcurrencyStrategy.GROUP_ROUND_ROBIN,
                    f"t{i}",
                    False,
                    TENANT,
                ),
            )
        items.append(
            QueueItem(
                task_id=f"t{i}",
                tenant_id=TENANT,
                action_id=ACTIONS[i % len(ACTIONS)],
                priority=1 + i % 3,
                seq=i + 1,
                retry_count=0,
                slot_requests={"default": 1},
                desired_labels=desired,
                gates=gates,
            )
        )
    return items


def run_variant(name: str, args: argparse.Namespace, labels: bool, keys: bool) -> Result:
    scheduler = Scheduler(ManualClock())
    pass_times: list[float] = []
    decided: list[int] = []
    workers = make_workers(args.workers, args.slots, labels)
    items = make_tasks(args.tasks, labels, args.keys if keys else 0, args.max_runs)
    slots_of = {i.task_id: i.slot_requests for i in items}
    for w in workers:
        scheduler.worker_up(w)
    gc.collect()
    gc.disable()
    wall = 0.0
    rounds = 0
    placed: list[Assignment] = []
    try:
        while len(placed) < args.tasks:
            start = time.perf_counter()
            if rounds == 0:
                scheduler.enqueue(items)
            before = len(placed)
            while scheduler.has_work():
                t0 = time.perf_counter()
                batch = scheduler.decide(MAX_BATCH)
                pass_times.append(time.perf_counter() - t0)
                decided.append(len(batch))
                scheduler.settle()
                placed.extend(batch)
            wall += time.perf_counter() - start
            rounds += 1
            finished = placed[before:]
            if not finished:
                raise RuntimeError(f"{name}: stuck with {args.tasks - len(placed)} unassigned")
            # Every assigned task finishes: slots back, keys released.
            start = time.perf_counter()
            scheduler.free(
                RunningTask(a.task_id, a.worker_id, 0, slots_of[a.task_id], False)
                for a in finished
            )
            scheduler.release(a.task_id for a in finished)
            wall += time.perf_counter() - start
    finally:
        gc.enable()
    return Result(name, args.tasks, wall, rounds, pass_times, decided, len(placed))


def main(args: argparse.Namespace) -> None:
    print(
        f"scheduler bench: {args.tasks} tasks, {args.workers} workers x {args.slots} slots, "
        f"{args.keys} keys (max_runs {args.max_runs}), MAX_BATCH {MAX_BATCH}, "
        f"best of {args.repeat}"
    )
    variants = [
        ("plain", False, False),
        ("labels", True, False),
        ("keys", False, True),
        ("labels+keys", True, True),
    ]
    for name, labels, keys in variants:
        runs = [run_variant(name, args, labels, keys) for _ in range(args.repeat)]
        print(min(runs, key=lambda r: r.wall).report())


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--slots", type=int, default=100)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--max-runs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    return parser.parse_args()


if __name__ == "__main__":
    main(parse())
