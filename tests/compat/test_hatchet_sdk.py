"""The unmodified hatchet-sdk 1.43.1, as worker and as client, against our engine."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hewer.testing import EngineThread
from tests.helpers import scoped_token, wait_for

APP = Path(__file__).with_name("hatchet_app.py")


def _hatchet_installed() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", "import hatchet_sdk"], capture_output=True, check=False
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _hatchet_installed(), reason="hatchet-sdk not installed")


def hatchet_env(engine: EngineThread) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HATCHET_")}
    env.update(
        HATCHET_CLIENT_TOKEN=engine.token,
        HATCHET_CLIENT_HOST_PORT=engine.address,
        HATCHET_CLIENT_TLS_STRATEGY="none",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def hatchet_worker(engine: EngineThread, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp_path / "hatchet-worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(APP), "worker"],
        env=hatchet_env(engine),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: (
                any(
                    w.name == "compat-worker"
                    for w in engine.call(engine.engine.store.workers_list())
                )
                or proc.poll() is not None
            ),
            timeout=60,
            what="hatchet worker registration",
        )
        assert proc.poll() is None, (tmp_path / "hatchet-worker.log").read_text()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        log.close()


def run_client(env: dict[str, str], cwd: Path) -> dict[str, object]:
    """Run the hatchet-sdk client script; its last output line is a JSON summary."""
    result = subprocess.run(
        [sys.executable, str(APP), "client"],
        env=env,
        cwd=cwd,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    out = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert isinstance(out, dict)
    return out


def test_hatchet_worker_and_client_run_tasks_and_dags(
    engine: EngineThread, hatchet_worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    out = run_client(hatchet_env(engine), tmp_path)
    assert out["double"] == {"y": 42}
    assert out["dag"] == {"first": {"a": 2}, "second": {"b": 20}}
    assert "bad x 7" in out["fail"]
    assert out["no_wait"] == [{"y": 0}, {"y": 2}, {"y": 4}]
    assert out["aio_double"] == {"y": 10}
    assert out["aio_add"] == {"y": 101}
    assert out["aio_dag"] == {"first": {"a": 3}, "second": {"b": 30}}
    assert "bad x 3" in out["aio_fail"]


def test_hatchet_worker_leaves_on_sigterm(
    engine: EngineThread, hatchet_worker: subprocess.Popen[bytes]
) -> None:
    hatchet_worker.send_signal(signal.SIGTERM)
    assert hatchet_worker.wait(timeout=60) == 0

    # hatchet-sdk fires Unsubscribe without awaiting it, so the engine may see either the
    # unsubscribe (STOPPED) or only the silence (INACTIVE); never a worker left ACTIVE.
    def gone() -> bool:
        workers = engine.call(engine.engine.store.workers_list())
        return any(
            w.name == "compat-worker" and w.status in ("stopped", "inactive") for w in workers
        )

    wait_for(gone, timeout=30, what="worker no longer active after SIGTERM")


def test_hatchet_worker_sigterm_pause_call_succeeds(
    engine: EngineThread,
    hatchet_worker: subprocess.Popen[bytes],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hewer.engine.core")
    hatchet_worker.send_signal(signal.SIGTERM)
    assert hatchet_worker.wait(timeout=60) == 0
    log = (tmp_path / "hatchet-worker.log").read_text()
    # hatchet-sdk PATCHes /api/v1/workers/{id} {"isPaused": true} and parses the Worker JSON.
    assert "task assignment paused" in log, log[-4000:]
    assert "error while pausing" not in log and "timeout while pausing" not in log, log[-4000:]
    assert any("paused by request" in r.getMessage() for r in caplog.records)

    def gone() -> bool:
        workers = engine.call(engine.engine.store.workers_list())
        return any(
            w.name == "compat-worker" and w.status in ("stopped", "inactive") for w in workers
        )

    wait_for(gone, timeout=30, what="worker no longer active after SIGTERM")


def test_hatchet_worker_runs_with_a_worker_scoped_token(
    engine: EngineThread, tmp_path: Path
) -> None:
    from hewer.engine.core.scopes import Scope

    token = scoped_token(engine, Scope.WORKER, "hatchet-worker")
    log_path = tmp_path / "scoped-worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(APP), "worker"],
            env=dict(hatchet_env(engine), HATCHET_CLIENT_TOKEN=token),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: (
                any(
                    w.name == "compat-worker"
                    for w in engine.call(engine.engine.store.workers_list())
                )
                or proc.poll() is not None
            ),
            timeout=60,
            what="the scoped hatchet worker registered (its workflows too)",
        )
        assert proc.poll() is None, log_path.read_text()[-4000:]
        # Everything a hatchet-sdk worker calls is open to a worker token; the client
        # (admin token) triggers.
        out = run_client(hatchet_env(engine), tmp_path)
        assert out["double"] == {"y": 42}
        assert out["dag"] == {"first": {"a": 2}, "second": {"b": 20}}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        text = log_path.read_text()
        assert "task assignment paused" in text, text[-4000:]  # it pauses its own worker
        # Refusals as hatchet-sdk would log them (a bare "403" also matches timestamps).
        assert "PERMISSION_DENIED" not in text, text[-4000:]
        assert not re.search(r"\(403\)|403 Forbidden|Forbidden", text), text[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


ADMIN = Path(__file__).with_name("hatchet_admin.py")


def hatchet_admin(engine: EngineThread, tmp_path: Path, *args: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, str(ADMIN), *args],
        env=hatchet_env(engine),
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    parsed: dict[str, object] = json.loads(result.stdout.decode().strip().splitlines()[-1])
    return parsed


def test_hatchet_metrics_client_reads_task_stats_counts_queues_and_prometheus(
    engine: EngineThread, tmp_path: Path
) -> None:
    from hewer.domain import TaskDef
    from hewer.engine.core.service import TriggerSpec

    core = engine.engine.core
    tenant = engine.engine.default_tenant_id
    engine.call(core.put_workflow(tenant, "compat-stats", [TaskDef("s", "compat-stats:s")], None))
    engine.call(core.trigger(tenant, [TriggerSpec("compat-stats")] * 3))

    got = hatchet_admin(engine, tmp_path, "metrics")
    stats = got["task_stats"]["s"]  # type: ignore[index]
    assert stats["queued"]["total"] == 3 and stats["queued"]["queues"] == {"compat-stats:s": 3}
    assert stats["running"]["total"] == 0
    assert got["task_metrics"] == {
        "queued": 3,
        "running": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert got["queues"] == {"compat-stats:s": 3}
    assert f'hatchet_tenant_created_tasks_total{{tenant_id="{tenant}"}} 3.0' in str(
        got["prometheus"]
    )


def test_hatchet_rest_clients_list_pause_and_cancel(
    engine: EngineThread, hatchet_worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    from hewer.domain import TaskDef
    from hewer.engine.core.service import TriggerSpec

    core = engine.engine.core
    tenant = engine.engine.default_tenant_id
    listed = hatchet_admin(engine, tmp_path, "workers")
    assert [r["name"] for r in listed["rows"]] == ["compat-worker"]  # type: ignore[index]
    assert listed["paused"] == "PAUSED" and listed["unpaused"] == "ACTIVE"

    # Runs of a workflow no worker serves stay queued until cancelled.
    engine.call(core.put_workflow(tenant, "compat-parked", [TaskDef("p", "compat-parked:p")], None))
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    by_id, by_filter, untouched = engine.call(
        core.trigger(
            tenant,
            [
                TriggerSpec("compat-parked", additional_metadata='{"k": "a"}'),
                TriggerSpec("compat-parked", additional_metadata='{"k": "b"}'),
                TriggerSpec("compat-parked", additional_metadata='{"k": "c"}'),
            ],
        )
    )
    hatchet_admin(engine, tmp_path, "cancel", by_id)
    hatchet_admin(engine, tmp_path, "cancel-filter", since, "compat-parked", "k:b")

    def status(run_id: str) -> str:
        return str(engine.call(core.run_details(tenant, run_id)).status)

    assert [status(r) for r in (by_id, by_filter, untouched)] == [
        "cancelled",
        "cancelled",
        "queued",
    ]


def test_hatchet_runs_client_gets_runs_and_their_status(
    engine: EngineThread, hatchet_worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    from hewer.domain import TaskDef
    from hewer.engine.core.service import TriggerSpec

    core = engine.engine.core
    tenant = engine.engine.default_tenant_id
    done, failed = engine.call(
        core.trigger(
            tenant,
            [TriggerSpec("compat-dag", '{"x": 2}'), TriggerSpec("compat-fail", '{"x": 3}')],
        )
    )
    engine.call(core.put_workflow(tenant, "compat-idle", [TaskDef("i", "compat-idle:i")], None))
    (queued,) = engine.call(core.trigger(tenant, [TriggerSpec("compat-idle")]))

    def finished() -> bool:
        return all(engine.call(core.run_details(tenant, r)).done for r in (done, failed))

    wait_for(finished, timeout=30, what="the DAG and the failing task finished")
    out = hatchet_admin(engine, tmp_path, "runs", done, failed, queued)
    dag = out[done]
    assert dag["status"] == dag["run_status"] == "COMPLETED"  # type: ignore[index]
    assert dag["run_id"] == done and dag["display_name"] == "compat-dag"  # type: ignore[index]
    assert dag["input"] == {"x": 2}  # type: ignore[index]
    assert dag["output"] == {"first": {"a": 3}, "second": {"b": 30}}  # type: ignore[index]
    assert dag["tasks"] == [  # type: ignore[index]
        ["first", "COMPLETED", {"a": 3}, done],
        ["second", "COMPLETED", {"b": 30}, done],
    ]
    assert dag["shape"] == {"first": ["second"], "second": []}  # type: ignore[index]
    bad = out[failed]
    assert bad["status"] == "FAILED" and "bad x 3" in bad["error"]  # type: ignore[index]
    assert out[queued]["status"] == "QUEUED"  # type: ignore[index]
