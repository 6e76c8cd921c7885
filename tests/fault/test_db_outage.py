"""Fault 10 (reliability E6): PostgreSQL goes away under a running engine.

The engine reaches its database through a TCP proxy (``tests/netproxy.py``), so the link
can be cut as a dropped route would cut it (bytes wait, nothing errors), or the real server
is restarted (``-m fast``, ``-m immediate``). Two workers run short tasks and a client keeps
triggering runs throughout. Meanwhile the engine must answer: gRPC ``UNAVAILABLE`` and REST
503 with ``Retry-After`` (never a 500, never a hang), and nobody restarts it. Once the
database is back, dispatch resumes within 15 s, every accepted run completes, and no worker
was declared INACTIVE because its heartbeats could not be written.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest

from hewer._proto import workflows_pb2_grpc as wg
from hewer._proto.v1.shared import trigger_pb2 as tr
from hewer.engine.api.ops import READY_TIMEOUT_S
from hewer.store.postgres import COMMAND_TIMEOUT_S
from hewer.testing import EngineThread
from tests.conftest import HEARTBEAT, INACTIVE_AFTER
from tests.fault.conftest import Fleet, engine_fleet, history, load_app, runs_done
from tests.helpers import wait_for
from tests.netproxy import Proxy, proxy
from tests.pg import fresh_database_sync

WORKERS = 2
SLOTS = 5
TRIGGER_EVERY = 0.02
# What the reference asks: dispatch resumes at most this long after the database is back.
RESUME_WITHIN = 15.0
# An answer during the outage must come at least this fast (no hang), error or not.
ANSWER_WITHIN = 12.0
PG_CLUSTER = "main"


def _pg_version() -> str:
    return sorted(os.listdir("/etc/postgresql"))[-1]


def restart_server(mode: str) -> None:
    subprocess.run(
        [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            _pg_version(),
            PG_CLUSTER,
            "restart",
            "-m",
            mode,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host}:{port}"))


@dataclass
class Feeder:
    """Triggers a short run every ``TRIGGER_EVERY`` seconds; records what was accepted."""

    app: ModuleType
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Feeder:
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ref = self.app.short.run_no_wait(self.app.Work(seconds=0.02))
            except Exception as exc:  # refused during the outage: not accepted, not owed
                self.refused.append(type(exc).__name__)
            else:
                self.accepted.append(ref.run_id)
            self._stop.wait(TRIGGER_EVERY)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)


@dataclass
class Probe:
    """Asks the engine over REST and raw gRPC, over and over, what it says and how fast."""

    engine: EngineThread
    rest: list[tuple[float, int, str | None, float]] = field(default_factory=list)
    grpc_codes: list[tuple[float, str, float]] = field(default_factory=list)
    triggered: list[str] = field(default_factory=list)  # runs its triggers got accepted
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Probe:
        for target in (self._rest, self._grpc):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _rest(self) -> None:
        tenant = self.engine.engine.default_tenant_id
        url = f"{self.engine.api_url}/api/v1/tenants/{tenant}/worker"
        headers = {"Authorization": f"Bearer {self.engine.token}"}
        while not self._stop.is_set():
            began = time.monotonic()
            request = urllib.request.Request(url, headers=headers)
            status: int
            retry_after: str | None
            try:
                with urllib.request.urlopen(request, timeout=60) as r:
                    status, retry_after = r.status, r.headers.get("retry-after")
            except urllib.error.HTTPError as exc:
                status, retry_after = exc.code, exc.headers.get("retry-after")
            except OSError:
                status, retry_after = -1, None
            self.rest.append((began, status, retry_after, time.monotonic() - began))
            self._stop.wait(0.2)

    def _grpc(self) -> None:
        channel = grpc.insecure_channel(self.engine.address)
        stub = wg.WorkflowServiceStub(channel)
        md = [("authorization", f"bearer {self.engine.token}")]
        request = tr.TriggerWorkflowRequest(name="fault-short", input='{"seconds": 0}')
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    reply = stub.TriggerWorkflow(request, metadata=md, timeout=60)
                    self.triggered.append(reply.workflow_run_id)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                self.grpc_codes.append((began, code, time.monotonic() - began))
                self._stop.wait(0.2)
        finally:
            channel.close()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)


@dataclass
class Rig:
    engine: EngineThread
    link: Proxy
    fleet: Fleet
    app: ModuleType


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    with fresh_database_sync() as url:
        upstream = urlsplit(url)
        with (
            proxy(upstream.hostname or "127.0.0.1", upstream.port or 5432) as link,
            EngineThread(
                tmp_path,
                database_url=through(url, link.port),
                heartbeat_interval=HEARTBEAT,
                inactive_after=INACTIVE_AFTER,
            ) as engine,
        ):
            app = load_app(engine.token, engine.address, monkeypatch)
            fleet = engine_fleet(engine, tmp_path)
            try:
                for _ in range(WORKERS):
                    fleet.spawn("o", SLOTS)
                yield Rig(engine, link, fleet, app)
            finally:
                fleet.close()
                app.hw.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "outage", ["restart-fast", "restart-immediate", "block-5s", "block-60s"]
)
def test_engine_rides_out_a_database_outage(rig: Rig, outage: str) -> None:
    engine, app = rig.engine, rig.app
    feeder = Feeder(app).start()
    wait_for(lambda: len(feeder.accepted) >= 50, timeout=30, what="runs flowing")
    probe = Probe(engine).start()
    time.sleep(1.0)  # the pace of the scenario: a second of normal traffic on record
    began = time.monotonic()
    seconds = 0.0
    if outage.startswith("restart-"):
        restart_server(outage.removeprefix("restart-"))
    else:
        rig.link.block()
        seconds = float(outage.removeprefix("block-").removesuffix("s"))
        if seconds > 2 * READY_TIMEOUT_S:
            # Readiness says so while the database does not answer (a probe takes up to
            # READY_TIMEOUT_S to give up), so an orchestrator stops routing to it.
            wait_for(lambda: ready_status(engine) == 503, timeout=3 * READY_TIMEOUT_S,
                     interval=0.2, what="/ready answering 503 during the outage")  # fmt: skip
        time.sleep(max(0.0, began + seconds - time.monotonic()))
        rig.link.unblock()
    back = time.monotonic()
    if seconds > 2 * READY_TIMEOUT_S:
        wait_for(lambda: ready_status(engine) == 200, timeout=3 * READY_TIMEOUT_S,
                 interval=0.2, what="/ready answering 200 once it is back")  # fmt: skip

    # Dispatch resumes: a new run goes all the way through soon after the database is back.
    probes: list[str] = []

    def resumed() -> bool:
        try:
            ref = app.short.run_no_wait(app.Work(seconds=0))
        except Exception:  # still refused: not back yet
            return False
        probes.append(ref.run_id)
        return wait_for_done(engine, ref.run_id, until=back + RESUME_WITHIN)

    wait_for(resumed, timeout=RESUME_WITHIN + 5, interval=0.2, what="dispatch resumed")
    resumed_after = time.monotonic() - back
    time.sleep(1.0)  # the pace of the scenario: traffic after the outage, on record
    feeder.stop()
    probe.stop()

    accepted = feeder.accepted + probe.triggered + probes
    wait_for(lambda: runs_done(engine, accepted), timeout=120, what="every accepted run done")
    summary = history(engine, rig.fleet, accepted).summary()
    c = summary.counts
    during = [r for r in probe.rest if began <= r[0] <= back]
    print(
        f"\n[fault 10 {outage}] outage {back - began:.1f}s, dispatch resumed "
        f"{resumed_after:.1f}s after; {len(accepted)} accepted, {len(feeder.refused)} refused; "
        f"REST during: {sorted({r[1] for r in during})}; gRPC: "
        f"{sorted({g[1] for g in probe.grpc_codes})}\n{summary.text}"
    )
    assert resumed_after <= RESUME_WITHIN
    assert c["lost"] == 0, c["lost_ids"]
    assert c["statuses"] == {"completed": len(accepted)}, c["statuses"]
    assert c["overlaps"] == 0, c["overlap_ids"]
    assert not any(c["duplicates_by_cause"].values()), c["duplicates_by_cause"]
    # Never a 500, never a hang; REST says 503 + Retry-After, gRPC UNAVAILABLE, or answers.
    assert probe.rest and probe.grpc_codes
    for _, status, retry_after, took in probe.rest:
        assert status in (200, 503), probe.rest
        assert took <= ANSWER_WITHIN, probe.rest
        if status == 503:
            assert retry_after is not None and int(retry_after) > 0
    for _, code, took in probe.grpc_codes:
        assert code in ("OK", "UNAVAILABLE"), probe.grpc_codes
        assert took <= ANSWER_WITHIN, probe.grpc_codes
    if outage.startswith("block-") and back - began > 2 * COMMAND_TIMEOUT_S:
        # Longer than the store waits for an answer: the engine must have said so.
        assert any(r[1] == 503 for r in during), during
        assert any(g[1] == "UNAVAILABLE" for g in probe.grpc_codes if began <= g[0] <= back)
    # Heartbeats that could not be written did not make anyone INACTIVE.
    workers = engine.call(engine.engine.store.workers_list())
    assert len(workers) == WORKERS, [(w.name, w.status) for w in workers]  # none came anew
    assert {str(w.status) for w in workers} == {"active"}, [
        (w.name, w.status, w.status_reason) for w in workers
    ]


def ready_status(engine: EngineThread) -> int:
    try:
        with urllib.request.urlopen(f"{engine.api_url}/ready", timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def wait_for_done(engine: EngineThread, run_id: str, until: float) -> bool:
    while time.monotonic() < until:
        if runs_done(engine, [run_id]):
            return True
        time.sleep(0.05)
    return False
