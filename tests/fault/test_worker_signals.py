"""Faults 2-5: a stalled worker (SIGSTOP), a graceful stop (SIGTERM), blocked event loops
and threads, and a poison task that kills every worker it lands on."""

from __future__ import annotations

import threading
import time
from types import ModuleType

import pytest

from hewer import TaskRunError
from hewer.testing import EngineThread
from tests.conftest import HEARTBEAT, INACTIVE_AFTER
from tests.fault.conftest import (
    EventSpy,
    Fleet,
    history,
    runs_done,
    settle_slots,
    worker_ids,
    worker_status,
)
from tests.fault.history import TransitionRecorder, read_executions
from tests.helpers import wait_for

STALL_TASKS = 4
STALL_TASK_SECONDS = 1.0
STALE_TASK = 4.0  # cooperative bodies that would run this long unless cancelled
STALE_CANCEL_WITHIN = 5 * HEARTBEAT  # "within one heartbeat", plus reconnect slack
TERM_TASKS = 3
TERM_TASK_SECONDS = 1.0
GRACE = 0.3  # seconds a stopping worker waits for its tasks
LONG_TASK = 1.0  # well past the grace period
BLOCK_SECONDS = 2 * INACTIVE_AFTER
POISON_COMPANIONS = 150
REASSIGNMENT_CAP = 3  # the engine default
POISON_WAIT = 40.0  # seconds; each loss costs ~INACTIVE_AFTER plus a worker restart


def bodies(fleet: Fleet, pid: int, event: str = "start") -> int:
    """Task bodies that started (or ended) in process ``pid``."""
    return sum(
        1
        for e in read_executions(fleet.log_dir)
        if e.pid == pid and (event == "start" or e.end is not None)
    )


class StatusWatch:
    """Polls one worker's status in the store; ``seen`` holds every status observed."""

    def __init__(self, engine: EngineThread, name: str) -> None:
        self.seen: set[str] = set()
        self._engine = engine
        self._name = name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            status = worker_status(self._engine, self._name)
            if status is not None:
                self.seen.add(status)

    def stop(self) -> set[str]:
        self._stop.set()
        self._thread.join(5)
        return self.seen


# --------------------------------------------------------------------------- fault 2


def test_sigstopped_worker_loses_its_tasks_and_its_late_results_are_rejected(
    engine: EngineThread, fleet: Fleet, app: ModuleType
) -> None:
    spy = EventSpy(engine)
    stalled = fleet.spawn("stalled", slots=STALL_TASKS)
    refs = [app.short.run_no_wait(app.Work(seconds=STALL_TASK_SECONDS)) for _ in range(STALL_TASKS)]
    ids = [r.run_id for r in refs]
    recorder = TransitionRecorder(engine.settings.store_url, ids).start()
    wait_for(lambda: bodies(fleet, stalled.pid) == STALL_TASKS, what="tasks running")
    stalled_name = fleet.name(stalled)
    (stalled_id,) = worker_ids(engine, stalled_name)

    fleet.stop(stalled)
    rescuer = fleet.spawn("rescuer", slots=STALL_TASKS)
    results = [r.result() for r in refs]
    assert {(r["pid"], r["attempt"]) for r in results} == {(rescuer.pid, 1)}
    assert worker_status(engine, stalled_name) == "inactive"

    fleet.cont(stalled)
    # The stalled bodies return and report; the engine must fence those reports off.
    wait_for(lambda: bodies(fleet, stalled.pid, "end") == STALL_TASKS, what="stale bodies end")
    wait_for(
        lambda: len([e for e in spy.rejected("completed") if e[4] == stalled_id]) == STALL_TASKS,
        timeout=10,
        what="the stale results reached the engine",
    )
    # It comes back (re-registers or reopens its stream) and holds nothing.
    wait_for(
        lambda: (
            worker_status(engine, stalled_name) == "active"
            or len(worker_ids(engine, stalled_name)) > 1
        ),
        timeout=10,
        what="the stalled worker reconnects",
    )
    assert settle_slots(engine, timeout=2.0), "slots still held after SIGCONT"
    recorder.stop()

    h = history(engine, fleet, ids)
    summary = h.summary()
    print(f"\n[fault 2] SIGSTOP {STALL_TASKS} running tasks\n{summary.text}")
    for task_id in ids:
        task = h.tasks[task_id]
        assert task.status == "completed"
        assert task.output["pid"] == rescuer.pid, "a stale result overwrote the re-run's"
        assert task.attempts[0].outcome == "lost"
        assert task.attempts[1].outcome == "completed"
    assert recorder.regressions() == [], recorder.sequences
    assert spy.rejected("completed") and all(e[4] == stalled_id for e in spy.rejected("completed"))
    c = summary.counts
    assert c["lost"] == 0 and c["stuck"] == 0 and c["leaked_slots"] == 0
    assert c["duplicates_by_cause"] == {
        "killed": 0,
        "stalled": STALL_TASKS,
        "timed_out": 0,
        "other": 0,
    }
    assert c["overlaps"] == 0
    assert c["overlaps_by_cause"]["stalled"] == STALL_TASKS  # excused: the owner was lost


def test_resumed_worker_cancels_its_stale_attempts(
    engine: EngineThread, fleet: Fleet, app: ModuleType
) -> None:
    """W3: a worker declared lost that comes back must stop the attempts the engine took
    from it (within about a heartbeat) and, meanwhile, not be given more than its slots."""
    stalled = fleet.spawn("stalled", slots=2)
    refs = [app.cooperative.run_no_wait(app.Work(seconds=STALE_TASK)) for _ in range(2)]
    wait_for(lambda: bodies(fleet, stalled.pid) == 2, what="tasks running")
    stalled_name = fleet.name(stalled)
    fleet.stop(stalled)
    fleet.spawn("rescuer", slots=2)
    wait_for(lambda: worker_status(engine, stalled_name) == "inactive", what="declared lost")
    fleet.cont(stalled)
    resumed = time.time()
    wait_for(
        lambda: worker_status(engine, stalled_name) == "active",
        timeout=10,
        what="the stalled worker reconnects",
    )
    # New work the resumed worker could take if the engine thinks its slots are free.
    more = [app.short.run_no_wait(app.Work(seconds=0.3)) for _ in range(4)]
    for r in refs + more:
        r.result()
    wait_for(lambda: bodies(fleet, stalled.pid, "end") >= 2, timeout=10, what="stale bodies end")
    settle_slots(engine, timeout=2.0)
    h = history(engine, fleet, [r.run_id for r in refs + more])
    summary = h.summary()
    stale = [
        e
        for e in h.executions
        if e.pid == stalled.pid and e.attempt == 0 and e.kind == "cooperative"
    ]
    ended = [(e.end or h.now) - resumed for e in stale]
    print(
        f"\n[fault 2b] resumed worker: stale bodies ended {[round(x, 2) for x in ended]}s "
        f"after SIGCONT with outcomes {[e.outcome for e in stale]}\n{summary.text}"
    )
    c = summary.counts
    assert c["lost"] == 0 and c["leaked_slots"] == 0
    assert not c["overcommit_held"], f"resumed worker over-committed: {c['overcommit_held']}"
    assert [e.outcome for e in stale] == ["cancelled", "cancelled"], "stale attempts not cancelled"
    assert max(ended) <= STALE_CANCEL_WITHIN


# --------------------------------------------------------------------------- fault 3


def test_sigterm_drains_in_flight_tasks_once_and_takes_no_new_work(
    engine: EngineThread, fleet: Fleet, app: ModuleType
) -> None:
    # Free slots left on the stopping worker: new work would fit there if it were offered.
    worker = fleet.spawn("graceful", slots=TERM_TASKS + 3)
    name = fleet.name(worker)
    (worker_id,) = worker_ids(engine, name)
    refs = [app.short.run_no_wait(app.Work(seconds=TERM_TASK_SECONDS)) for _ in range(TERM_TASKS)]
    wait_for(lambda: bodies(fleet, worker.pid) == TERM_TASKS, what="tasks running")

    signalled = time.time()
    fleet.term(worker)
    racing = [app.short.run_no_wait(app.Work(seconds=0.0)) for _ in range(3)]

    def connected() -> bool:
        tenant = engine.engine.default_tenant_id
        views = engine.call(engine.engine.core.workers_view(tenant))
        return any(v.record.id == worker_id and v.connected for v in views)

    wait_for(lambda: not connected(), timeout=5, what="the stopping worker takes no work")
    disconnected = time.time()
    late = [app.short.run_no_wait(app.Work(seconds=0.0)) for _ in range(5)]
    results = [r.result() for r in refs]
    assert results == [{"pid": worker.pid, "attempt": 0, "worker": worker_id}] * TERM_TASKS
    assert worker.wait(timeout=30) == 0, fleet.output(worker)
    fleet.processes.exited(worker.pid, 0)
    wait_for(lambda: worker_status(engine, name) == "stopped", what="STOPPED")

    successor = fleet.spawn("successor", slots=5)
    assert {r.result()["pid"] for r in late} == {successor.pid}
    for r in racing:
        r.result()  # triggered during the signal: done once, wherever
    accepted = [r.run_id for r in refs + racing + late]
    settle_slots(engine, timeout=2.0)
    h = history(engine, fleet, accepted)
    summary = h.summary()
    # The engine learns of the signal from the worker (its stream closes a few ms later): a
    # racing trigger may be assigned in between, and is then given back unrun (checked
    # below: the stopping worker starts nothing after the signal). Once the engine holds
    # the stream closed, nothing more may be assigned there.
    on_stopping = [
        a.assigned_at
        for t in h.tasks.values()
        for a in t.attempts.values()
        if a.worker_id == worker_id and a.assigned_at is not None and a.assigned_at > disconnected
    ]
    print(
        f"\n[fault 3] SIGTERM with {TERM_TASKS} tasks in flight; stream closed "
        f"{disconnected - signalled:.3f}s after the signal; assignments to the stopping "
        f"worker after its stream closed: {len(on_stopping)}\n{summary.text}"
    )
    assert on_stopping == [], "assigned to a worker after its stream closed"
    assert not [e for e in h.executions if e.pid == worker.pid and e.start > signalled]
    for r in refs:
        runs = h.tasks[r.run_id].executions
        assert [(e.pid, e.outcome) for e in runs] == [(worker.pid, "completed")]
    # Heartbeats went on while the in-flight tasks finished.
    record = next(w for w in h.workers.values() if w["id"] == worker_id)
    last_body_end = max(e.end or 0.0 for e in h.executions if e.pid == worker.pid)
    assert record["last_heartbeat_at"] >= last_body_end - 3 * HEARTBEAT
    c = summary.counts
    assert c["lost"] == 0 and c["stuck"] == 0 and c["leaked_slots"] == 0
    assert c["duplicates"] == 0 and c["overlaps"] == 0
    assert sum(c["reruns_by_cause"].values()) == 0


def test_sigterm_grace_expiry_requeues_at_once(
    engine: EngineThread, fleet: Fleet, app: ModuleType
) -> None:
    """Tasks still running when the grace period ends go back to the queue when the worker
    leaves, not after the INACTIVE window."""
    worker = fleet.spawn("impatient", slots=TERM_TASKS, grace_period=GRACE)
    refs = [app.short.run_no_wait(app.Work(seconds=LONG_TASK)) for _ in range(TERM_TASKS)]
    wait_for(lambda: bodies(fleet, worker.pid) == TERM_TASKS, what="tasks running")
    signalled = time.time()
    fleet.term(worker)
    assert worker.wait(timeout=30) == 0, fleet.output(worker)
    fleet.processes.exited(worker.pid, 0)
    successor = fleet.spawn("successor", slots=TERM_TASKS)
    results = [r.result() for r in refs]
    assert {(r["pid"], r["attempt"]) for r in results} == {(successor.pid, 1)}
    h = history(engine, fleet, [r.run_id for r in refs])
    requeued = [h.tasks[r.run_id].attempts[0].finished_at for r in refs]
    delays = [t - signalled for t in requeued if t is not None]
    summary = h.summary()
    print(
        f"\n[fault 3b] grace {GRACE}s expired with {TERM_TASKS} tasks running; re-queued "
        f"{min(delays):.2f}-{max(delays):.2f}s after SIGTERM\n{summary.text}"
    )
    assert len(delays) == TERM_TASKS
    assert max(delays) < INACTIVE_AFTER, "re-queued only when the worker was declared lost"
    assert {h.tasks[r.run_id].attempts[0].outcome for r in refs} == {"lost"}
    c = summary.counts
    assert c["lost"] == 0 and c["stuck"] == 0 and c["leaked_slots"] == 0


# --------------------------------------------------------------------------- fault 4


@pytest.mark.parametrize(
    ("task_name", "companion"),
    [
        ("block_loop", False),
        ("block_thread", False),
        ("block_loop", True),  # another task is assigned while the loop is blocked
    ],
    ids=["event-loop", "busy-thread", "event-loop-with-arrival"],
)
def test_blocked_worker_is_not_declared_inactive(
    engine: EngineThread, fleet: Fleet, app: ModuleType, task_name: str, companion: bool
) -> None:
    worker = fleet.spawn("blocked", slots=2)
    name = fleet.name(worker)
    watch = StatusWatch(engine, name)
    blocker = getattr(app, task_name).run_no_wait(app.Work(seconds=BLOCK_SECONDS))
    refs = [blocker]
    if companion:
        wait_for(lambda: bodies(fleet, worker.pid) == 1, what="loop blocked")
        refs.append(app.short.run_no_wait(app.Work(seconds=0.0)))
    results = [r.result() for r in refs]
    seen = watch.stop()
    summary = history(engine, fleet, [r.run_id for r in refs]).summary()
    print(f"\n[fault 4] {task_name} for {BLOCK_SECONDS}s (arrival: {companion})\n{summary.text}")
    assert seen == {"active"}, f"worker status went through {seen}"
    assert [(r["pid"], r["attempt"]) for r in results] == [(worker.pid, 0)] * len(refs)
    c = summary.counts
    assert sum(c["reruns_by_cause"].values()) == 0, "no task was re-run"
    assert c["duplicates"] == 0 and c["lost"] == 0


# --------------------------------------------------------------------------- fault 5


def test_poison_task_fails_after_the_reassignment_cap(
    engine: EngineThread, fleet: Fleet, app: ModuleType
) -> None:
    for _ in range(3):
        fleet.spawn("host", slots=4)
    companions = app.short.run_many_no_wait(
        [app.Work(seconds=0.05) for _ in range(POISON_COMPANIONS)]
    )
    poison = app.poison.run_no_wait(app.Work(seconds=0.05))
    accepted = [r.run_id for r in companions] + [poison.run_id]

    # Supervise: every worker the poison kills is replaced, as a process manager would.
    deadline = time.monotonic() + POISON_WAIT
    while not runs_done(engine, [poison.run_id]) and time.monotonic() < deadline:
        for _ in fleet.reap_exited():
            fleet.spawn("host", slots=4, wait=False)
        time.sleep(0.05)  # supervisor poll period
    terminated = runs_done(engine, [poison.run_id])
    wait_for(lambda: runs_done(engine, accepted[:-1]), timeout=30, what="companions done")
    settle_slots(engine, timeout=2 * INACTIVE_AFTER)
    h = history(engine, fleet, accepted if terminated else accepted[:-1])
    summary = h.summary()
    task = h.tasks[poison.run_id]
    print(
        f"\n[fault 5] poison + {POISON_COMPANIONS} companions: poison {task.status} after "
        f"{len(task.executions)} executions, reassignments {task.reassignments}, "
        f"error {task.error!r}\n{summary.text}"
    )
    assert terminated, (
        f"poison task still {task.status} after {POISON_WAIT}s and "
        f"{len(task.executions)} crashed workers"
    )
    assert task.status == "failed"
    assert len(task.executions) == REASSIGNMENT_CAP + 1
    assert "lost" in (task.error or "").lower(), task.error
    with pytest.raises(TaskRunError):
        poison.result()
    c = summary.counts
    assert c["statuses"].get("completed") == POISON_COMPANIONS, "companions unaffected"
    assert c["lost"] == 0 and c["stuck"] == 0 and c["leaked_slots"] == 0
    by_cause = c["duplicates_by_cause"]
    assert by_cause["other"] == by_cause["timed_out"] == by_cause["stalled"] == 0
