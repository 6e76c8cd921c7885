"""Crons and scheduled runs with several engine replicas over one PostgreSQL database:
only the replica holding the scheduling lease fires them, and each fire is fenced on its
row in the transaction that creates its run. ``kill -9`` the holder twice and SIGSTOP it
past its lease once: every scheduled run fires exactly once, no cron tick gives two runs,
and the cron goes on ticking under each new holder."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hewer import Context, Hewer
from tests.fault.test_trigger_kills import _register, _state
from tests.helpers import wait_for
from tests.pg import fresh_database_sync
from tests.replicas.test_failover import Rig

SCHEDULED = 10


@pytest.mark.slow
def test_crons_and_schedules_fire_once_across_replica_failures(tmp_path: Path) -> None:
    with fresh_database_sync() as database:
        rig = Rig(tmp_path, database)
        rig.replicas = rig.replicas[:2]
        try:
            for r in rig.replicas:
                r.start()
            wait_for(lambda: rig.holder() is not None, timeout=30, what="a lease holder")
            token = (rig.replicas[0].state / "token").read_text().strip()
            hw = Hewer(token=token, host_port=rig.addresses)
            ticker = hw.workflow("failover-ticker", on_crons=["* * * * * *"])

            @ticker.task()
            def tick(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
                return {}

            later = hw.workflow("failover-later")

            @later.task()
            def run_later(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
                return {}

            _register(hw, ticker)
            _register(hw, later)
            start = datetime.now(UTC)
            times = [start + timedelta(seconds=1 + i) for i in range(SCHEDULED)]
            later.schedule(times, {})
            first = time.time()

            for how in ("kill", "stop", "kill"):
                holder = rig.holder()
                assert holder is not None
                victim = rig.by_name(holder[0])
                began = time.monotonic()
                if how == "kill":
                    victim.signal(signal.SIGKILL)
                else:
                    victim.signal(signal.SIGSTOP)
                wait_for(
                    lambda h=holder: (n := rig.holder()) is not None and n[1] > h[1],
                    timeout=30,
                    interval=0.05,
                    what="another term of scheduling",
                )
                rig.takeovers.append(time.monotonic() - began)
                taken = time.time()
                # The new holder ticks on: two cron runs after the takeover.
                wait_for(
                    lambda t=taken: (
                        sum(
                            r.created_at > t
                            for r in _state(database)[0]
                            if r.triggered_by == "cron"
                        )
                        >= 2
                    ),
                    timeout=20,
                    what="cron runs under the new holder",
                )
                if how == "kill":
                    victim.start()
                else:
                    victim.signal(signal.SIGCONT)  # its stale commits must be refused
            last = times[-1].timestamp() + 2.0
            wait_for(lambda: time.time() > last, timeout=60, what="past the last schedule")
            wait_for(
                lambda: all(s.run_id for s in _state(database)[1]),
                timeout=30,
                what="every scheduled run fired",
            )
            end = time.time()
            hw.close()
        finally:
            rig.close()
        runs, schedules = _state(database)
        fired = [r for r in runs if r.triggered_by == "schedule"]
        assert len(fired) == SCHEDULED
        assert sorted(s.run_id or "" for s in schedules) == sorted(r.id for r in fired)
        ticks = [r.created_at for r in runs if r.triggered_by == "cron"]
        elapsed = int(end) - int(first) + 1
        assert len(ticks) <= elapsed, (len(ticks), elapsed)
        print(
            f"\n[triggers] takeovers {', '.join(f'{t:.1f}' for t in rig.takeovers)} s; "
            f"{len(ticks)} cron runs in {elapsed} ticks; {len(fired)} scheduled runs"
        )
