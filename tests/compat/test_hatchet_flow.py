"""Concurrency limits with the unmodified hatchet-sdk as worker and client:
GROUP_ROUND_ROBIN (never more than ``max_runs`` of a key at once) and CANCEL_IN_PROGRESS
(the newest run wins; the older one ends CANCELLED and its body sees the cancellation)."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hewer.testing import EngineThread
from tests.compat._hatchet import hatchet_worker, run_client
from tests.compat.test_hatchet_sdk import pytestmark  # noqa: F401
from tests.helpers import wait_for

APP = Path(__file__).with_name("hatchet_flow_app.py")
WORKER = "flow-worker"


@pytest.fixture
def flow_worker(engine: EngineThread, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A hatchet-sdk worker with 12 slots: concurrency, not slots, limits what runs."""
    with hatchet_worker(engine, tmp_path, APP, WORKER, WORKER, "12") as proc:
        yield proc


def _peak(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    current = top = 0
    for _, delta in events:
        current += delta
        top = max(top, current)
    return top


def _gate_holders(engine: EngineThread) -> dict[Any, int]:
    scheduler = engine.engine.core.scheduler

    async def read() -> dict[Any, int]:
        await scheduler.slot_usage()
        return scheduler.gate_holders()

    return engine.call(read())


def test_concurrency_limits_with_hatchet_sdk(
    engine: EngineThread, flow_worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    out = run_client(engine, tmp_path, APP)

    # GROUP_ROUND_ROBIN, max_runs=2: never three of a key at once, though 12 slots were free;
    # the limit is reached, and every run ran.
    by_group: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in out["round_robin"]:
        by_group[row["group"]].append((row["start"], row["end"]))
    assert {g: len(rows) for g, rows in by_group.items()} == {"a": 6, "b": 3, "c": 3}
    peaks = {g: _peak(rows) for g, rows in by_group.items()}
    assert peaks == {"a": 2, "b": 2, "c": 2}, peaks

    # CANCEL_IN_PROGRESS: the newest run of key x won; the oldest ended CANCELLED and its
    # body saw ctx.is_cancelled; key y was untouched.
    assert out["newest"] == {"tag": "newest"}
    assert out["other"] == {"tag": "other"}
    assert "oldest" not in out, out
    assert "oldest_error" in out
    tenant = engine.engine.default_tenant_id
    core = engine.engine.core
    status = engine.call(core.run_details(tenant, out["run_ids"]["oldest"])).status
    assert str(status) == "cancelled"
    marker = tmp_path / "cancelled-oldest"
    wait_for(marker.exists, timeout=20, what="the cancelled body returned")
    assert json.loads(marker.read_text()) is True

    wait_for(lambda: _gate_holders(engine) == {}, timeout=20, what="no concurrency key held")
