"""Crons and scheduled runs across ``kill -9`` of the engine (SQLite and PostgreSQL).

The engine runs as ``python -m hewer engine`` and is killed at random moments (also
between a due tick and its run: both are one transaction) and kept down long enough that
ticks and scheduled runs fall due meanwhile. Afterwards every scheduled run fired exactly
once, none was fired twice, and no cron tick gave two runs: a cron fires at most once per
tick, and once (late) for the ticks it missed while no engine ran.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hewer import Context, Hewer
from hewer.domain import RunRow, ScheduleRecord
from hewer.sdk import _wire
from tests.fault.snapshot import StoreReader
from tests.fault.test_engine_kills import EngineProcess
from tests.helpers import wait_for

KILLS = 4
UPTIME = (0.5, 1.5)  # seconds the engine runs between kills
DOWNTIME = 1.3  # seconds it stays down: at least one tick falls due meanwhile
SCHEDULED = 8
SEED = 7


def _register(hw: Hewer, workflow: Any) -> None:
    pool = hw._pool
    stub = _wire.admin_stub(pool.sync())
    stub.PutWorkflow(workflow.put_request(), metadata=pool.metadata, timeout=10)


def _state(db: str) -> tuple[list[RunRow], list[ScheduleRecord]]:
    with StoreReader(db) as reader:
        runs = reader.call(reader.store.runs_list())
        tenant = runs[0].tenant_id if runs else None
        schedules = (
            reader.call(reader.store.schedules_list(tenant, None, 1000, 0)) if tenant else []
        )
    return runs, schedules


def test_crons_and_scheduled_runs_fire_once_across_engine_kills(
    tmp_path: Path, database_url: str
) -> None:
    rng = random.Random(SEED)
    engine = EngineProcess(tmp_path, database_url)
    engine.start()
    hw = Hewer(token=engine.token(), host_port=engine.address)
    ticker = hw.workflow("kill-ticker", on_crons=["* * * * * *"])

    @ticker.task()
    def tick(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {}

    later = hw.workflow("kill-later")

    @later.task()
    def run_later(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {}

    try:
        _register(hw, ticker)
        _register(hw, later)
        start = datetime.now(UTC)
        times = [start + timedelta(seconds=1 + 0.7 * i) for i in range(SCHEDULED)]
        scheduled = later.schedule(times, {"n": 1})
        assert len(scheduled) == SCHEDULED
        first_tick = time.time()
        outages: list[tuple[float, float]] = []
        for _ in range(KILLS):
            time.sleep(rng.uniform(*UPTIME))  # the engine's uptime: fault pacing
            engine.kill()
            down = time.time()
            time.sleep(DOWNTIME)  # ticks and scheduled runs fall due with no engine up
            engine.start()
            outages.append((down, time.time()))
        last = max(times[-1].timestamp() + 1.0, outages[-1][1] + 3.0)
        wait_for(lambda: time.time() > last, timeout=30, what="past the last schedule")
        wait_for(
            lambda: all(s.run_id for s in _state(engine.db)[1]),
            timeout=30,
            what="every scheduled run fired",
        )
        end = time.time()
    finally:
        hw.close()
        engine.stop()

    runs, schedules = _state(engine.db)
    # Each scheduled run fired once: its own run, none twice, none lost.
    fired = [r for r in runs if r.triggered_by == "schedule"]
    assert len(fired) == SCHEDULED
    assert sorted(s.run_id or "" for s in schedules) == sorted(r.id for r in fired)
    for s in schedules:
        run = next(r for r in fired if r.id == s.run_id)
        assert run.created_at >= s.trigger_at  # never early
    # The cron: no more runs than ticks went by (a tick fired twice would exceed it), and
    # it kept ticking through every restart.
    ticks = sorted(r.created_at for r in runs if r.triggered_by == "cron")
    elapsed_ticks = int(end) - int(first_tick) + 1
    assert len(ticks) <= elapsed_ticks, (len(ticks), elapsed_ticks)
    for _, up in outages:
        assert any(up <= t <= up + 3.0 for t in ticks), ("no tick after a restart", up, ticks)
    down_total = sum(b - a for a, b in outages)
    # While up it fires every second; each outage costs its missed ticks but one.
    assert len(ticks) >= elapsed_ticks - down_total - 2 * KILLS - 2, (len(ticks), elapsed_ticks)


pytestmark = pytest.mark.slow
