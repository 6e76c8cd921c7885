"""Replica battery (reliability reference E4, E5) at CI size: three engine processes over
one PostgreSQL database, workers spread over them, a steady stream of runs.

``kill -9`` the replica that schedules, again and again, and random ones; SIGSTOP the one
that schedules past its lease and SIGCONT it. Every run whose trigger returned an id must
complete, no task may run twice (every worker stays alive throughout), scheduling must be
taken over within 10 s, dispatch must resume within 10 s, and a replica woken after losing
its lease must step down instead of committing.

The lease term is the default (5 s): the times printed are what a user gets.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.fault.conftest import Fleet, load_app
from tests.fault.history import History, runs_terminal
from tests.fault.snapshot import StoreReader
from tests.fault.test_engine_kills import EngineProcess, Feeder
from tests.helpers import wait_for
from tests.pg import fresh_database_sync

REPLICAS = 3
LEADER_KILLS = 3
RANDOM_KILLS = 2
WORKERS = 3
SLOTS = 10
UPTIME = (1.0, 2.0)
TAKEOVER_BOUND = 10.0
# The liveness window in the same ratio to the lease term as the defaults (30 s to 5 s).
HEARTBEAT = 1.0
INACTIVE_AFTER = 15.0
SEED = 7


class Replica(EngineProcess):
    """``hewer engine`` as a replica: a name of its own, scaled liveness, its /health."""

    def __init__(self, work: Path, database_url: str, name: str) -> None:
        (work / name).mkdir(parents=True)
        super().__init__(work / name, database_url)
        self.name = name
        self.env.update(
            HEWER_REPLICA_ID=name,
            HEWER_INACTIVE_AFTER=str(INACTIVE_AFTER),
            HEWER_HEARTBEAT_INTERVAL=str(HEARTBEAT),
        )

    def health(self) -> dict[str, Any] | None:
        try:
            url = f"http://127.0.0.1:{self.api_port}/health"
            with urllib.request.urlopen(url, timeout=1) as response:
                body = json.loads(response.read())
                return body if isinstance(body, dict) else None
        except OSError:
            return None

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig is signal.SIGKILL:
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        super().stop()


def lease(database: str) -> tuple[str, int, bool] | None:
    """(holder, token, live) of the scheduling lease, read straight from the database."""

    async def read() -> tuple[str, int, bool] | None:
        conn = await asyncpg.connect(database, timeout=5)
        try:
            row = await conn.fetchrow(
                "SELECT holder, token, expires_at > now() FROM engine_leases "
                "WHERE name = 'scheduler'"
            )
        finally:
            await conn.close()
        return None if row is None else (str(row[0]), int(row[1]), bool(row[2]))

    return asyncio.run(read())


def finished_after(database: str, moment: float) -> bool:
    """Whether some task finished after ``moment`` (wall clock): dispatch goes on."""
    with StoreReader(database) as reader:
        return any(
            t.finished_at is not None and t.finished_at > moment and str(t.status) == "completed"
            for t in reader.tasks()
        )


class Rig:
    def __init__(self, work: Path, database: str) -> None:
        self.database = database
        self.replicas = [Replica(work, database, f"r{i}") for i in range(REPLICAS)]
        self.takeovers: list[float] = []
        self.resumed: list[float] = []

    @property
    def addresses(self) -> str:
        return ",".join(r.address for r in self.replicas)

    def by_name(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)

    def holder(self) -> tuple[str, int] | None:
        current = lease(self.database)
        if current is None or not current[2]:
            return None
        return current[0], current[1]

    def await_takeover(self, gone: str, since: float, token: int) -> str:
        """Wait for another replica to hold the lease with a newer token; record times."""
        found = wait_for(
            lambda: (h := self.holder()) is not None and h[0] != gone and h[1] > token and h,
            timeout=TAKEOVER_BOUND * 3,
            interval=0.05,
            what=f"a replica other than {gone} scheduling",
        )
        assert isinstance(found, tuple)
        self.takeovers.append(time.monotonic() - since)
        wall = time.time() - (time.monotonic() - since)
        wait_for(
            lambda: finished_after(self.database, wall),
            timeout=TAKEOVER_BOUND * 3,
            interval=0.1,
            what="a task completed after the failure",
        )
        self.resumed.append(time.monotonic() - since)
        return str(found[0])

    def close(self) -> None:
        for r in self.replicas:
            r.stop()


@pytest.mark.slow
def test_replicas_survive_kills_and_a_paused_scheduler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(SEED)
    with fresh_database_sync() as database:
        rig = Rig(tmp_path, database)
        first = rig.replicas[0]
        for r in rig.replicas:  # one after the other: the first schedules
            r.start()
        assert rig.holder() is not None and rig.holder()[0] == "r0"  # type: ignore[index]

        def registered(name: str) -> bool:
            with StoreReader(database) as reader:
                return reader.worker_active(name)

        fleet = Fleet(
            token=first.token, address=rig.addresses, work_dir=tmp_path, is_registered=registered
        )
        app = load_app(first.token(), rig.addresses, monkeypatch)
        feeder = Feeder(app, rng)
        try:
            workers = [fleet.spawn("w", SLOTS) for _ in range(WORKERS)]
            feeder.start()
            # kill -9 the replica that schedules, several times.
            for _ in range(LEADER_KILLS):
                time.sleep(rng.uniform(*UPTIME))  # fault pacing: the replicas' uptime
                holder = rig.holder()
                assert holder is not None
                victim = rig.by_name(holder[0])
                victim.signal(signal.SIGKILL)
                rig.await_takeover(victim.name, time.monotonic(), holder[1])
                victim.start()
            # kill -9 random replicas (the scheduling one or not).
            for _ in range(RANDOM_KILLS):
                time.sleep(rng.uniform(*UPTIME))
                victim = rng.choice(rig.replicas)
                holder = rig.holder()
                assert holder is not None
                killed_at = time.monotonic()
                victim.signal(signal.SIGKILL)
                if victim.name == holder[0]:
                    rig.await_takeover(victim.name, killed_at, holder[1])
                victim.start()
            # SIGSTOP the one that schedules past its lease, then SIGCONT it: it must find
            # itself fenced off and step down, and nothing may double.
            time.sleep(rng.uniform(*UPTIME))
            holder = rig.holder()
            assert holder is not None
            paused = rig.by_name(holder[0])
            paused.signal(signal.SIGSTOP)
            rig.await_takeover(paused.name, time.monotonic(), holder[1])
            paused.signal(signal.SIGCONT)
            resumed_at = time.monotonic()
            wait_for(
                lambda: (h := paused.health()) is not None and h["scheduling"] is False,
                timeout=15,
                what=f"{paused.name} stepped down after SIGCONT",
            )
            stepped_down = time.monotonic() - resumed_at
            time.sleep(rng.uniform(*UPTIME))  # a last stretch of triggers
            feeder.stop()
            accepted = list(feeder.accepted)
            assert accepted, "no trigger succeeded"
            wait_for(
                lambda: runs_terminal(database, accepted) == len(accepted),
                timeout=120,
                what="every accepted run terminal",
            )
            for proc in workers:
                assert proc.poll() is None, f"worker died:\n{fleet.output(proc)}"
            h = History(database, fleet.log_dir, processes=fleet.processes, accepted=accepted)
            summary = h.summary()
            print(
                f"\n[replicas] {LEADER_KILLS} scheduler kills, {RANDOM_KILLS} random kills, "
                f"1 pause; takeover {min(rig.takeovers):.2f}-{max(rig.takeovers):.2f}s, "
                f"dispatch resumed {min(rig.resumed):.2f}-{max(rig.resumed):.2f}s after the "
                f"failure; paused replica stepped down {stepped_down:.2f}s after SIGCONT; "
                f"{len(accepted)} runs accepted, {feeder.failed_calls} trigger calls failed\n"
                f"{summary.text}"
            )
            c = summary.counts
            assert c["lost"] == 0, c["lost_ids"]
            assert c["statuses"] == {"completed": len(accepted)}, c["statuses"]
            assert c["stuck"] == 0
            # Every worker stayed alive: nothing may have run twice.
            assert c["duplicates"] == 0, c["duplicates_by_cause"]
            assert c["overlaps"] == 0, c["overlap_ids"]
            assert max(rig.takeovers) <= TAKEOVER_BOUND, rig.takeovers
            assert max(rig.resumed) <= TAKEOVER_BOUND, rig.resumed
            assert {w["name"]: w["status"] for w in h.workers.values()} == {
                fleet.name(p): "active" for p in workers
            }
        finally:
            feeder.stop()
            fleet.close()
            rig.close()
            app.hw.close()
