"""Affinity, sticky assignment and manual slot release with the unmodified hatchet-sdk."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hewer.testing import EngineThread
from tests.compat.test_hatchet_sdk import hatchet_env, pytestmark  # noqa: F401
from tests.helpers import wait_for

APP = Path(__file__).with_name("hatchet_assignment_app.py")


@pytest.fixture
def two_workers(engine: EngineThread, tmp_path: Path) -> Iterator[dict[str, int]]:
    """A 'fancy' worker with 1 slot and a 'plain' one with 8; returns name -> pid."""
    procs = []
    for name, model, slots in (("fancy-worker", "fancy", "1"), ("plain-worker", "plain", "8")):
        log = (tmp_path / f"{name}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, str(APP), "worker", name, model, slots],
                env=hatchet_env(engine),
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()

    def registered() -> bool:
        workers = engine.call(engine.engine.store.workers_list())
        found = {w.name for w in workers if w.status == "active"}
        return {"fancy-worker", "plain-worker"} <= found

    try:
        wait_for(registered, timeout=60, what="both hatchet workers registered")
        yield {"fancy-worker": procs[0].pid, "plain-worker": procs[1].pid}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)


def test_affinity_sticky_and_slot_release_with_hatchet_sdk(
    engine: EngineThread, two_workers: dict[str, int], tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, str(APP), "client"],
        env=hatchet_env(engine),
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    out = json.loads(result.stdout.decode().strip().splitlines()[-1])
    fancy = two_workers["fancy-worker"]
    # Required label: only the fancy worker qualifies, though the plain one has more room.
    assert out["affinity"] == [fancy] * 4
    # HARD sticky: both tasks of each run on one worker; "first" prefers fancy, and "second"
    # would otherwise spread to the roomier plain worker.
    assert out["sticky_workers"] == [[fancy]] * 4
    # The released slot let "quick" start on the 1-slot fancy pool while "release" ran.
    assert out["quick_start"] < out["release_end"]
