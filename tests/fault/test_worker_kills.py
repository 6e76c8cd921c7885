"""Fault 1: SIGKILL random workers, again and again, while thousands of short tasks run."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from hewer.testing import EngineThread
from tests.conftest import HEARTBEAT, INACTIVE_AFTER
from tests.fault.conftest import Fleet, dead_workers_marked, history, runs_done, settle_slots
from tests.helpers import wait_for

# CI sizes (nightly: 50k tasks of 1-5 s, 20 workers x 10 slots, 1,000 kills). The engine
# outran the kills before (5,000 tasks done after 33 of them, later 10,000 after 47), so
# the backlog is topped up whenever fewer than TOP_UP_BELOW remain: every kill hits a fleet
# with work in hand, however fast the engine gets.
TASKS = 10_000
TOP_UP = 2_000
TOP_UP_BELOW = 1_000
WORKERS = 5
SLOTS = 10
KILLS = 50
# Seconds between kills. Every kill starts a worker process, a CPU-heavy import on 2 cores:
# at 4 a second the box starved the engine loop (detection up to 2.5 s, recovery up to
# 3.5 s, the box measured and not the engine); at 2.5 a second, 1.7-2.2 s.
KILL_EVERY = 0.4
TASK_SECONDS = (0.01, 0.06)
SEED = 20240501
# Owner death -> next attempt started: 35 s (p99) / 40 s (max) against a 30 s window,
# scaled, plus a fixed allowance for what does not scale: engine loop lag and dispatch on a
# loaded 2-core machine with worker processes restarting (measured 0.5-0.8 s alone, and up
# to 1.9 s of detection lag when the whole suite ran on a busy box, and p99 2.3 s / max
# 2.3 s in a CI run that took twice its usual time).
LATENCY_ALLOWANCE = 3.0
RECOVERY_P99 = INACTIVE_AFTER * 35 / 30 + LATENCY_ALLOWANCE
RECOVERY_MAX = INACTIVE_AFTER * 40 / 30 + LATENCY_ALLOWANCE


@pytest.fixture
def engine(tmp_path: Path, database_url: str) -> Iterator[EngineThread]:
    """The suite's engine, but never giving up on a task its workers keep losing: at this
    kill rate a few of 10,000 tasks lose four workers in a row, and the reassignment cap
    (its own test: test_reaper_table) would then fail them on purpose. This test is about
    loss and duplicates, so every task must end completed."""
    with EngineThread(
        tmp_path,
        database_url=database_url,
        heartbeat_interval=HEARTBEAT,
        inactive_after=INACTIVE_AFTER,
        max_reassignments=-1,
    ) as running:
        yield running


@pytest.mark.slow
def test_sigkill_random_workers_while_thousands_of_tasks_run(
    engine: EngineThread, fleet: Fleet, app: ModuleType
) -> None:
    rng = random.Random(SEED)
    live = [fleet.spawn("k", SLOTS) for _ in range(WORKERS)]

    def submit(n: int) -> list[str]:
        works = [app.Work(seconds=rng.uniform(*TASK_SECONDS)) for _ in range(n)]
        return [r.run_id for r in app.short.run_many_no_wait(works)]

    accepted = submit(TASKS)
    started = time.monotonic()
    kills = 0
    while kills < KILLS:
        # Runs finish in the order they came (FIFO): once the one TOP_UP_BELOW from the end
        # is done, fewer than that remain.
        if runs_done(engine, accepted[-TOP_UP_BELOW : -TOP_UP_BELOW + 10]):
            accepted += submit(TOP_UP)
        time.sleep(KILL_EVERY)  # the pace of the faults, not a wait for a condition
        # A victim that has registered, so every kill hits a worker that holds tasks.
        candidates = [p for p in live if fleet.is_registered(p)] or live
        victim = rng.choice(candidates)
        fleet.kill(victim)
        kills += 1
        live.remove(victim)
        live.append(fleet.spawn("k", SLOTS, wait=False))
    kill_phase = time.monotonic() - started
    wait_for(lambda: runs_done(engine, accepted), timeout=180, what="every run terminal")
    drained = time.monotonic() - started
    settle_slots(engine, timeout=2 * INACTIVE_AFTER)
    dead_workers_marked(engine, fleet, timeout=2 * INACTIVE_AFTER)

    summary = history(engine, fleet, accepted).summary()
    print(
        f"\n[fault 1] {len(accepted)} tasks, {WORKERS} workers x {SLOTS} slots, {kills} kills "
        f"in {kill_phase:.1f}s, drained after {drained:.1f}s\n{summary.text}"
    )
    c = summary.counts
    assert c["lost"] == 0, c["lost_ids"]
    assert c["stuck"] == 0, c["stuck_ids"]
    assert c["leaked_slots"] == 0, c["leaked_detail"]
    assert c["statuses"] == {"completed": len(accepted)}
    by_cause = c["duplicates_by_cause"]
    assert by_cause["other"] == by_cause["stalled"] == by_cause["timed_out"] == 0, by_cause
    assert by_cause["killed"] <= kills * SLOTS  # at most what was in flight at each kill
    assert c["overlaps"] == 0, c["overlap_ids"]
    assert not c["overcommit_held"], c["overcommit_held"]
    assert c["ghost_workers"] == 0, c["ghost_names"]
    assert c["recovery_n"] > 0
    assert c["recovery_p99"] <= RECOVERY_P99, c
    assert c["recovery_max"] <= RECOVERY_MAX, c
