"""The unmodified hatchet-sdk against two engine replicas over one PostgreSQL database:
its worker on the replica that does not schedule (every call relayed), its client given
both addresses as gRPC's own multi-address target."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hewer.testing import EngineThread
from tests.compat.conftest import HATCHET_INACTIVE_AFTER
from tests.compat.test_hatchet_sdk import APP, pytestmark, run_client  # noqa: F401
from tests.helpers import wait_for
from tests.pg import fresh_database_sync


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[EngineThread, EngineThread]]:
    with fresh_database_sync() as url:
        engines = [
            EngineThread(
                tmp_path / name,
                database_url=url,
                inactive_after=HATCHET_INACTIVE_AFTER,
                lease_ttl=1.0,
                replica_id=name,
            ).start()
            for name in ("a", "b")
        ]
        try:
            yield engines[0], engines[1]
        finally:
            for e in reversed(engines):
                e.stop()


def env_for(engine: EngineThread, host_port: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HATCHET_")}
    env.update(
        HATCHET_CLIENT_TOKEN=engine.token,
        HATCHET_CLIENT_HOST_PORT=host_port,
        HATCHET_CLIENT_TLS_STRATEGY="none",
        PYTHONUNBUFFERED="1",
    )
    return env


def test_hatchet_worker_on_a_relaying_replica_and_a_client_given_both(
    replicas: tuple[EngineThread, EngineThread], tmp_path: Path
) -> None:
    a, b = replicas
    assert a.engine.scheduling and not b.engine.scheduling
    log = (tmp_path / "hatchet-worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, str(APP), "worker"],
        env=env_for(b, b.address),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: (
                any(w.name == "compat-worker" for w in a.call(a.engine.store.workers_list()))
                or worker.poll() is not None
            ),
            timeout=60,
            what="hatchet worker registration through the relay",
        )
        assert worker.poll() is None, (tmp_path / "hatchet-worker.log").read_text()
        both = f"ipv4:{a.address},{b.address}"
        out = run_client(env_for(b, both), tmp_path)
        assert out["double"] == {"y": 42}
        assert out["dag"] == {"first": {"a": 2}, "second": {"b": 20}}
        assert out["no_wait"] == [{"y": 0}, {"y": 2}, {"y": 4}]
        assert out["aio_dag"] == {"first": {"a": 3}, "second": {"b": 30}}
        assert b.engine.relay is not None and b.engine.relay.relayed > 0
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait(timeout=30)
        log.close()
