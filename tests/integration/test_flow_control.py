"""Task assignment and flow control through our SDK, against a real engine.

Every test records where and when each task body ran (engine worker id, start, end) and
checks the rule from those records, so a broken rule fails the test: affinity (required
labels, weights, comparators, waiting for a label, trigger-level overrides), sticky runs,
slot types, manual slot release, concurrency limits and their strategies, priority, and rate
limits.

Workers run in-process on threads (``start_worker``), so task bodies share the test's clock
and can hand events to the test without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import operator
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from hewer import Context, Hewer, HewerError, TaskRunError, Worker
from hewer.sdk import (
    ConcurrencyExpression,
    ConcurrencyLimitStrategy,
    DesiredWorkerLabel,
    RateLimit,
    RateLimitDuration,
    StickyStrategy,
    WorkerLabelComparator,
)
from hewer.testing import EngineThread
from tests.conftest import HEARTBEAT
from tests.helpers import wait_for
from tests.integration import flow_app
from tests.integration.conftest import REPO

RR = ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN
Cmp = WorkerLabelComparator
HOLD_LIMIT = 15.0  # a held body gives up after this long, so a broken test cannot hang
# Tasks a broken rule could leave with no eligible worker end (cancelled) after this,
# instead of hanging the test for the default five minutes.
UNPLACEABLE = timedelta(seconds=5)


# --- recording executions --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Execution:
    task: str
    key: str
    worker: str
    run_id: str
    start: float
    end: float
    units: int = 1


class ExecutionLog:
    """What ran where and when, appended to by task bodies on worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows: list[Execution] = []
        self.starts: list[tuple[str, str, float]] = []  # (task, key, start) in start order
        self._started: dict[str, threading.Event] = defaultdict(threading.Event)

    @contextlib.contextmanager
    def record(self, ctx: Context, key: str = "", units: int = 1) -> Iterator[None]:
        start = time.monotonic()
        with self._lock:
            self.starts.append((ctx.task_name, key, start))
            started = self._started[key]
        started.set()
        try:
            yield
        finally:
            row = Execution(
                ctx.task_name,
                key,
                ctx.worker_id,
                ctx.workflow_run_id,
                start,
                time.monotonic(),
                units,
            )
            with self._lock:
                self.rows.append(row)

    def wait_started(self, key: str, timeout: float = 20.0) -> None:
        with self._lock:
            started = self._started[key]
        assert started.wait(timeout), f"no task with key {key!r} started within {timeout}s"

    def of(self, task: str | None = None, key: str | None = None) -> list[Execution]:
        with self._lock:
            return [
                r
                for r in self.rows
                if (task is None or r.task == task) and (key is None or r.key == key)
            ]

    def workers(self, task: str | None = None, key: str | None = None) -> set[str]:
        return {r.worker for r in self.of(task, key)}

    def start_of(self, key: str) -> float:
        with self._lock:
            return min(start for _, k, start in self.starts if k == key)

    def start_order(self) -> list[str]:
        with self._lock:
            return [key for _, key, _ in sorted(self.starts, key=lambda s: s[2])]


def peak(rows: Iterable[Execution], units: Callable[[Execution], int] = lambda r: 1) -> int:
    """Most units running at any one moment (an end at t frees before a start at t)."""
    events: list[tuple[float, int]] = []
    for r in rows:
        events.append((r.start, units(r)))
        events.append((r.end, -units(r)))
    events.sort(key=lambda e: (e[0], e[1]))
    current = top = 0
    for _, delta in events:
        current += delta
        top = max(top, current)
    return top


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def hold(ctx: Context, release: threading.Event) -> bool:
    """Keep the body running until ``release`` is set or the task is cancelled; True if it
    saw the cancellation."""
    deadline = time.monotonic() + HOLD_LIMIT
    while not ctx.is_cancelled and not release.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    return ctx.is_cancelled


# --- engine probes ---------------------------------------------------------------------


def settle(engine: EngineThread) -> None:
    """Two round trips through the scheduler's inbox: everything posted before this call has
    been applied and the pass it woke has committed."""
    scheduler = engine.engine.core.scheduler
    engine.call(scheduler.slot_usage())
    engine.call(scheduler.slot_usage())


def slot_usage(engine: EngineThread) -> dict[str, dict[str, int]]:
    settle(engine)
    return engine.call(engine.engine.core.scheduler.slot_usage())


def gate_holders(engine: EngineThread) -> dict[Any, int]:
    scheduler = engine.engine.core.scheduler

    async def read() -> dict[Any, int]:
        await scheduler.slot_usage()  # apply what is in the inbox first
        return scheduler.gate_holders()

    return engine.call(read())


def run_status(engine: EngineThread, run_id: str) -> str:
    core = engine.engine.core
    details = engine.call(core.run_details(engine.engine.default_tenant_id, run_id))
    return str(details.status)


def run_error(ref: Any) -> TaskRunError:
    with pytest.raises(TaskRunError) as info:
        ref.result()
    return info.value


# --- workers with labels and slot pools --------------------------------------------------

StartWorker = Callable[..., Worker]


@pytest.fixture
def start_worker(client: Hewer) -> Iterator[StartWorker]:
    """Start ``client.worker(...)`` on a thread; fail fast if it cannot register. Every
    worker is stopped gracefully at the end."""
    running: list[tuple[Worker, threading.Thread]] = []

    def start(
        name: str,
        workflows: Sequence[Any],
        *,
        slots: int | None = None,
        labels: Mapping[str, str | int] | None = None,
        slot_config: Mapping[str, int] | None = None,
        registered_slot_config: Mapping[str, int] | None = None,
    ) -> Worker:
        worker = client.worker(
            name, slots=slots, workflows=workflows, labels=labels, slot_config=slot_config
        )
        if registered_slot_config is not None:
            # Registers pools the SDK would refuse for these tasks (to reach the engine's
            # own check); the runner sizes its threads from this too.
            worker.slot_config = dict(registered_slot_config)
        errors: list[BaseException] = []

        def target() -> None:
            try:
                worker.start()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=target, name=f"worker-{name}", daemon=True)
        thread.start()
        running.append((worker, thread))
        wait_for(
            lambda: worker.ready.is_set() or not thread.is_alive(),
            timeout=20,
            what=f"worker {name} ready",
        )
        if not worker.ready.is_set():
            raise AssertionError(f"worker {name} did not start: {errors!r}")
        assert worker.id is not None
        return worker

    yield start
    for worker, _ in running:
        worker.stop()
    for worker, thread in running:
        thread.join(timeout=20)
        assert not thread.is_alive(), f"worker {worker.name} did not stop"


# =========================================================================================
# 1. Worker affinity
# =========================================================================================


def test_required_label_routes_only_to_the_matching_worker(
    client: Hewer, start_worker: StartWorker
) -> None:
    log = ExecutionLog()

    @client.task(
        name="needs-fancy",
        desired_worker_labels={"model": DesiredWorkerLabel("fancy", required=True)},
        schedule_timeout=UNPLACEABLE,
    )
    def needs_fancy(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, "needs-fancy"):
            time.sleep(0.03)

    @client.task(name="anywhere")
    def anywhere(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, "anywhere"):
            time.sleep(0.03)

    tasks = [needs_fancy, anywhere]
    fancy = start_worker("fancy", tasks, slots=2, labels={"model": "fancy"})
    plain = start_worker("plain", tasks, slots=10, labels={"model": "plain"})
    bare = start_worker("bare", tasks, slots=10)

    needs_fancy.run_many([{}] * 8)
    anywhere.run_many([{}] * 8)

    # The fancy worker has the least room; only the required label sends work there.
    assert log.workers("needs-fancy") == {fancy.id}
    assert len(log.of("needs-fancy")) == 8
    assert peak(log.of("needs-fancy")) <= 2
    # Control: without the label the roomier workers take the work.
    assert log.workers("anywhere") & {plain.id, bare.id}


def test_heavier_satisfied_label_wins(client: Hewer, start_worker: StartWorker) -> None:
    log = ExecutionLog()

    @client.task(
        name="weighted",
        desired_worker_labels={
            "region": DesiredWorkerLabel("eu", weight=10),
            "tier": DesiredWorkerLabel("gold", weight=50),
        },
    )
    def weighted(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, input["phase"]):
            time.sleep(0.02)

    eu = start_worker("eu", [weighted], slots=10, labels={"region": "eu", "tier": "silver"})
    gold = start_worker("gold", [weighted], slots=3, labels={"region": "us", "tier": "gold"})

    # gold satisfies the heavier label (50 > 10), though eu has more free slots.
    weighted.run_many([{"phase": "one"}] * 3)
    assert log.workers(key="one") == {gold.id}

    # Now eu satisfies both (10 + 50 > 50): the weights add up.
    eu.upsert_labels({"tier": "gold"})
    for _ in range(3):
        weighted.run({"phase": "two"})
    assert log.workers(key="two") == {eu.id}


def test_comparators_compare_the_worker_value_with_the_desired_one(
    client: Hewer, start_worker: StartWorker
) -> None:
    log = ExecutionLog()
    cases: dict[str, tuple[Cmp, int, str]] = {
        "ge32": (Cmp.GREATER_THAN_OR_EQUAL, 32, "big"),
        "ge64": (Cmp.GREATER_THAN_OR_EQUAL, 64, "big"),  # equal passes
        "gt16": (Cmp.GREATER_THAN, 16, "big"),  # equal does not
        "lt64": (Cmp.LESS_THAN, 64, "small"),
        "le16": (Cmp.LESS_THAN_OR_EQUAL, 16, "small"),
        "ne16": (Cmp.NOT_EQUAL, 16, "big"),
        "eq16": (Cmp.EQUAL, 16, "small"),
    }
    tasks = []
    for name, (comparator, value, _) in cases.items():

        def body(input: dict[str, Any], ctx: Context, name: str = name) -> None:
            with log.record(ctx, name):
                time.sleep(0.02)

        label = DesiredWorkerLabel(value, required=True, comparator=comparator)
        declare = client.task(
            name=name, desired_worker_labels={"memory": label}, schedule_timeout=UNPLACEABLE
        )
        tasks.append(declare(body))

    # The worker with more room is the one most comparisons must exclude, and vice versa.
    small = start_worker("small", tasks, slots=6, labels={"memory": 16})
    big = start_worker("big", tasks, slots=6, labels={"memory": 64})
    ids = {"small": small.id, "big": big.id}

    for task in tasks:
        task.run_many([{}] * 3)
    for name, (_, _, expected) in cases.items():
        assert log.workers(key=name) == {ids[expected]}, name


def test_no_eligible_worker_waits_until_labels_make_one_match(
    client: Hewer, engine: EngineThread, start_worker: StartWorker
) -> None:
    log = ExecutionLog()

    @client.task(
        name="needs-special",
        desired_worker_labels={"model": DesiredWorkerLabel("special", required=True)},
    )
    def needs_special(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, "needs-special"):
            pass

    @client.task(
        name="needs-loaded",
        desired_worker_labels={"loaded": DesiredWorkerLabel("yes", required=True)},
    )
    def needs_loaded(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, "needs-loaded"):
            pass

    @client.task(
        name="loader", desired_worker_labels={"name": DesiredWorkerLabel("one", required=True)}
    )
    def loader(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, "loader"):
            ctx.upsert_worker_labels({"loaded": "yes"})

    @client.task(
        name="never-placed",
        schedule_timeout=timedelta(seconds=1),
        desired_worker_labels={"model": DesiredWorkerLabel("nowhere", required=True)},
    )
    def never_placed(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, "never-placed"):
            pass

    tasks = [needs_special, needs_loaded, loader, never_placed]
    one = start_worker("one", tasks, slots=4, labels={"name": "one", "model": "plain"})
    two = start_worker("two", tasks, slots=4, labels={"name": "two", "model": "plain"})

    # worker.upsert_labels makes a worker match.
    special = needs_special.run_no_wait({})
    settle(engine)
    assert run_status(engine, special.run_id) == "queued"
    assert not log.of(key="needs-special")
    two.upsert_labels({"model": "special"})
    special.result()
    assert log.workers(key="needs-special") == {two.id}

    # ctx.upsert_worker_labels, from a task running on worker one, does too.
    loaded = needs_loaded.run_no_wait({})
    settle(engine)
    assert run_status(engine, loaded.run_id) == "queued"
    loader.run({})
    assert log.workers(key="loader") == {one.id}
    loaded.result()
    assert log.workers(key="needs-loaded") == {one.id}
    assert one.labels["loaded"] == "yes"

    # Nobody ever matches: it waits until its schedule timeout, then is cancelled unrun.
    error = run_error(never_placed.run_no_wait({}))
    assert error.status.upper() == "CANCELLED"
    assert not log.of(key="never-placed")


def test_trigger_labels_override_the_task_labels(client: Hewer, start_worker: StartWorker) -> None:
    log = ExecutionLog()

    @client.task(
        name="pick",
        desired_worker_labels={"model": DesiredWorkerLabel("a", required=True)},
        schedule_timeout=UNPLACEABLE,
    )
    def pick(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, input["tag"]):
            pass

    a = start_worker("a", [pick], slots=4, labels={"model": "a"})
    b = start_worker("b", [pick], slots=4, labels={"model": "b"})

    pick.run_many([{"tag": "task-labels"}] * 3)
    override = {"model": DesiredWorkerLabel("b", required=True)}
    pick.run_many([{"tag": "trigger-labels"}] * 3, desired_worker_labels=override)
    pick.run({"tag": "single"}, desired_worker_labels=override)

    assert log.workers(key="task-labels") == {a.id}
    assert log.workers(key="trigger-labels") == {b.id}
    assert log.workers(key="single") == {b.id}


# =========================================================================================
# 2. Sticky assignment
# =========================================================================================


def _dag(client: Hewer, name: str, sticky: StickyStrategy | None, log: ExecutionLog) -> Any:
    """first -> (second, third) -> fourth; first prefers the "pinned" worker (soft label)."""
    wf = client.workflow(name, sticky=sticky)

    @wf.task(desired_worker_labels={"role": DesiredWorkerLabel("pinned", weight=10)})
    def first(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, name):
            time.sleep(0.02)

    @wf.task(parents=[first])
    def second(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, name):
            time.sleep(0.1)

    @wf.task(parents=[first])
    def third(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, name):
            time.sleep(0.1)

    @wf.task(parents=[second, third])
    def fourth(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, name):
            pass

    return wf


def _workers_per_run(log: ExecutionLog, key: str) -> dict[str, set[str]]:
    runs: dict[str, set[str]] = defaultdict(set)
    for row in log.of(key=key):
        runs[row.run_id].add(row.worker)
    return dict(runs)


def test_sticky_workflows_keep_a_dag_on_one_worker(
    client: Hewer, start_worker: StartWorker
) -> None:
    log = ExecutionLog()
    soft = _dag(client, "dag-soft", StickyStrategy.SOFT, log)
    hard = _dag(client, "dag-hard", StickyStrategy.HARD, log)
    loose = _dag(client, "dag-loose", None, log)
    flows = [soft, hard, loose]
    pinned = start_worker("pinned", flows, slots=2, labels={"role": "pinned"})
    roomy = start_worker("roomy", flows, slots=8, labels={"role": "roomy"})

    for wf in flows:
        for _ in range(2):
            wf.run({})

    for name in ("dag-soft", "dag-hard"):
        per_run = _workers_per_run(log, name)
        assert len(per_run) == 2 and len(log.of(key=name)) == 8
        # Spreading would send second/third/fourth to the roomier worker.
        assert all(ws == {pinned.id} for ws in per_run.values()), (name, per_run)
    # Control: without stickiness the later tasks do go to the other worker.
    assert roomy.id in log.workers(key="dag-loose")
    assert log.workers(task="first", key="dag-loose") == {pinned.id}


def test_hard_sticky_waits_for_its_worker_soft_falls_back(
    client: Hewer, start_worker: StartWorker
) -> None:
    log = ExecutionLog()
    soft = _dag(client, "full-soft", StickyStrategy.SOFT, log)
    hard = _dag(client, "full-hard", StickyStrategy.HARD, log)
    pinned = start_worker("pinned", [soft, hard], slots=1, labels={"role": "pinned"})
    roomy = start_worker("roomy", [soft, hard], slots=8, labels={"role": "roomy"})

    hard.run({})
    rows = {r.task: r for r in log.of(key="full-hard")}
    assert {r.worker for r in rows.values()} == {pinned.id}
    # One slot on the pinned worker: second and third ran one after the other there.
    second, third = rows["second"], rows["third"]
    assert not overlaps((second.start, second.end), (third.start, third.end))

    soft.run({})
    rows = {r.task: r for r in log.of(key="full-soft")}
    assert rows["first"].worker == pinned.id
    # The pinned worker had room for one of the two: the other went elsewhere at once.
    assert {rows["second"].worker, rows["third"].worker} == {pinned.id, roomy.id}


def test_sticky_child_runs_on_the_parent_worker(client: Hewer, start_worker: StartWorker) -> None:
    log = ExecutionLog()
    child = client.workflow("sticky-child", sticky=StickyStrategy.SOFT)

    @child.task()
    def child_task(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, input["tag"]):
            pass

    plain_child = client.workflow("plain-child")

    @plain_child.task()
    def plain_task(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, "plain-child"):
            pass

    @client.task(
        name="parent", desired_worker_labels={"role": DesiredWorkerLabel("pinned", required=True)}
    )
    def parent(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        with log.record(ctx, "parent"):
            child.run({"tag": "sticky"}, sticky=True)
            child.run({"tag": "free"})
            try:
                plain_child.run({}, sticky=True)
            except HewerError as exc:
                return {"error": type(exc).__name__, "message": str(exc)}
        return {"error": None}

    flows = [parent, child, plain_child]
    pinned = start_worker("pinned", flows, slots=2, labels={"role": "pinned"})
    roomy = start_worker("roomy", flows, slots=8, labels={"role": "roomy"})

    results = [parent.run({}) for _ in range(2)]

    assert log.workers(key="parent") == {pinned.id}
    assert log.workers(key="sticky") == {pinned.id}
    assert len(log.of(key="sticky")) == 2
    # Control: the same child without sticky=True goes to the roomier worker.
    assert log.workers(key="free") == {roomy.id}
    # A child workflow with no sticky strategy cannot be sticky: a clear error, no run.
    for result in results:
        assert result["error"] == "InvalidInput", result
        assert "plain-child" in result["message"] and "sticky" in result["message"]
    assert not log.of(key="plain-child")


# =========================================================================================
# 3. Slot types
# =========================================================================================


def test_slot_type_requests_need_a_pool_of_that_type(
    client: Hewer, start_worker: StartWorker
) -> None:
    log = ExecutionLog()

    @client.task(name="gpu-one", slot_requests={"gpu": 1})
    def gpu_one(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, "gpu-one", units=1):
            time.sleep(0.15)

    @client.task(name="gpu-two", slot_requests={"gpu": 2})
    def gpu_two(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, "gpu-two", units=2):
            time.sleep(0.15)

    tasks = [gpu_one, gpu_two]
    big = start_worker("big-gpu", tasks, slot_config={"default": 2, "gpu": 2})
    small = start_worker("small-gpu", tasks, slot_config={"default": 8, "gpu": 1})
    # Serves both tasks but has no gpu pool (the SDK would refuse; the engine must too).
    cpu = start_worker(
        "cpu", tasks, slot_config={"default": 8, "gpu": 2}, registered_slot_config={"default": 8}
    )

    refs = gpu_one.run_many_no_wait([{}] * 8) + gpu_two.run_many_no_wait([{}] * 3)
    for ref in refs:
        ref.result()

    assert cpu.id not in log.workers()
    # All units of a task on one worker: a 2-unit task never lands on the 1-unit pool.
    assert log.workers(key="gpu-two") == {big.id}
    on_big = [r for r in log.of() if r.worker == big.id]
    on_small = [r for r in log.of() if r.worker == small.id]
    assert peak(on_big, lambda r: r.units) <= 2
    assert peak(on_small, lambda r: r.units) <= 1
    assert peak(on_big, lambda r: r.units) == 2


def test_a_two_slot_task_shares_a_three_slot_worker_with_one_light_task(
    client: Hewer, start_worker: StartWorker
) -> None:
    log = ExecutionLog()

    @client.task(name="heavy", slot_requests={"default": 2})
    def heavy(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, "heavy", units=2):
            time.sleep(0.15)

    @client.task(name="light")
    def light(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, "light", units=1):
            time.sleep(0.15)

    start_worker("three", [heavy, light], slots=3)
    refs = heavy.run_many_no_wait([{}] * 4) + light.run_many_no_wait([{}] * 4)
    for ref in refs:
        ref.result()

    rows = log.of()
    assert len(rows) == 8
    assert peak(log.of(key="heavy")) == 1, "two 2-slot tasks never fit in 3 slots"
    assert peak(rows, lambda r: r.units) == 3, "a heavy task ran alongside a light one"
    heavies = [(r.start, r.end) for r in log.of(key="heavy")]
    lights = [(r.start, r.end) for r in log.of(key="light")]
    assert any(overlaps(h, light) for h in heavies for light in lights)
    # At no moment more than one light task beside a heavy one (2 + 1 = 3 slots).
    for r in log.of(key="heavy"):
        during = [x for x in log.of(key="light") if overlaps((r.start, r.end), (x.start, x.end))]
        assert peak(during) <= 1


# =========================================================================================
# 4. Manual slot release
# =========================================================================================


RELEASE_WAIT = 3.0  # the blocker starts within milliseconds when the slot really is free


@pytest.mark.parametrize("body", ["async", "sync"])
def test_released_slot_lets_another_task_start_and_is_freed_only_once(
    body: str,
    client: Hewer,
    engine: EngineThread,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = ExecutionLog()
    blocker_started = threading.Event()
    release_blocker = threading.Event()

    if body == "async":

        @client.task(name="releaser")
        async def releaser(input: dict[str, Any], ctx: Context) -> dict[str, bool]:
            with log.record(ctx, "releaser"):
                await ctx.aio_release_slot()
                # Still running: only the freed slot lets the blocker start on this 1-slot
                # worker.
                deadline = time.monotonic() + RELEASE_WAIT
                while not blocker_started.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            return {"saw_blocker": blocker_started.is_set()}

    else:

        @client.task(name="releaser")
        def releaser(input: dict[str, Any], ctx: Context) -> dict[str, bool]:
            with log.record(ctx, "releaser"):
                ctx.release_slot()
                saw = blocker_started.wait(RELEASE_WAIT)
            return {"saw_blocker": saw}

    @client.task(name="blocker")
    def blocker(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, input["tag"]):
            if input["tag"] == "blocker":
                blocker_started.set()
                hold(ctx, release_blocker)

    worker = start_worker("one-slot", [releaser, blocker], slots=1)
    worker_id = worker.id
    assert worker_id is not None

    first = releaser.run_no_wait({})
    log.wait_started("releaser")
    held = blocker.run_no_wait({"tag": "blocker"})
    try:
        assert first.result() == {"saw_blocker": True}
        assert log.start_of("blocker") < log.of(key="releaser")[0].end

        # The releaser has completed; its slot was given back once, at release_slot. The
        # blocker holds the only slot, so one unit is in use and nothing else may start.
        assert slot_usage(engine)[worker_id] == {"default": 1}
        probe = blocker.run_no_wait({"tag": "probe"})
        settle(engine)
        assert run_status(engine, probe.run_id) == "queued"
        assert not log.of(key="probe")
    finally:
        release_blocker.set()
    held.result()
    probe.result()
    assert log.start_of("probe") >= log.of(key="blocker")[0].end
    wait_for(lambda: slot_usage(engine)[worker_id] == {"default": 0}, what="slots drained")
    assert not [r for r in caplog.records if "underflow" in r.getMessage()]


# =========================================================================================
# 5. Concurrency limits
# =========================================================================================


def _per_key_peaks(rows: Iterable[Execution]) -> dict[str, int]:
    by_key: dict[str, list[Execution]] = defaultdict(list)
    for row in rows:
        by_key[row.key].append(row)
    return {key: peak(group) for key, group in by_key.items()}


def test_round_robin_never_runs_more_than_max_runs_of_a_key(
    client: Hewer, start_worker: StartWorker
) -> None:
    log = ExecutionLog()

    @client.task(
        name="grouped",
        concurrency=ConcurrencyExpression("input.group", max_runs=2, limit_strategy=RR),
    )
    def grouped(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, input["group"]):
            time.sleep(0.15)

    # Plenty of slots: the limit is the only thing holding runs back.
    start_worker("roomy", [grouped], slots=20)
    inputs = [{"group": "a"}] * 8 + [{"group": "b"}] * 5 + [{"group": "c"}] * 5
    grouped.run_many(inputs)

    assert len(log.of()) == 18
    assert _per_key_peaks(log.of()) == {"a": 2, "b": 2, "c": 2}


def test_round_robin_keys_take_turns_behind_a_backlog(
    client: Hewer, start_worker: StartWorker
) -> None:
    log = ExecutionLog()

    @client.task(
        name="fair",
        concurrency=ConcurrencyExpression("input.group", max_runs=2, limit_strategy=RR),
    )
    def fair(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, input["group"]):
            time.sleep(0.08)

    # Two slots: the worker, not the limit, is the bottleneck, so order shows fairness.
    start_worker("narrow", [fair], slots=2)
    inputs = [{"group": "a"}] * 12 + [{"group": "b"}] * 4 + [{"group": "c"}] * 4
    fair.run_many(inputs)

    order = log.start_order()
    assert len(order) == 20
    positions = {g: [i + 1 for i, key in enumerate(order) if key == g] for g in "abc"}
    # Queued behind all of a's backlog, b and c would start at positions 13-20. Taking
    # turns, each key's first run is among the first six starts, and all of b's and c's
    # runs are done starting while most of a's backlog still waits.
    for g in "bc":
        assert positions[g][0] <= 6, (order, positions)
        assert positions[g][-1] <= 14, (order, positions)
    assert positions["a"][-1] >= 17, (order, positions)


def test_concurrency_int_is_a_global_limit(client: Hewer, start_worker: StartWorker) -> None:
    log = ExecutionLog()

    @client.task(name="capped", concurrency=3)
    def capped(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, str(input["i"] % 4)):  # distinct inputs share the one key
            time.sleep(0.12)

    start_worker("w1", [capped], slots=10)
    start_worker("w2", [capped], slots=10)
    capped.run_many([{"i": i} for i in range(12)])

    assert len(log.of()) == 12
    assert peak(log.of()) == 3, "at most 3 at once across all workers, and the limit is reached"


def test_cancel_in_progress_lets_the_newest_win(
    client: Hewer, engine: EngineThread, start_worker: StartWorker
) -> None:
    log = ExecutionLog()
    saw_cancel: dict[str, bool] = {}
    release = threading.Event()

    @client.task(
        name="latest",
        concurrency=ConcurrencyExpression(
            "input.group",
            max_runs=1,
            limit_strategy=ConcurrencyLimitStrategy.CANCEL_IN_PROGRESS,
        ),
    )
    def latest(input: dict[str, Any], ctx: Context) -> dict[str, str]:
        with log.record(ctx, input["tag"]):
            if input.get("hold"):
                saw_cancel[input["tag"]] = hold(ctx, release)
        return {"tag": input["tag"]}

    start_worker("w", [latest], slots=10)

    other = latest.run_no_wait({"group": "y", "tag": "other", "hold": True})
    log.wait_started("other")
    oldest = latest.run_no_wait({"group": "x", "tag": "oldest", "hold": True})
    log.wait_started("oldest")
    middle = latest.run_no_wait({"group": "x", "tag": "middle", "hold": True})
    log.wait_started("middle")
    newest = latest.run_no_wait({"group": "x", "tag": "newest"})

    assert newest.result() == {"tag": "newest"}
    for ref, tag in ((oldest, "oldest"), (middle, "middle")):
        assert run_error(ref).status.upper() == "CANCELLED"
        wait_for(partial(operator.contains, saw_cancel, tag), what=f"{tag} body returned")
        assert saw_cancel[tag] is True, f"{tag}'s body saw ctx.is_cancelled"
        assert run_status(engine, ref.run_id) == "cancelled"
    # Another key is untouched.
    assert run_status(engine, other.run_id) == "running"
    release.set()
    assert other.result() == {"tag": "other"}
    assert saw_cancel["other"] is False


def test_cancel_newest_refuses_the_newcomer(
    client: Hewer, engine: EngineThread, start_worker: StartWorker
) -> None:
    log = ExecutionLog()
    release = threading.Event()

    @client.task(
        name="first-wins",
        concurrency=ConcurrencyExpression(
            "input.group", max_runs=1, limit_strategy=ConcurrencyLimitStrategy.CANCEL_NEWEST
        ),
    )
    def first_wins(input: dict[str, Any], ctx: Context) -> dict[str, str]:
        with log.record(ctx, input["tag"]):
            if input.get("hold"):
                hold(ctx, release)
        return {"tag": input["tag"]}

    start_worker("w", [first_wins], slots=10)

    holder = first_wins.run_no_wait({"group": "x", "tag": "holder", "hold": True})
    log.wait_started("holder")
    refused = first_wins.run_no_wait({"group": "x", "tag": "refused"})
    assert run_error(refused).status.upper() == "CANCELLED"
    assert first_wins.run({"group": "y", "tag": "other-key"}) == {"tag": "other-key"}
    release.set()
    assert holder.result() == {"tag": "holder"}
    assert not log.of(key="refused"), "the refused run never started"
    # The key is free again.
    assert first_wins.run({"group": "x", "tag": "after"}) == {"tag": "after"}


def test_workflow_concurrency_holds_the_key_for_the_whole_dag(
    client: Hewer, start_worker: StartWorker
) -> None:
    log = ExecutionLog()
    wf = client.workflow(
        "one-run-per-group",
        concurrency=ConcurrencyExpression("input.group", max_runs=1, limit_strategy=RR),
    )

    @wf.task()
    def step1(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, input["group"]):
            time.sleep(0.08)

    @wf.task(parents=[step1])
    def step2(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, input["group"]):
            time.sleep(0.08)

    start_worker("roomy", [wf], slots=20)
    wf.run_many([{"group": "a"}] * 3 + [{"group": "b"}] * 3)

    spans: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for group in ("a", "b"):
        runs: dict[str, list[Execution]] = defaultdict(list)
        for row in log.of(key=group):
            runs[row.run_id].append(row)
        assert len(runs) == 3 and all(len(rows) == 2 for rows in runs.values())
        for run_id, rows in runs.items():
            spans[group][run_id] = (min(r.start for r in rows), max(r.end for r in rows))
        intervals = sorted(spans[group].values())
        for earlier, later in itertools.pairwise(intervals):
            assert later[0] >= earlier[1], f"two runs of {group} overlapped: {intervals}"
    # The limit is per key: runs of a and b did run side by side.
    assert any(overlaps(x, y) for x in spans["a"].values() for y in spans["b"].values()), (
        "different keys should not wait for each other"
    )


@pytest.mark.parametrize("tasks", [1, 2])
def test_workflow_concurrency_key_is_held_across_retries(
    tasks: int, client: Hewer, engine: EngineThread, start_worker: StartWorker
) -> None:
    log = ExecutionLog()
    b_waiting = threading.Event()
    wf = client.workflow(
        f"retry-holds-key-{tasks}",
        concurrency=ConcurrencyExpression("input.group", max_runs=1, limit_strategy=RR),
    )

    @wf.task(retries=1)
    def attempt(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, f"{input['run']}#{ctx.retry_count}"):
            if input["run"] == "A" and ctx.retry_count == 0:
                assert b_waiting.wait(HOLD_LIMIT)
                raise RuntimeError("first attempt fails; the run goes on")

    if tasks == 2:

        @wf.task(parents=[attempt])
        def tail(input: dict[str, Any], ctx: Context) -> None:
            with log.record(ctx, f"{input['run']}-tail"):
                pass

    start_worker("roomy", [wf], slots=10)
    a = wf.run_no_wait({"group": "g", "run": "A"})
    log.wait_started("A#0")
    b = wf.run_no_wait({"group": "g", "run": "B"})
    settle(engine)
    assert run_status(engine, b.run_id) == "queued"
    b_waiting.set()
    a.result()
    b.result()
    a_end = max(r.end for r in log.of() if r.key.startswith("A"))
    b_start = min(r.start for r in log.of() if r.key.startswith("B"))
    # Run A held its key from its first attempt to its end: B waited for all of it.
    assert b_start >= a_end, log.start_order()


def test_no_concurrency_key_leaks_after_mixed_outcomes(
    client: Hewer, engine: EngineThread, start_worker: StartWorker
) -> None:
    log = ExecutionLog()
    release = threading.Event()
    wf = client.workflow(
        "leaky",
        concurrency=ConcurrencyExpression("input.group", max_runs=2, limit_strategy=RR),
    )

    @wf.task(
        retries=1,
        execution_timeout=timedelta(seconds=1),
        schedule_timeout=timedelta(seconds=10),  # a leaked key fails the test, not hangs it
        concurrency=ConcurrencyExpression("input.group + '/task'", max_runs=1, limit_strategy=RR),
    )
    def body(input: dict[str, Any], ctx: Context) -> None:
        mode = input["mode"]
        with log.record(ctx, f"{input['group']}:{mode}"):
            if mode == "fail":
                raise RuntimeError("planned failure")
            if mode == "timeout" and ctx.retry_count == 0:
                hold(ctx, threading.Event())  # past its 1 s timeout; retried, then succeeds
            if mode == "hang":
                hold(ctx, release)

    @wf.task(parents=[body])
    def after(input: dict[str, Any], ctx: Context) -> None:
        return None

    @client.task(
        name="leaky-cip",
        concurrency=ConcurrencyExpression(
            "input.group",
            max_runs=1,
            limit_strategy=ConcurrencyLimitStrategy.CANCEL_IN_PROGRESS,
        ),
    )
    def cip(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, f"cip:{input['n']}"):
            hold(ctx, release)

    @client.task(
        name="leaky-newest",
        concurrency=ConcurrencyExpression(
            "input.group", max_runs=1, limit_strategy=ConcurrencyLimitStrategy.CANCEL_NEWEST
        ),
    )
    def newest(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, f"newest:{input['n']}"):
            hold(ctx, release)

    start_worker("w1", [wf, cip, newest], slots=10)
    start_worker("w2", [wf, cip, newest], slots=10)

    refs = []
    for group in ("g1", "g2", "g3"):
        for mode in ("ok", "fail", "timeout", "hang", "ok", "hang"):
            refs.append(wf.run_no_wait({"group": group, "mode": mode}))
    # Cancel the first "hang" of each group once it runs; the second is cancelled queued.
    for group in ("g1", "g2", "g3"):
        log.wait_started(f"{group}:hang")
    cancel_ids = [ref.run_id for i, ref in enumerate(refs) if i % 6 in (3, 5)]
    client.runs.cancel(cancel_ids)

    cip_refs = []
    for n in range(3):
        cip_refs.append(cip.run_no_wait({"group": "k", "n": n}))
        log.wait_started(f"cip:{n}")
    newest_refs = [newest.run_no_wait({"group": "k", "n": 0})]
    log.wait_started("newest:0")
    newest_refs.append(newest.run_no_wait({"group": "k", "n": 1}))
    assert run_error(newest_refs[1]).status.upper() == "CANCELLED"
    client.runs.cancel([cip_refs[-1].run_id, newest_refs[0].run_id])

    outcomes: dict[str, int] = defaultdict(int)
    for ref in refs + cip_refs + newest_refs:
        try:
            ref.result()
            outcomes["completed"] += 1
        except TaskRunError as exc:
            outcomes[exc.status.lower()] += 1
    assert outcomes == {"completed": 9, "failed": 3, "cancelled": 6 + 3 + 2}, outcomes
    release.set()

    wait_for(lambda: gate_holders(engine) == {}, timeout=15, what="every concurrency key free")
    wait_for(
        lambda: all(sum(u.values()) == 0 for u in slot_usage(engine).values()),
        timeout=15,
        what="every slot free",
    )
    # And the keys really are usable: a full round of each group runs now.
    wf.run_many([{"group": g, "mode": "ok"} for g in ("g1", "g2", "g3") for _ in range(2)])
    assert gate_holders(engine) == {}


def test_a_lost_worker_gives_back_its_concurrency_keys(
    client: Hewer, engine: EngineThread, start_worker: StartWorker, tmp_path: Path
) -> None:
    wf = flow_app.declare(client)
    env = dict(os.environ)
    env.update(
        HEWER_TOKEN=engine.token,
        HEWER_HOST_PORT=engine.address,
        HEWER_HEARTBEAT_INTERVAL=str(HEARTBEAT),
        HEWER_FLOW_HANG="1",
        HEWER_FLOW_WORKER_NAME="flow-victim",
        PYTHONUNBUFFERED="1",
    )
    out = (tmp_path / "victim.log").open("wb")
    victim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hewer",
            "worker",
            "start",
            "tests.integration.flow_app:make_worker",
        ],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    try:
        wait_for(
            lambda: (
                victim.poll() is not None
                or any(
                    w.name == "flow-victim" and w.status == "active"
                    for w in engine.call(engine.engine.store.workers_list())
                )
            ),
            timeout=30,
            what="victim registered",
        )
        assert victim.poll() is None, (tmp_path / "victim.log").read_text()
        first = wf.run_no_wait({"group": "g"})
        second = wf.run_no_wait({"group": "g"})
        wait_for(lambda: run_status(engine, first.run_id) == "running", what="first assigned")
        settle(engine)
        assert run_status(engine, second.run_id) == "queued", "the key holds the second back"
        victim.kill()
        victim.wait(timeout=10)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(timeout=10)

    start_worker("survivor", [wf], slots=4)
    one, two = first.result(), second.result()
    assert one["hold_key"]["pid"] == two["hold_key"]["pid"] == os.getpid(), "on the survivor"
    # The run keeps its key across the lost attempt: the second run waits for all of it.
    assert two["hold_key"]["start"] >= one["after"]["end"], (one, two)
    wait_for(lambda: gate_holders(engine) == {}, what="the lost worker's keys freed")


# =========================================================================================
# 6. Priority
# =========================================================================================


def test_higher_priority_first_then_fifo(
    client: Hewer, engine: EngineThread, start_worker: StartWorker
) -> None:
    log = ExecutionLog()
    release = threading.Event()
    priorities: dict[str, int] = {}

    @client.task(name="prio")
    def prio(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, input["tag"]):
            priorities[input["tag"]] = ctx.priority
            if input["tag"] == "blocker":
                hold(ctx, release)

    @client.task(name="urgent", default_priority=3)
    def urgent(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, input["tag"]):
            priorities[input["tag"]] = ctx.priority

    start_worker("one-slot", [prio, urgent], slots=1)
    blocker = prio.run_no_wait({"tag": "blocker"})
    log.wait_started("blocker")

    plan: list[tuple[Any, str, int | None]] = [
        (prio, "L1", 1),
        (prio, "L2", 1),
        (prio, "M1", 2),
        (prio, "L3", None),  # the workflow's default: 1
        (prio, "H1", 3),
        (urgent, "U1", None),  # its workflow's default: 3
        (prio, "M2", 2),
        (prio, "H2", 3),
        (urgent, "U2", 1),  # the trigger's priority beats the default
        (prio, "H3", 3),
    ]
    refs = []
    for task, tag, priority in plan:
        options = {} if priority is None else {"priority": priority}
        refs.append(task.run_no_wait({"tag": tag}, **options))
    settle(engine)
    assert log.start_order() == ["blocker"], "the only slot is busy: everything queues"

    release.set()
    blocker.result()
    for ref in refs:
        ref.result()
    assert log.start_order() == [
        "blocker",
        "H1",
        "U1",
        "H2",
        "H3",
        "M1",
        "M2",
        "L1",
        "L2",
        "L3",
        "U2",
    ]
    assert priorities["U1"] == 3 and priorities["U2"] == 1 and priorities["L3"] == 1


# =========================================================================================
# 7. Rate limits
# =========================================================================================


def _min_span(starts: Sequence[float], count: int) -> float:
    """Shortest time in which ``count`` consecutive starts happened."""
    ordered = sorted(starts)
    return min(
        (ordered[i + count - 1] - ordered[i] for i in range(len(ordered) - count + 1)),
        default=float("inf"),
    )


def test_static_rate_limit_caps_starts_per_window(client: Hewer, start_worker: StartWorker) -> None:
    log = ExecutionLog()
    client.rate_limits.put("api", 5, RateLimitDuration.SECOND)

    @client.task(name="calls-api", rate_limits=[RateLimit(static_key="api", units=1)])
    def calls_api(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, "api"):
            pass

    start_worker("roomy", [calls_api], slots=20)
    began = time.monotonic()
    calls_api.run_many([{}] * 12)

    starts = [r.start for r in log.of()]
    assert len(starts) == 12
    # At most 5 starts in any 1 s window: six consecutive starts span (almost) a second;
    # 0.15 s of slack for dispatch jitter at the window's edges.
    assert _min_span(starts, 6) >= 0.85, sorted(s - began for s in starts)
    # And the limit does let 5 through per window: 12 starts need 2, not 11, windows.
    assert max(starts) - began < 4.0


def test_dynamic_rate_limit_per_user(client: Hewer, start_worker: StartWorker) -> None:
    log = ExecutionLog()

    @client.task(
        name="per-user",
        rate_limits=[
            RateLimit(dynamic_key="input.user", units=1, limit=2, duration=RateLimitDuration.SECOND)
        ],
    )
    def per_user(input: dict[str, Any], ctx: Context) -> None:
        with log.record(ctx, input["user"]):
            pass

    start_worker("roomy", [per_user], slots=20)
    began = time.monotonic()
    per_user.run_many([{"user": "u1"}] * 5 + [{"user": "u2"}] * 5)

    for user in ("u1", "u2"):
        starts = [r.start for r in log.of(key=user)]
        assert len(starts) == 5
        assert _min_span(starts, 3) >= 0.85, (user, sorted(s - began for s in starts))
    # Keys are independent: u2's first two did not wait for u1's budget.
    first_u2 = sorted(r.start for r in log.of(key="u2"))[:2]
    assert max(first_u2) - began < 0.8
