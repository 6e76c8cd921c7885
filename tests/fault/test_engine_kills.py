"""Fault 9: ``kill -9`` the engine (SQLite) during a run, again and again, and restart it.

The engine runs as ``python -m hewer engine`` on a fixed port; worker processes and a
client keep going through every outage. Triggers that fail while the engine is down are
not counted; every run whose trigger returned an id must complete.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hewer import HewerError
from tests.conftest import HEARTBEAT, INACTIVE_AFTER
from tests.fault.conftest import REPO, Fleet, load_app
from tests.fault.history import History, runs_terminal
from tests.fault.snapshot import StoreReader
from tests.helpers import wait_for

# CI sizes (nightly: 50k tasks on PostgreSQL, a kill every 60 s).
ENGINE_KILLS = 10
UPTIME = (0.6, 1.4)  # seconds the engine runs between kills
WORKERS = 3
SLOTS = 10
FEED_BATCH = 10
FEED_EVERY = 0.15  # seconds between trigger batches
TASK_SECONDS = (0.02, 0.2)
SEED = 99


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EngineProcess:
    def __init__(self, work: Path, database_url: str) -> None:
        self.work = work
        self.port = free_port()
        self.api_port = free_port()
        self.db = database_url
        self.state = work / "state"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.env = dict(os.environ)
        self.env.update(
            HEWER_DATABASE_URL=database_url,
            HEWER_STATE_DIR=str(self.state),
            HEWER_HOST="127.0.0.1",
            HEWER_PORT=str(self.port),
            HEWER_API_PORT=str(self.api_port),
            HEWER_INACTIVE_AFTER=str(INACTIVE_AFTER),
            HEWER_HEARTBEAT_INTERVAL=str(HEARTBEAT),
            PYTHONUNBUFFERED="1",
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        out = (self.work / f"engine-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hewer", "engine"],
            cwd=REPO,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        wait_for(self._listening, timeout=30, what="engine listening")

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.work / f"engine-{self.starts}.log").read_text(errors="replace")
            raise AssertionError(f"engine exited with {self.proc.returncode}:\n{log}")
        if not (self.state / "token").exists():
            return False
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def token(self) -> str:
        return (self.state / "token").read_text().strip()

    def active(self, name: str) -> bool:
        with StoreReader(self.db) as reader:
            return reader.worker_active(name)


class Feeder:
    """Triggers batches of tasks until stopped; keeps only the ids the engine returned."""

    def __init__(self, app: object, rng: random.Random) -> None:
        self.app = app
        self.rng = rng
        self.accepted: list[str] = []
        self.failed_calls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        app = self.app
        while not self._stop.wait(FEED_EVERY):
            inputs = [
                app.Work(seconds=self.rng.uniform(*TASK_SECONDS))  # type: ignore[attr-defined]
                for _ in range(FEED_BATCH)
            ]
            try:
                refs = app.short.run_many_no_wait(inputs)  # type: ignore[attr-defined]
            except HewerError:
                self.failed_calls += 1  # the engine is down: not accepted, not counted
                continue
            self.accepted.extend(r.run_id for r in refs)


@pytest.mark.slow
def test_engine_sigkilled_ten_times_loses_no_accepted_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    rng = random.Random(SEED)
    engine = EngineProcess(tmp_path, database_url)
    engine.start()
    fleet = Fleet(
        token=engine.token,
        address=engine.address,
        work_dir=tmp_path,
        is_registered=engine.active,
    )
    app = load_app(engine.token(), engine.address, monkeypatch)
    feeder = Feeder(app, rng)
    try:
        workers = [fleet.spawn("survivor", SLOTS) for _ in range(WORKERS)]
        feeder.start()
        outages: list[float] = []
        for _ in range(ENGINE_KILLS):
            time.sleep(rng.uniform(*UPTIME))  # the engine's uptime: fault pacing
            engine.kill()
            down = time.monotonic()
            engine.start()
            outages.append(time.monotonic() - down)
        time.sleep(rng.uniform(*UPTIME))  # a last stretch of triggers after the last restart
        feeder.stop()
        accepted = list(feeder.accepted)
        assert accepted, "no trigger succeeded"
        wait_for(
            lambda: runs_terminal(engine.db, accepted) == len(accepted),
            timeout=90,
            what="every accepted run terminal",
        )
        # Runs the engine took but whose answer a kill swallowed (the client then tried
        # again) are not in ``accepted``; they must end too before slots are counted.
        wait_for(
            lambda: no_task_running(engine.db),
            timeout=60,
            what="every run the engine holds terminal, accepted or not",
        )
        for proc in workers:
            assert proc.poll() is None, f"worker died:\n{fleet.output(proc)}"
        wait_for(
            lambda: all(engine.active(fleet.name(p)) for p in workers),
            timeout=10,
            what="workers ACTIVE again",
        )
        h = History(engine.db, fleet.log_dir, processes=fleet.processes, accepted=accepted)
        summary = h.summary()
        print(
            f"\n[fault 9] {ENGINE_KILLS} engine kills; outages {min(outages):.2f}-"
            f"{max(outages):.2f}s; {len(accepted)} runs accepted, {feeder.failed_calls} "
            f"trigger calls failed\n{summary.text}"
        )
        c = summary.counts
        assert c["lost"] == 0, c["lost_ids"]
        assert c["statuses"] == {"completed": len(accepted)}, c["statuses"]
        assert c["stuck"] == 0
        assert c["leaked_detail"]["db_running"] == 0
        # Workers stayed alive and the outages were shorter than the liveness window:
        # results are retried until accepted, so nothing ran twice.
        assert c["duplicates"] == 0, c["duplicates_by_cause"]
        assert c["overlaps"] == 0, c["overlap_ids"]
        # The engine's own downtime never counts against a worker (fresh window at start).
        assert {w["name"]: w["status"] for w in h.workers.values()} == {
            fleet.name(p): "active" for p in workers
        }
    finally:
        feeder.stop()
        fleet.close()
        engine.stop()
        app.hw.close()


def no_task_running(database: str) -> bool:
    with StoreReader(database) as reader:
        return not any(str(t.status) in ("queued", "running") for t in reader.tasks())
