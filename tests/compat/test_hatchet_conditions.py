"""Task conditions with the unmodified hatchet-sdk as worker and client
(``hatchet_condition_app.py``): a sleep, a user event (with an expression, in an or-group),
skip_if on a parent's output (the skipped task's children run and see it skipped), and
cancel_if on an event."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hewer.testing import EngineThread
from tests.compat._hatchet import hatchet_worker, run_client
from tests.compat.test_hatchet_sdk import pytestmark  # noqa: F401

APP = Path(__file__).with_name("hatchet_condition_app.py")
WORKER = "condition-worker"


@pytest.fixture
def condition_worker(engine: EngineThread, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with hatchet_worker(engine, tmp_path, APP, WORKER) as proc:
        yield proc


def test_conditions_with_hatchet_sdk(
    engine: EngineThread, condition_worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    out = run_client(engine, tmp_path, APP)
    res = out["result"]
    start = res["start"]["at"]
    # The sleep held its task for a second after the parent finished.
    assert res["after_sleep"]["at"] >= start + 1.0
    # skip_if on the parent's output: skipped (its output says so), the other one ran, and
    # their child ran, seeing which was skipped.
    assert res["skipped"] == {"skipped": True}
    assert res["not_skipped"] == {"ran": True}
    assert res["join"] == {"skipped_was_skipped": True, "other": False}
    # The wrong event did not release on_go; the right one did (long before its 30 s sleep).
    assert out["on_go_after_wrong_event"] == "QUEUED"
    assert out["pushed_go_at"] <= res["on_go"]["at"] < start + 20
    # cancel_if: the stop event cancelled the waiting task, and with it the run.
    assert "cancel" in out["cancel_error"].lower()
    tenant = engine.engine.default_tenant_id
    details = engine.call(engine.engine.core.run_details(tenant, out["cancel_run_id"]))
    assert str(details.status) == "cancelled"
    by_name = {t.readable_id: t for t in details.tasks}
    assert str(by_name["waits"].status) == "cancelled"
    assert by_name["waits"].error == "cancelled by its cancel_if condition"
