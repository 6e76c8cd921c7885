"""Fixtures for the fault tests: an engine, a fleet of worker processes, the app module."""

from __future__ import annotations

import importlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hewer.testing import EngineThread
from tests.conftest import HEARTBEAT
from tests.fault.history import History, Processes
from tests.fault.snapshot import TERMINAL_RUN
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
WORKER_TARGET = "tests.fault.app:make_worker"


class Fleet:
    """Worker processes (``hewer worker start tests.fault.app:make_worker``) and what was
    done to them, recorded in ``self.processes`` for the history checker."""

    def __init__(
        self,
        *,
        token: Callable[[], str],
        address: str,
        work_dir: Path,
        is_registered: Callable[[str], bool] | None = None,
        grace_period: float = 5.0,
    ) -> None:
        self._token = token
        self.address = address
        self.work_dir = work_dir
        self.log_dir = work_dir / "executions"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir = work_dir / "worker-logs"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.processes = Processes()
        self.popen: dict[int, subprocess.Popen[bytes]] = {}
        self._is_registered = is_registered
        self._grace = grace_period
        self._serial = itertools.count(1)

    def spawn(
        self,
        base: str = "w",
        slots: int = 5,
        wait: bool = True,
        timeout: float = 30,
        grace_period: float | None = None,
    ) -> subprocess.Popen[bytes]:
        name = f"{base}-{next(self._serial)}"
        env = dict(os.environ)
        env.update(
            HEWER_TOKEN=self._token(),
            HEWER_HOST_PORT=self.address,
            HEWER_HEARTBEAT_INTERVAL=str(HEARTBEAT),
            HEWER_GRACE_PERIOD=str(self._grace if grace_period is None else grace_period),
            HEWER_FAULT_LOG_DIR=str(self.log_dir),
            HEWER_FAULT_WORKER_NAME=name,
            HEWER_FAULT_SLOTS=str(slots),
            PYTHONUNBUFFERED="1",
        )
        out = (self.out_dir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "hewer", "worker", "start", WORKER_TARGET],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        self.popen[proc.pid] = proc
        self.processes.spawned(name, proc.pid, slots)
        proc.fault_name = name  # type: ignore[attr-defined]
        if wait:
            self.wait_registered(proc, timeout)
        return proc

    def is_registered(self, proc: subprocess.Popen[bytes]) -> bool:
        return self._is_registered is not None and self._is_registered(self.name(proc))

    def name(self, proc: subprocess.Popen[bytes]) -> str:
        return str(proc.fault_name)  # type: ignore[attr-defined]

    def wait_registered(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
        name = self.name(proc)
        if self._is_registered is None:
            return
        check = self._is_registered
        wait_for(
            lambda: proc.poll() is not None or check(name),
            timeout=timeout,
            what=f"worker {name} registered",
        )
        assert proc.poll() is None, self.output(proc)

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.out_dir / f"{self.name(proc)}.log").read_text(errors="replace")

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        self.processes.killed(proc.pid)
        proc.kill()
        proc.wait(timeout=30)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGSTOP)
        self.processes.stopped(proc.pid)

    def cont(self, proc: subprocess.Popen[bytes]) -> None:
        self.processes.continued(proc.pid)
        proc.send_signal(signal.SIGCONT)

    def term(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)

    def reap_exited(self) -> list[subprocess.Popen[bytes]]:
        """Record processes that ended by themselves; returns them."""
        gone = []
        for pid, proc in self.popen.items():
            code = proc.poll()
            if code is not None and self.processes.by_pid[pid].died_at is None:
                self.processes.exited(pid, code)
                gone.append(proc)
        return gone

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.popen.values() if p.poll() is None]

    def close(self) -> None:
        for proc in self.popen.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
        for proc in self.popen.values():
            proc.wait(timeout=30)


def engine_fleet(engine: EngineThread, work_dir: Path, grace_period: float = 5.0) -> Fleet:
    """A fleet bound to an in-process engine (registration checked through its store)."""

    def registered(name: str) -> bool:
        return any(
            w.name == name and w.status == "active"
            for w in engine.call(engine.engine.store.workers_list())
        )

    return Fleet(
        token=lambda: engine.token,
        address=engine.address,
        work_dir=work_dir,
        is_registered=registered,
        grace_period=grace_period,
    )


@pytest.fixture
def fleet(engine: EngineThread, tmp_path: Path) -> Iterator[Fleet]:
    f = engine_fleet(engine, tmp_path)
    yield f
    f.close()


def load_app(engine_token: str, address: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("HEWER_TOKEN", engine_token)
    monkeypatch.setenv("HEWER_HOST_PORT", address)
    monkeypatch.delenv("HEWER_FAULT_LOG_DIR", raising=False)
    from tests.fault import app as module

    return importlib.reload(module)


@pytest.fixture
def app(engine: EngineThread, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``tests.fault.app`` with its client pointed at the test engine."""
    module = load_app(engine.token, engine.address, monkeypatch)
    yield module
    module.hw.close()


def engine_snapshot(engine: EngineThread) -> tuple[dict[str, dict[str, int]], set[str]]:
    """Scheduler slot usage and the ids of workers the engine holds as live."""
    usage = engine.call(engine.engine.core.scheduler.slot_usage())
    live = {
        w.id
        for w in engine.call(engine.engine.store.workers_list())
        if str(w.status) in ("active", "paused")
    }
    return usage, live


def history(engine: EngineThread, fleet: Fleet, accepted: list[str], **kw: object) -> History:
    usage, live = engine_snapshot(engine)
    return History(
        engine.settings.store_url,
        fleet.log_dir,
        processes=fleet.processes,
        accepted=accepted,
        slot_usage=usage,
        live_workers=live,
        **kw,  # type: ignore[arg-type]
    )


def runs_done(engine: EngineThread, run_ids: list[str]) -> bool:
    """All runs terminal, read through the engine's own store."""
    tenant = engine.engine.default_tenant_id
    found = engine.call(engine.engine.store.runs_get(tenant, run_ids))
    done = sum(1 for run, _ in found if run.status in TERMINAL_RUN)
    return done == len(run_ids)


def dead_workers_marked(engine: EngineThread, fleet: Fleet, timeout: float) -> bool:
    """Wait (bounded) until no worker whose process is gone is ACTIVE/PAUSED in the store."""
    deadline = time.monotonic() + timeout
    while True:
        ghosts = [
            w.name
            for w in engine.call(engine.engine.store.workers_list())
            if str(w.status) in ("active", "paused")
            and (proc := fleet.processes.by_name.get(w.name)) is not None
            and proc.died_at is not None
        ]
        if not ghosts:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def settle_slots(engine: EngineThread, timeout: float) -> bool:
    """Wait (bounded) for the scheduler to hold no slot; False if some are still held."""
    deadline = time.monotonic() + timeout
    while True:
        usage, _ = engine_snapshot(engine)
        if not any(n for u in usage.values() for n in u.values()):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


class EventSpy:
    """Records every worker report the engine core handles, and whether it applied."""

    def __init__(self, engine: EngineThread) -> None:
        self.events: list[tuple[float, str, str, int, str, bool]] = []
        core = engine.engine.core
        original = core.task_events  # every report goes through it, batched or not

        async def spy(events: Any) -> Any:
            outcomes = await original(events)
            for event, outcome in zip(events, outcomes, strict=True):
                self.events.append(
                    (
                        time.time(),
                        str(event.type),
                        event.task_id,
                        event.retry_count,
                        event.worker_id,
                        bool(outcome.applied),
                    )
                )
            return outcomes

        core.task_events = spy  # type: ignore[method-assign]

    def rejected(self, kind: str | None = None) -> list[tuple[float, str, str, int, str, bool]]:
        return [e for e in self.events if not e[5] and (kind is None or e[1] == kind)]


def worker_ids(engine: EngineThread, name: str) -> list[str]:
    return [w.id for w in engine.call(engine.engine.store.workers_list()) if w.name == name]


def worker_status(engine: EngineThread, name: str) -> str | None:
    found = [w for w in engine.call(engine.engine.store.workers_list()) if w.name == name]
    return str(found[-1].status) if found else None
