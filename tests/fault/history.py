"""History checker for the fault tests (reliability.md section 5 conventions).

It joins three sources into one history per task:

* the engine's state, read through its store (:mod:`tests.fault.snapshot`): ``runs``,
  ``tasks`` (final state, attempt number, error, output), ``task_attempts`` (per attempt:
  worker, assigned/started/finished, outcome) and ``workers`` (names, slots, status);
* the executions log the task bodies of ``tests/fault/app.py`` write, one JSONL file per
  worker process (a ``start`` and an ``end`` record per body run);
* what the test did to processes (:class:`Processes`: spawned, SIGKILLed, SIGSTOPped,
  SIGCONTed, exited), matched to engine workers by their unique names.

From these, :class:`History` computes per task its attempts (worker, start, end, outcome)
and the counts the battery asks for:

* **lost**: accepted runs (the client got an id) that are not terminal, or not in the
  database at all;
* **duplicates**: task bodies that ran to completion more than once, split by the cause
  that made the engine give up on the earlier attempt (its process was ``killed``, or
  ``stalled`` by SIGSTOP, or the attempt ``timed_out``; else ``other``);
* **overlaps**: two executions of one task alive at the same moment, where the earlier
  one's owner was not lost (killed or stalled owners are counted apart, as excused);
* **stuck**: non-terminal tasks past their deadline (queued longer than the schedule
  timeout, or running longer than the execution timeout, plus a grace);
* **leaked slots**: after drain, units still used in the scheduler, or tasks RUNNING in the
  database on a worker that is not live;
* **overcommit**: moments at which a worker process held more tasks than its slots; a task
  is held from its assignment until both the engine finished the attempt and the body
  returned (a cancelled sync body that keeps running still holds its slot). Also counted
  from the executions log alone (bodies running at once).
* **recovery**: for every attempt lost with its process (kill/stall), the time from the
  fault to the start of the task's next attempt.

``History.summary()`` returns the counts as a dict and a readable multi-line string.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from hewer.store import StoreError
from tests.fault import snapshot

TERMINAL = frozenset({"completed", "failed", "cancelled", "skipped"})
TERMINAL_RUN = frozenset({"completed", "failed", "cancelled"})
CAUSES = ("killed", "stalled", "timed_out", "other")
EPSILON = 0.002  # seconds: clock granularity between engine and worker records


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """One worker process incarnation, as the test drove it."""

    name: str
    pid: int
    slots: int
    spawned_at: float
    died_at: float | None = None  # SIGKILL sent, or observed exit
    died_how: str = ""  # "sigkill", "exit <code>", "sigterm"
    stalls: list[tuple[float, float | None]] = field(default_factory=list)

    def stalled_between(self, start: float, end: float) -> bool:
        return any(s <= end and (e is None or e >= start) for s, e in self.stalls)

    def dead_between(self, start: float, end: float) -> bool:
        return self.died_at is not None and start - EPSILON <= self.died_at <= end + EPSILON


class Processes:
    """A thread-safe record of what a test did to its worker processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_pid: dict[int, Proc] = {}
        self.by_name: dict[str, Proc] = {}
        self.kills: list[tuple[int, float]] = []

    def spawned(self, name: str, pid: int, slots: int) -> Proc:
        proc = Proc(name, pid, slots, time.time())
        with self._lock:
            self.by_pid[pid] = proc
            self.by_name[name] = proc
        return proc

    def killed(self, pid: int, at: float | None = None) -> None:
        at = time.time() if at is None else at
        with self._lock:
            proc = self.by_pid[pid]
            if proc.died_at is None:
                proc.died_at, proc.died_how = at, "sigkill"
                self.kills.append((pid, at))

    def exited(self, pid: int, code: int, at: float | None = None) -> None:
        """The process ended by itself (or after SIGTERM); first observation wins."""
        with self._lock:
            proc = self.by_pid[pid]
            if proc.died_at is None:
                proc.died_at = time.time() if at is None else at
                proc.died_how = f"exit {code}"

    def stopped(self, pid: int, at: float | None = None) -> None:
        with self._lock:
            self.by_pid[pid].stalls.append((time.time() if at is None else at, None))

    def continued(self, pid: int, at: float | None = None) -> None:
        with self._lock:
            stalls = self.by_pid[pid].stalls
            if stalls and stalls[-1][1] is None:
                stalls[-1] = (stalls[-1][0], time.time() if at is None else at)


# --------------------------------------------------------------------------- records


@dataclass
class Execution:
    """One run of a task body, from the executions log."""

    task: str
    attempt: int
    pid: int
    worker: str
    kind: str
    start: float
    end: float | None = None
    outcome: str | None = None  # "completed", "cancelled", ... ; None: never returned


@dataclass
class Attempt:
    """One attempt of a task: the engine's record joined with the body's."""

    task: str
    attempt: int
    worker_id: str | None
    worker_name: str | None
    pid: int | None
    assigned_at: float | None
    started_at: float | None  # engine time the STARTED report landed
    finished_at: float | None  # engine time the attempt ended
    outcome: str | None  # engine outcome: completed, failed, lost, cancelled, ...
    holds_slot: bool = False  # the engine still counts its slot units as taken
    executions: list[Execution] = field(default_factory=list)

    @property
    def body_start(self) -> float | None:
        return min((e.start for e in self.executions), default=None)

    @property
    def body_end(self) -> float | None:
        ends = [e.end for e in self.executions if e.end is not None]
        return max(ends) if ends and len(ends) == len(self.executions) else None


@dataclass
class TaskHistory:
    id: str
    run_id: str
    status: str
    retry_count: int
    error: str | None
    output: Any
    timeout_s: float
    schedule_timeout_s: float
    queued_at: float | None
    started_at: float | None
    created_at: float
    finished_at: float | None = None
    reassignments: int = 0
    attempts: dict[int, Attempt] = field(default_factory=dict)
    executions: list[Execution] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class Summary(NamedTuple):
    counts: dict[str, Any]
    text: str


def read_executions(log_dir: Path) -> list[Execution]:
    """Every body run in ``log_dir/*.jsonl``; a start without an end never returned."""
    open_runs: dict[tuple[str, int, int], list[Execution]] = defaultdict(list)
    out: list[Execution] = []
    for path in sorted(log_dir.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn last line of a killed process
            key = (rec["task"], int(rec["attempt"]), int(rec["pid"]))
            if rec["event"] == "start":
                ex = Execution(
                    rec["task"],
                    int(rec["attempt"]),
                    int(rec["pid"]),
                    rec.get("worker", ""),
                    rec.get("kind", ""),
                    float(rec["t"]),
                )
                open_runs[key].append(ex)
                out.append(ex)
            elif rec["event"] == "end":
                pending = open_runs.get(key)
                if pending:
                    ex = pending.pop(0)
                    ex.end, ex.outcome = float(rec["t"]), rec.get("outcome", "completed")
    return out


def read_db(db_path: Path | str) -> dict[str, list[dict[str, Any]]]:
    """The engine's state, read through a store opened on its database."""
    return snapshot.read(db_path)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def _peak(intervals: Iterable[tuple[float, float]]) -> tuple[int, float]:
    """Most intervals open at once, and when. Touching intervals do not overlap."""
    events: list[tuple[float, int]] = []
    for start, end in intervals:
        if end - start <= EPSILON:
            continue
        events.append((start + EPSILON, 1))
        events.append((end, -1))
    events.sort()
    peak, at, current = 0, 0.0, 0
    for t, delta in events:
        current += delta
        if current > peak:
            peak, at = current, t
    return peak, at


class History:
    """The joined history of one fault test; see the module docstring."""

    def __init__(
        self,
        db_path: Path | str,
        log_dir: Path,
        *,
        processes: Processes | None = None,
        accepted: Iterable[str] | None = None,
        slot_usage: Mapping[str, Mapping[str, int]] | None = None,
        live_workers: Iterable[str] | None = None,
        stuck_grace: float = 2.0,
        now: float | None = None,
    ) -> None:
        self.now = time.time() if now is None else now
        self.processes = processes or Processes()
        self.db = read_db(db_path)
        self.executions = read_executions(log_dir)
        self.slot_usage = (
            {w: dict(u) for w, u in slot_usage.items()} if slot_usage is not None else None
        )
        self.stuck_grace = stuck_grace
        self.workers = {w["id"]: w for w in self.db["workers"]}
        self.runs = {r["id"]: r for r in self.db["runs"]}
        self.accepted = list(accepted) if accepted is not None else list(self.runs)
        if live_workers is None:
            live = {
                wid
                for wid, w in self.workers.items()
                if w["status"] in ("active", "paused") and self._process_alive(wid)
            }
        else:
            live = {wid for wid in live_workers if self._process_alive(wid)}
        self.live_workers = live
        self.tasks = self._build_tasks()

    # -- joins -----------------------------------------------------------------------

    def proc_of_worker(self, worker_id: str | None) -> Proc | None:
        w = self.workers.get(worker_id or "")
        return self.processes.by_name.get(w["name"]) if w else None

    def _process_alive(self, worker_id: str) -> bool:
        proc = self.proc_of_worker(worker_id)
        return proc is None or proc.died_at is None

    def _build_tasks(self) -> dict[str, TaskHistory]:
        tasks: dict[str, TaskHistory] = {}
        for t in self.db["tasks"]:
            output: Any = None
            if t.get("output"):
                try:
                    output = json.loads(t["output"])
                except ValueError:
                    output = t["output"]
            tasks[t["id"]] = TaskHistory(
                id=t["id"],
                run_id=t["run_id"],
                status=t["status"],
                retry_count=int(t["retry_count"]),
                error=t.get("error"),
                output=output,
                timeout_s=float(t.get("timeout_s") or 60.0),
                schedule_timeout_s=float(t.get("schedule_timeout_s") or 300.0),
                queued_at=t.get("queued_at"),
                started_at=t.get("started_at"),
                created_at=float(t["created_at"]),
                finished_at=t.get("finished_at"),
                reassignments=int(t.get("reassignments") or 0),
            )
        for a in self.db["task_attempts"]:
            th = tasks.get(a["task_id"])
            if th is None:
                continue
            w = self.workers.get(a["worker_id"])
            proc = self.proc_of_worker(a["worker_id"])
            th.attempts[int(a["retry_count"])] = Attempt(
                task=a["task_id"],
                attempt=int(a["retry_count"]),
                worker_id=a["worker_id"],
                worker_name=w["name"] if w else None,
                pid=proc.pid if proc else None,
                assigned_at=a.get("assigned_at"),
                started_at=a.get("started_at"),
                finished_at=a.get("finished_at"),
                outcome=a.get("outcome"),
                holds_slot=bool(a.get("holds_slot") or 0),
            )
        for ex in self.executions:
            th = tasks.get(ex.task)
            if th is None:
                continue
            th.executions.append(ex)
            att = th.attempts.get(ex.attempt)
            if att is None:  # ran, but the engine has no attempt row for it
                att = th.attempts[ex.attempt] = Attempt(
                    ex.task, ex.attempt, ex.worker, None, ex.pid, None, None, None, None
                )
            att.executions.append(ex)
            if att.pid is None:
                att.pid = ex.pid
        for th in tasks.values():
            th.executions.sort(key=lambda e: e.start)
        return tasks

    def engine_end(self, task: TaskHistory, att: Attempt) -> float | None:
        """When the engine ended an attempt: its own end, else (an attempt the engine
        stopped while its body may still run) the task's end or the next attempt's start."""
        if att.finished_at is not None:
            return float(att.finished_at)
        later = [a.assigned_at for n, a in task.attempts.items() if n > att.attempt]
        later = [x for x in later if x is not None]
        if later:
            return float(min(later))
        if task.terminal and task.finished_at is not None:
            return float(task.finished_at)
        return None

    def execution_end(self, ex: Execution) -> float:
        """When a body stopped running: its end, else its process's death, else now."""
        if ex.end is not None:
            return ex.end
        proc = self.processes.by_pid.get(ex.pid)
        if proc is not None and proc.died_at is not None:
            return proc.died_at
        return self.now

    def cause(self, task: TaskHistory, attempt_no: int) -> str:
        """Why the engine gave up on an attempt (or why it ran beside another)."""
        att = task.attempts.get(attempt_no)
        if att is None:
            return "other"
        proc = self.processes.by_pid.get(att.pid) if att.pid else None
        if proc is None:
            proc = self.proc_of_worker(att.worker_id)
        start = att.assigned_at if att.assigned_at is not None else (att.body_start or 0.0)
        ended = self.engine_end(task, att)
        end = ended if ended is not None else self.now
        if proc is not None and proc.dead_between(start, end):
            return "killed"
        if proc is not None and proc.stalled_between(start, end):
            return "stalled"
        outcome = (att.outcome or "").lower()
        body_done = any(e.outcome == "completed" for e in att.executions)
        if "time" in outcome or (outcome == "failed" and body_done):
            return "timed_out"
        if (
            att.assigned_at is not None
            and ended is not None
            and ended - att.assigned_at >= task.timeout_s - EPSILON
            and outcome == "failed"
        ):
            return "timed_out"
        return "other"

    # -- counts ----------------------------------------------------------------------

    def lost(self) -> list[str]:
        out = []
        for run_id in self.accepted:
            run = self.runs.get(run_id)
            if run is None or run["status"] not in TERMINAL_RUN:
                out.append(run_id)
        return out

    def duplicates(self) -> dict[str, list[str]]:
        """Cause -> task ids, one entry per body completion beyond the first."""
        out: dict[str, list[str]] = {c: [] for c in CAUSES}
        for th in self.tasks.values():
            done = [e for e in th.executions if e.outcome == "completed"]
            if len(done) < 2:
                continue
            winner = next(
                (n for n, a in th.attempts.items() if (a.outcome or "") == "completed"), None
            )
            if winner is None or not any(e.attempt == winner for e in done):
                winner_ex = done[-1]
            else:
                winner_ex = next(e for e in done if e.attempt == winner)
            for ex in done:
                if ex is not winner_ex:
                    cause = (
                        "other" if ex.attempt == winner_ex.attempt else self.cause(th, ex.attempt)
                    )
                    out[cause].append(th.id)
        return out

    def reruns(self) -> dict[str, list[str]]:
        """Cause -> task ids, one entry per body start beyond the first (ran again)."""
        out: dict[str, list[str]] = {c: [] for c in CAUSES}
        for th in self.tasks.values():
            for earlier, later in itertools.pairwise(th.executions):
                cause = (
                    "other" if earlier.attempt == later.attempt else self.cause(th, earlier.attempt)
                )
                out[cause].append(th.id)
        return out

    def overlaps(self) -> dict[str, list[str]]:
        """Cause of the earlier execution -> task ids, per pair of executions alive at once."""
        out: dict[str, list[str]] = {c: [] for c in CAUSES}
        for th in self.tasks.values():
            exs = th.executions
            for i, a in enumerate(exs):
                a_end = self.execution_end(a)
                for b in exs[i + 1 :]:
                    if b.start + EPSILON < a_end:
                        cause = "other" if a.attempt == b.attempt else self.cause(th, a.attempt)
                        out[cause].append(th.id)
        return out

    def stuck(self) -> list[str]:
        out = []
        for th in self.tasks.values():
            if th.terminal:
                continue
            if th.status == "queued" and th.queued_at is not None:
                if self.now - th.queued_at > th.schedule_timeout_s + self.stuck_grace:
                    out.append(th.id)
            elif (
                th.status == "running"
                and th.started_at is not None
                and self.now - th.started_at > th.timeout_s + self.stuck_grace
            ):
                out.append(th.id)
        return out

    def leaked_slots(self) -> dict[str, int]:
        """Slots still held after drain, by where they were seen."""
        in_scheduler = 0
        if self.slot_usage is not None:
            in_scheduler = sum(sum(u.values()) for u in self.slot_usage.values())
        running = [t for t in self.db["tasks"] if t["status"] == "running"]
        orphaned = sum(1 for t in running if t["worker_id"] not in self.live_workers)
        holding = [a for a in self.db["task_attempts"] if a.get("holds_slot")]
        return {
            "scheduler_units": in_scheduler,
            "db_running": len(running),
            "db_running_on_dead_worker": orphaned,
            "db_attempts_holding": len(holding),
        }

    def held_intervals(self) -> dict[int, list[tuple[float, float]]]:
        """Per worker pid: for each attempt, from assignment until both the engine ended
        the attempt and its body returned (capped at the process's death)."""
        per_pid: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for th in self.tasks.values():
            for att in th.attempts.values():
                if att.pid is None:
                    continue
                starts = [x for x in (att.assigned_at, att.body_start) if x is not None]
                if not starts:
                    continue
                start = min(starts)
                engine_end = self.engine_end(th, att)
                if engine_end is None or att.holds_slot:
                    engine_end = self.now if (att.holds_slot or not th.terminal) else start
                body_end = max((self.execution_end(e) for e in att.executions), default=engine_end)
                end = max(engine_end, body_end)
                proc = self.processes.by_pid.get(att.pid)
                if proc is not None and proc.died_at is not None:
                    end = min(end, proc.died_at)
                per_pid[att.pid].append((start, end))
        return per_pid

    def body_intervals(self) -> dict[int, list[tuple[float, float]]]:
        per_pid: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for ex in self.executions:
            per_pid[ex.pid].append((ex.start, self.execution_end(ex)))
        return per_pid

    def _slots_of_pid(self, pid: int) -> int | None:
        proc = self.processes.by_pid.get(pid)
        if proc is not None:
            return proc.slots
        for ex in self.executions:
            if ex.pid == pid:
                w = self.workers.get(ex.worker)
                if w:
                    config = json.loads(w["slot_config"] or "{}")
                    return int(sum(config.values())) or None
        return None

    def overcommit(self) -> dict[str, dict[int, tuple[int, int]]]:
        """``{"held"|"bodies": {pid: (peak, slots)}}`` for every pid over its slots."""
        out: dict[str, dict[int, tuple[int, int]]] = {"held": {}, "bodies": {}}
        for label, per_pid in (("held", self.held_intervals()), ("bodies", self.body_intervals())):
            for pid, intervals in per_pid.items():
                slots = self._slots_of_pid(pid)
                if slots is None:
                    continue
                peak, _ = _peak(intervals)
                if peak > slots:
                    out[label][pid] = (peak, slots)
        return out

    def recovery_times(self) -> list[float]:
        """Seconds from a fault (kill, stall) to the start of the next attempt, for every
        attempt that was in flight on the faulted process."""
        return [r for _, r in self._recoveries()]

    def detection_times(self) -> list[float]:
        """Seconds from a fault (kill, stall) to the engine ending the attempt it hit."""
        return [d for d, _ in self._recoveries()]

    def _recoveries(self) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for th in self.tasks.values():
            for n, att in sorted(th.attempts.items()):
                proc = self.processes.by_pid.get(att.pid) if att.pid else None
                if proc is None or att.assigned_at is None:
                    continue
                ended = self.engine_end(th, att)
                end = ended if ended is not None else self.now
                fault: float | None = None
                if proc.dead_between(att.assigned_at, end):
                    fault = proc.died_at
                else:
                    for s, e in proc.stalls:
                        if s <= end and (e is None or e >= att.assigned_at):
                            fault = s
                            break
                if fault is None or (att.outcome or "") == "completed":
                    continue
                later = [a for m, a in th.attempts.items() if m > n]
                if not later:
                    continue
                nxt = min(later, key=lambda a: a.attempt)
                begun = [
                    x for x in (nxt.started_at, nxt.body_start, nxt.assigned_at) if x is not None
                ]
                if begun and ended is not None:
                    out.append((ended - fault, min(begun) - fault))
        return out

    def ghost_workers(self) -> list[str]:
        """Workers the database calls ACTIVE or PAUSED whose process is gone."""
        return [
            w["name"]
            for wid, w in self.workers.items()
            if w["status"] in ("active", "paused") and not self._process_alive(wid)
        ]

    def status_counts(self) -> dict[str, int]:
        return dict(Counter(self.runs[r]["status"] for r in self.accepted if r in self.runs))

    # -- report ----------------------------------------------------------------------

    def summary(self) -> Summary:
        dups = self.duplicates()
        reruns = self.reruns()
        overlaps = self.overlaps()
        leaked = self.leaked_slots()
        over = self.overcommit()
        recovery = self.recovery_times()
        detection = self.detection_times()
        ghosts = self.ghost_workers()
        lost = self.lost()
        stuck = self.stuck()
        excused = {c: len(overlaps[c]) for c in ("killed", "stalled")}
        counts: dict[str, Any] = {
            "accepted": len(self.accepted),
            "statuses": self.status_counts(),
            "executions": len(self.executions),
            "lost": len(lost),
            "duplicates": sum(len(v) for v in dups.values()),
            "duplicates_by_cause": {c: len(v) for c, v in dups.items()},
            "reruns_by_cause": {c: len(v) for c, v in reruns.items()},
            "overlaps": len(overlaps["timed_out"]) + len(overlaps["other"]),
            "overlaps_by_cause": {c: len(v) for c, v in overlaps.items()},
            "overlaps_excused": sum(excused.values()),
            "stuck": len(stuck),
            "leaked_slots": leaked["scheduler_units"]
            + leaked["db_running_on_dead_worker"]
            + leaked["db_attempts_holding"],
            "leaked_detail": leaked,
            "overcommit_held": {str(p): v for p, v in over["held"].items()},
            "overcommit_bodies": {str(p): v for p, v in over["bodies"].items()},
            "recovery_n": len(recovery),
            "recovery_p50": round(_percentile(recovery, 0.50), 3),
            "recovery_p99": round(_percentile(recovery, 0.99), 3),
            "recovery_max": round(max(recovery, default=0.0), 3),
            "detection_p50": round(_percentile(detection, 0.50), 3),
            "detection_max": round(max(detection, default=0.0), 3),
            "ghost_workers": len(ghosts),
            "ghost_names": ghosts[:10],
            "kills": len(self.processes.kills),
            "lost_ids": lost[:10],
            "stuck_ids": stuck[:10],
            "other_duplicate_ids": dups["other"][:10],
            "overlap_ids": (overlaps["other"] + overlaps["timed_out"])[:10],
        }
        lines = [
            f"accepted {counts['accepted']}  statuses {counts['statuses']}  "
            f"executions {counts['executions']}  kills {counts['kills']}",
            f"lost {counts['lost']}  stuck {counts['stuck']}  "
            f"leaked slots {counts['leaked_slots']} {leaked}",
            f"duplicates {counts['duplicates']} by cause {counts['duplicates_by_cause']}",
            f"reruns by cause {counts['reruns_by_cause']}",
            f"overlaps {counts['overlaps']} (excused {counts['overlaps_excused']}) "
            f"by cause {counts['overlaps_by_cause']}",
            f"overcommit held {counts['overcommit_held']} bodies {counts['overcommit_bodies']}",
            f"recovery n={counts['recovery_n']} p50={counts['recovery_p50']}s "
            f"p99={counts['recovery_p99']}s max={counts['recovery_max']}s "
            f"(detection p50={counts['detection_p50']}s max={counts['detection_max']}s)",
            f"ghost workers (ACTIVE in the database, process gone) {counts['ghost_workers']} "
            f"{ghosts[:5]}",
        ]
        return Summary(counts, "\n".join(lines))


def runs_terminal(db_path: Path | str, run_ids: Iterable[str]) -> int:
    """How many of ``run_ids`` are terminal (read through the store)."""
    with snapshot.StoreReader(db_path) as reader:
        return reader.runs_terminal(run_ids)


# --------------------------------------------------------------------------- transitions


class TransitionRecorder:
    """Polls the tasks (through the store) and records every change of (status,
    retry_count).

    ``regressions()`` lists the moves backwards: out of a terminal state, to a lower
    attempt number, or within one attempt to an earlier state (queued -> running ->
    terminal).
    """

    RANK = {"pending": 0, "queued": 1, "running": 2}

    def __init__(
        self, db_path: Path | str, task_ids: Iterable[str], interval: float = 0.01
    ) -> None:
        self._db_path = db_path
        self._ids = list(task_ids)
        self._interval = interval
        self.sequences: dict[str, list[tuple[str, int]]] = {i: [] for i in self._ids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="transitions", daemon=True)
        self.polls = 0

    def start(self) -> TransitionRecorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        wanted = set(self._ids)
        with snapshot.StoreReader(self._db_path) as reader:
            while not self._stop.is_set():
                try:
                    rows = [t for t in reader.tasks() if t.id in wanted]
                except StoreError:
                    rows = []  # busy; try again next tick
                for t in rows:
                    seq = self.sequences[t.id]
                    state = (str(t.status), int(t.retry_count))
                    if not seq or seq[-1] != state:
                        seq.append(state)
                self.polls += 1
                self._stop.wait(self._interval)

    def regressions(self) -> list[tuple[str, tuple[str, int], tuple[str, int]]]:
        out = []
        for task_id, seq in self.sequences.items():
            for before, after in itertools.pairwise(seq):
                (s0, r0), (s1, r1) = before, after
                if (
                    s0 in TERMINAL
                    or r1 < r0
                    or (r1 == r0 and s1 not in TERMINAL and self.RANK[s1] < self.RANK[s0])
                ):
                    out.append((task_id, before, after))
        return out
