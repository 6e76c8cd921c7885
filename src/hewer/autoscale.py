"""``hewer worker start TARGET --autoscale MIN:MAX``: between MIN and MAX worker processes
on this machine, as many as the queue of the worker's tasks asks for.

A supervisor process (it runs no task itself) starts MIN ordinary ``hewer worker start``
children, then polls the engine's Task Stats API for the worker's task names. It adds one
child while more than ``threshold`` tasks stay queued for ``up_after``, and retires one
(SIGTERM: it finishes what it holds, then exits) while nothing is queued and the others'
slots could hold what runs, for ``idle_after``. A child that dies is replaced when fewer
than MIN remain; one that keeps dying at start stops the supervisor, rather than
restarting forever. SIGTERM/SIGINT stop every child gracefully; a second one kills them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

from hewer._children import supervised_child

logger = logging.getLogger("hewer.autoscale")

# A child that exits this soon after it started counts towards a crash loop.
QUICK_EXIT_S = 10.0
CRASH_LOOP_LIMIT = 5


class AutoscaleError(Exception):
    """The supervisor cannot go on (bad range, children that keep failing)."""


def parse_range(text: str) -> tuple[int, int]:
    """``"1:4"`` -> ``(1, 4)``; MIN may be 0 (scale to zero), MAX at least 1 and MIN."""
    low, sep, high = text.partition(":")
    try:
        minimum, maximum = int(low), int(high)
    except ValueError:
        raise AutoscaleError(f"expected MIN:MAX (e.g. 1:4), got {text!r}") from None
    if not sep or minimum < 0 or maximum < 1 or minimum > maximum:
        raise AutoscaleError(f"expected 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return minimum, maximum


@dataclass(frozen=True, slots=True)
class Policy:
    minimum: int
    maximum: int
    threshold: int  # queued tasks above which one more worker is wanted
    slots: int  # what one worker runs at once
    interval: float = 2.0  # seconds between polls of the task stats
    up_after: float = 10.0  # queued above the threshold this long: add one
    idle_after: float = 60.0  # idle this long: retire one


@dataclass(slots=True)
class Decider:
    """When to add or retire a worker; every change needs a condition that held for its
    whole period since the last change, so one busy or idle poll never flaps the count."""

    policy: Policy
    _above_since: float | None = None
    _idle_since: float | None = None

    def decide(self, workers: int, queued: int, running: int, now: float) -> int:
        """+1 (add one), -1 (retire one) or 0, for ``workers`` alive now."""
        p = self.policy
        if workers < p.minimum:
            return +1
        if workers > p.maximum:
            return -1
        busy = queued > p.threshold or (workers == 0 and queued > 0)
        # Idle: nothing waits, and one worker fewer would still hold every running task.
        idle = queued == 0 and running <= (workers - 1) * p.slots
        if not busy:
            self._above_since = None
        elif self._above_since is None:
            self._above_since = now
        if not idle:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now
        above, quiet = self._above_since, self._idle_since
        if above is not None and workers < p.maximum and now - above >= p.up_after:
            self.reset()
            return +1
        if quiet is not None and workers > p.minimum and now - quiet >= p.idle_after:
            self.reset()
            return -1
        return 0

    def reset(self) -> None:
        self._above_since = self._idle_since = None


@dataclass(slots=True)
class _Child:
    proc: subprocess.Popen[bytes]
    index: int
    started: float
    retiring: bool = False


@dataclass(slots=True)
class Supervisor:
    """Runs the children; ``load()`` returns (queued, running) of the worker's tasks."""

    command: Callable[[int], Sequence[str]]  # the argv of the child in slot ``index``
    load: Callable[[], tuple[int, int]]
    policy: Policy
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    clock: Callable[[], float] = time.monotonic
    children: list[_Child] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _signals: int = 0
    _quick_exits: int = 0

    def run(self) -> int:
        """Supervise until stopped; returns the exit status for the process."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        decider = Decider(self.policy)
        logger.info(
            "autoscaling %d..%d workers (threshold %d queued, poll every %.3gs)",
            self.policy.minimum,
            self.policy.maximum,
            self.policy.threshold,
            self.policy.interval,
        )
        try:
            try:
                while not self._stop.is_set():
                    self._turn(decider)
                    self._stop.wait(self.policy.interval)
            except AutoscaleError as exc:
                logger.error("autoscale: %s", exc)
                self._stop_all()
                return 1
            # Still under our handlers: a second signal while the children drain kills them.
            return self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _turn(self, decider: Decider) -> None:
        self._reap()
        alive = [c for c in self.children if not c.retiring]
        try:
            queued, running = self.load()
        except Exception as exc:  # the engine is away: keep what runs, decide later
            logger.warning("autoscale: cannot read the task stats: %s", exc)
            step = +1 if len(alive) < self.policy.minimum else 0
            queued = running = -1
        else:
            step = decider.decide(len(alive), queued, running, self.clock())
        if step > 0:
            self._spawn(queued)
        elif step < 0:
            self._retire(alive[-1], queued, running)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info("stopping %d workers (again to kill them)", len(self.children))
            self._stop.set()
        else:
            for child in self.children:
                _send(child.proc, signal.SIGKILL)

    def _free_index(self) -> int:
        taken = {c.index for c in self.children}
        return next(i for i in range(len(taken) + 1) if i not in taken)

    def _spawn(self, queued: int) -> None:
        index = self._free_index()
        # A second signal would make a worker skip its drain: the children must not get the
        # terminal's Ctrl-C besides the SIGTERM the supervisor sends them.
        proc = subprocess.Popen(list(self.command(index)), env=dict(self.env), **supervised_child())
        self.children.append(_Child(proc, index, self.clock()))
        alive = sum(not c.retiring for c in self.children)
        why = f"{queued} queued" if queued >= 0 else "below the minimum"
        logger.info(
            "autoscale: started worker %d (pid %d), %d now (%s)", index, proc.pid, alive, why
        )

    def _retire(self, child: _Child, queued: int, running: int) -> None:
        child.retiring = True
        _send(child.proc, signal.SIGTERM)
        logger.info(
            "autoscale: retiring worker %d (pid %d): %d queued, %d running",
            child.index,
            child.proc.pid,
            queued,
            running,
        )

    def _reap(self) -> None:
        for child in list(self.children):
            code = child.proc.poll()
            if code is None:
                if self.clock() - child.started >= QUICK_EXIT_S:
                    self._quick_exits = 0  # one started fine: what failed before was not a loop
                continue
            self.children.remove(child)
            if child.retiring:
                logger.info("autoscale: worker %d stopped (exit %d)", child.index, code)
                continue
            lived = self.clock() - child.started
            logger.warning(
                "autoscale: worker %d exited with status %d after %.1fs", child.index, code, lived
            )
            self._quick_exits = self._quick_exits + 1 if lived < QUICK_EXIT_S else 0
            if self._quick_exits >= CRASH_LOOP_LIMIT:
                raise AutoscaleError(
                    f"{self._quick_exits} workers in a row exited within {QUICK_EXIT_S:.0f}s "
                    "of starting; giving up (see their errors above)"
                )

    def _stop_all(self) -> int:
        """SIGTERM every child and wait for them (their grace period bounds the wait)."""
        for child in self.children:
            if not child.retiring:  # a retiring one has its SIGTERM: a second skips its drain
                _send(child.proc, signal.SIGTERM)
        status = 0
        for child in self.children:
            code = child.proc.wait()
            if code != 0 and not child.retiring:
                status = 1
        self.children.clear()
        return status if self._signals < 2 else 1


def _send(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
