"""The admin side of the CLI as a user runs it: `hewer worker list|pause|resume`,
`hewer run cancel`, and the engine's HTTP API address, against real processes."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hewer import ClientSettings, Hewer
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
HEWER = [sys.executable, "-m", "hewer"]


@dataclass
class Cluster:
    env: dict[str, str]
    tmp: Path
    procs: list[subprocess.Popen[bytes]]

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"proc-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [*HEWER, *args], env=env or self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.procs.append(proc)
        return proc

    def hewer(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*HEWER, *args],
            env={**self.env, **env},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("proc-*.log")))

    @property
    def token(self) -> str:
        return (self.tmp / "state" / "token").read_text().strip()

    def claims(self) -> dict[str, Any]:
        payload = self.token.split(".")[1]
        claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
        return claims


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEWER_")}
    env.update(
        HEWER_STATE_DIR=str(tmp_path / "state"),
        HEWER_DATABASE=str(tmp_path / "hewer.db"),
        HEWER_PORT="0",
        HEWER_API_PORT="0",
        HEWER_HEARTBEAT_INTERVAL="0.2",
        HEWER_INACTIVE_AFTER="1.5",
        HEWER_GRACE_PERIOD="2",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(_base_env(tmp_path), tmp_path, [])
    engine = c.spawn("engine")
    wait_for(
        lambda: (tmp_path / "state" / "token").exists() or engine.poll() is not None,
        timeout=30,
        what="engine token file",
    )
    assert engine.poll() is None, c.logs()
    yield c
    _stop(c.procs)


def spawn_worker(c: Cluster, name: str, slots: int = 3) -> subprocess.Popen[bytes]:
    env = dict(c.env, HEWER_TEST_WORKER_NAME=name, HEWER_TEST_SLOTS=str(slots))
    proc = c.spawn("worker", "start", "tests.integration.app:make_worker", env=env)

    def listed() -> bool:
        assert proc.poll() is None, c.logs()
        result = c.hewer("worker", "list", "--json")
        return result.returncode == 0 and any(
            w["name"] == name and w["state"] == "ACTIVE" for w in json.loads(result.stdout)
        )

    wait_for(listed, timeout=30, interval=0.2, what=f"worker {name} listed ACTIVE")
    return proc


def worker_json(c: Cluster, name: str) -> dict[str, Any]:
    result = c.hewer("worker", "list", "--json")
    assert result.returncode == 0, result.stderr
    (found,) = [w for w in json.loads(result.stdout) if w["name"] == name]
    return found  # type: ignore[no-any-return]


def test_engine_serves_its_http_api_on_the_port_named_in_its_token(cluster: Cluster) -> None:
    server_url = cluster.claims()["server_url"]
    assert server_url.startswith("http://127.0.0.1:") and not server_url.endswith(":0")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(server_url + "/health", timeout=10) as response:
        assert json.loads(response.read()) == {"status": "ok"}
    assert f"HTTP API on {server_url}" in cluster.logs()


def test_worker_list_pause_resume(cluster: Cluster) -> None:
    spawn_worker(cluster, "cli-a", slots=3)
    table = cluster.hewer("worker", "list")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "STATE", "SLOTS", "LABELS", "LAST", "HEARTBEAT"]
    (row,) = [r for r in rows if r.startswith("cli-a ")]
    info = worker_json(cluster, "cli-a")
    assert row.split()[:4] == ["cli-a", info["id"], "ACTIVE", "0/3"]
    assert row.rstrip().endswith("ago")
    assert (info["slots_used"], info["slots_total"], info["connected"]) == (0, 3, True)
    assert info["last_heartbeat_at"].endswith("Z")

    paused = cluster.hewer("worker", "pause", info["id"])
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == f"worker cli-a ({info['id']}) is PAUSED"
    again = worker_json(cluster, "cli-a")
    assert (again["state"], again["status_reason"]) == ("PAUSED", "paused by request")
    only_paused = cluster.hewer("worker", "list", "--json", "--state", "paused")
    assert [w["name"] for w in json.loads(only_paused.stdout)] == ["cli-a"]

    # Triggered while the only worker is paused, the run goes through once it is resumed.
    run_id = cluster.hewer("run", "it-noop", "--input", '{"n": 1}', "--no-wait").stdout.strip()
    assert run_id
    resumed = cluster.hewer("worker", "resume", info["id"], "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["state"] == "ACTIVE"
    hw = Hewer(settings=ClientSettings(state_dir=cluster.tmp / "state"))
    try:
        assert hw.runs.ref(run_id).result()["it-noop"]["n"] == 1
    finally:
        hw.close()
    done = cluster.hewer("run", "it-noop", "--input", '{"n": 2}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["it-noop"]["n"] == 2


def test_run_cancel_by_ids_and_by_filter(cluster: Cluster) -> None:
    spawn_worker(cluster, "cli-c", slots=1)
    ids = []
    for _ in range(3):
        result = cluster.hewer("run", "it-slow", "--input", '{"seconds": 60}', "--no-wait")
        assert result.returncode == 0, result.stderr
        ids.append(result.stdout.strip())
    wait_for(
        lambda: worker_json(cluster, "cli-c")["slots_used"] == 1,
        timeout=30,
        interval=0.2,
        what="one task running",
    )
    # The two that wait for the only slot, by filter; then the running one, by id.
    queued = cluster.hewer(
        "run", "cancel", "--workflow", "it-slow", "--status", "queued", "--since", "10m"
    )
    assert queued.returncode == 0, queued.stderr
    assert len(queued.stdout.split()) == 2 and set(queued.stdout.split()) < set(ids)
    (running,) = set(ids) - set(queued.stdout.split())
    cancelled = cluster.hewer("run", "cancel", running)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.split() == [running]
    assert "cancelled 1 task(s)" in cancelled.stderr
    again = cluster.hewer("run", "cancel", *ids)
    assert again.returncode == 0 and again.stdout == ""
    assert "nothing to cancel" in again.stderr
    both = cluster.hewer("run", "cancel", ids[0], "--status", "queued")
    assert both.returncode == 2 and "not both" in both.stderr
    bad = cluster.hewer("run", "cancel", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "neither a duration" in bad.stderr


def test_admin_errors_are_one_clear_line(cluster: Cluster) -> None:
    cases = [
        (("worker", "pause", "no-such-worker"), {}, "not found"),
        (("worker", "resume", "no-such-worker"), {}, "not found"),
        (("worker", "list"), {"HEWER_SERVER_URL": "http://127.0.0.1:1"}, "cannot reach"),
        (("worker", "list"), {"HEWER_TOKEN": cluster.token[:-4] + "AAAA"}, "rejected the token"),
        (("run", "cancel", "x"), {"HEWER_TOKEN": cluster.token[:-4] + "AAAA"}, "rejected"),
    ]
    for args, env, expected in cases:
        result = cluster.hewer(*args, **env)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    usage = cluster.hewer("run", "cancel")
    assert usage.returncode == 2 and "give run ids" in usage.stderr


def test_engine_reports_a_busy_http_port_without_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = dict(_base_env(tmp_path), HEWER_API_PORT=str(port))
        result = subprocess.run(
            [*HEWER, "engine"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1
    assert f"could not bind the HTTP API to 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unusable_database_path_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    for database, words in (
        (tmp_path / "afile" / "x.db", "cannot create the directory of the database"),
        (tmp_path, "Is a directory"),
    ):
        env = dict(_base_env(tmp_path), HEWER_DATABASE=str(database))
        result = subprocess.run(
            [*HEWER, "engine"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1, result.stderr
        assert words in result.stderr and str(database) in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_listening_beyond_loopback_without_tls_is_warned_about(tmp_path: Path) -> None:
    env = dict(_base_env(tmp_path), HEWER_HOST="0.0.0.0")
    log = tmp_path / "engine.log"
    with log.open("wb") as out:
        engine = subprocess.Popen(
            [*HEWER, "engine"], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: "without TLS" in log.read_text(), timeout=30, what="the TLS warning")
        assert "listening beyond loopback (0.0.0.0)" in log.read_text()
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(timeout=30)


def test_admin_help_names_environment_variables() -> None:
    for command, variable in (
        (["engine"], "HEWER_API_PORT"),
        (["worker", "list"], "HEWER_SERVER_URL"),
        (["worker", "pause"], "HEWER_TOKEN"),
        (["worker", "resume"], "HEWER_TOKEN"),
        (["run", "cancel"], "HEWER_HOST_PORT"),
        (["run"], "HEWER_TOKEN"),
    ):
        out = subprocess.run(
            [*HEWER, *command, "--help"], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout
        assert f"env var: {variable}" in " ".join(out.split()), command


def test_a_second_sigterm_stops_the_engine_at_once(tmp_path: Path) -> None:
    # A connected worker keeps a stream open, so a graceful stop waits the whole grace.
    c = Cluster({**_base_env(tmp_path), "HEWER_SHUTDOWN_GRACE": "60s"}, tmp_path, [])
    engine = c.spawn("engine")
    try:
        wait_for(
            lambda: (tmp_path / "state" / "token").exists() or engine.poll() is not None,
            timeout=30,
            what="engine token file",
        )
        spawn_worker(c, "holds-a-stream")
        engine.send_signal(signal.SIGTERM)
        wait_for(lambda: "received SIGTERM: stopping" in c.logs(), what="first SIGTERM heard")
        assert engine.poll() is None, c.logs()  # still in its 60 s grace
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(timeout=10) == 1, c.logs()
        assert "second SIGTERM: exiting now" in c.logs()
    finally:
        _stop(c.procs)
