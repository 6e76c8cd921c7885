from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hewer import Hewer, Worker
from hewer.testing import EngineThread
from tests.conftest import HEARTBEAT
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]

WorkerFactory = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn_worker(engine: EngineThread, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start ``hewer worker start tests.integration.app:make_worker`` processes."""
    procs: list[subprocess.Popen[bytes]] = []
    log_dir = tmp_path / "executions"
    log_dir.mkdir()

    def spawn(
        name: str,
        slots: int = 5,
        wait: bool = True,
        grace_period: float = 5,
        app: str = "tests.integration.app:make_worker",
    ) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(
            HEWER_TOKEN=engine.token,
            HEWER_HOST_PORT=engine.address,
            HEWER_HEARTBEAT_INTERVAL=str(HEARTBEAT),
            HEWER_GRACE_PERIOD=str(grace_period),
            HEWER_TEST_LOG_DIR=str(log_dir),
            HEWER_TEST_WORKER_NAME=name,
            HEWER_TEST_SLOTS=str(slots),
            PYTHONUNBUFFERED="1",
        )
        out = (tmp_path / f"worker-{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "hewer", "worker", "start", app],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        procs.append(proc)
        if wait:
            wait_for(
                lambda: (
                    proc.poll() is not None
                    or any(
                        w.name == name and w.status == "active"
                        for w in engine.call(engine.engine.store.workers_list())
                    )
                ),
                timeout=30,
                what=f"worker {name} registered",
            )
            assert proc.poll() is None, (tmp_path / f"worker-{name}.log").read_text()
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


@pytest.fixture
def client(engine: EngineThread) -> Iterator[Hewer]:
    """An SDK client bound to the test engine."""
    hw = Hewer(settings=engine.client_settings(heartbeat_interval=HEARTBEAT, grace_period=5))
    yield hw
    hw.close()


@pytest.fixture
def in_process_worker() -> Iterator[Callable[..., Worker]]:
    """Start workers on background threads; each is stopped gracefully at the end."""
    running: list[tuple[Worker, threading.Thread]] = []

    def start(hw: Hewer, workflows: list[object], slots: int = 5, name: str = "w") -> Worker:
        worker = hw.worker(name, slots=slots, workflows=workflows)  # type: ignore[arg-type]
        thread = threading.Thread(target=worker.start, name=f"worker-{name}", daemon=True)
        thread.start()
        assert worker.ready.wait(20), "worker did not become ready"
        running.append((worker, thread))
        return worker

    yield start
    for worker, thread in running:
        worker.stop()
        thread.join(timeout=20)
        assert not thread.is_alive(), "worker did not stop"


@pytest.fixture
def app(engine: EngineThread, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``tests.integration.app``, imported with its client pointed at the test engine."""
    monkeypatch.setenv("HEWER_TOKEN", engine.token)
    monkeypatch.setenv("HEWER_HOST_PORT", engine.address)
    from tests.integration import app as module

    return importlib.reload(module)
