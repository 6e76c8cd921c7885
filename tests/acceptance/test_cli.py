"""The CLI as a user runs it: real `hewer engine`, `hewer worker`, `hewer run` processes."""

from __future__ import annotations

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

import pytest

from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
HEWER = [sys.executable, "-m", "hewer"]

DEV_APP = """
from hewer import Context, Hewer

VERSION = {version}
hw = Hewer()


@hw.task(name="version")
def version(input: dict, ctx: Context) -> dict:
    return {{"version": VERSION}}


worker = hw.worker("dev-worker", slots=2, workflows=[version])
"""


@dataclass
class Cluster:
    env: dict[str, str]
    tmp: Path
    procs: list[subprocess.Popen[bytes]]

    def spawn(self, *args: str, cwd: Path = REPO) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"proc-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [*HEWER, *args], env=self.env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.procs.append(proc)
        return proc

    def hewer(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*HEWER, *args],
            env=env or self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("proc-*.log")))


@pytest.fixture
def cluster(tmp_path: Path, database_url: str) -> Iterator[Cluster]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEWER_")}
    env.update(
        HEWER_STATE_DIR=str(tmp_path / "state"),
        HEWER_DATABASE_URL=database_url,
        HEWER_PORT="0",
        HEWER_API_PORT="0",
        HEWER_HEARTBEAT_INTERVAL="0.2",
        HEWER_INACTIVE_AFTER="1.5",
        PYTHONUNBUFFERED="1",
    )
    c = Cluster(env, tmp_path, [])
    engine = c.spawn("engine")
    wait_for(
        lambda: (tmp_path / "state" / "token").exists() or engine.poll() is not None,
        timeout=30,
        what="engine token file",
    )
    assert engine.poll() is None, c.logs()
    yield c
    for proc in reversed(c.procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in c.procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_until_ok(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """`hewer run ...`, retried while the worker has not registered the workflow yet."""
    last: list[subprocess.CompletedProcess[str]] = []

    def attempt() -> bool:
        result = c.hewer(*args)
        last[:] = [result]
        return result.returncode == 0

    wait_for(attempt, timeout=30, interval=0.2, what=f"hewer {' '.join(args)}")
    return last[0]


def test_engine_worker_and_run_through_the_cli(cluster: Cluster) -> None:
    worker = cluster.spawn("worker", "start", "tests.integration.app:make_worker")
    result = run_until_ok(cluster, "run", "it-noop", "--input", '{"n": 3}')
    output = json.loads(result.stdout)
    assert output["it-noop"]["n"] == 3
    assert output["it-noop"]["pid"] == worker.pid

    bad = cluster.hewer("run", "it-noop", "--input", "[1, 2")
    assert bad.returncode != 0 and "not valid JSON" in bad.stderr
    missing = cluster.hewer("run", "no-such-workflow")
    assert missing.returncode != 0 and "not found" in missing.stderr

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, cluster.logs()
    engine = cluster.procs[0]
    engine.send_signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0
    logs = cluster.logs()
    assert "hewer engine listening on 127.0.0.1:" in logs
    assert "acquired action listener" in logs


def test_token_create_mints_a_working_token_and_bad_tokens_are_refused(
    cluster: Cluster,
) -> None:
    cluster.spawn("worker", "start", "tests.integration.app:make_worker")
    run_until_ok(cluster, "run", "it-noop", "--input", '{"n": 1}')
    local_token = (cluster.tmp / "state" / "token").read_text().strip()
    address = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import jwt,sys,json;"
                "print(json.dumps(jwt.decode(sys.argv[1], options={'verify_signature': False})))",
                local_token,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["grpc_broadcast_address"]

    created = cluster.hewer("token", "create", "--name", "ci")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("ey") and token != local_token

    env = dict(cluster.env, HEWER_TOKEN=token, HEWER_HOST_PORT=address)
    env["HEWER_STATE_DIR"] = str(cluster.tmp / "elsewhere")  # no local token to fall back on
    ok = cluster.hewer("run", "it-noop", "--input", '{"n": 2}', env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["it-noop"]["n"] == 2

    forged = cluster.hewer("run", "it-noop", env=dict(env, HEWER_TOKEN=token[:-4] + "AAAA"))
    assert forged.returncode != 0 and "invalid auth token" in forged.stderr

    # `token inspect` names the tenant (the Task Stats URL needs its id) and the addresses
    # (those of the running engine's own token: this one was minted offline).
    inspected = cluster.hewer("token", "inspect", token)
    assert inspected.returncode == 0, inspected.stderr
    shown = json.loads(inspected.stdout)
    local = json.loads(cluster.hewer("token", "inspect", local_token).stdout)
    assert local["grpc_address"] == address and shown["tenant_id"] == local["tenant_id"]
    assert shown["expires_at"].endswith("Z") and shown["token_id"] != local["token_id"]
    stats = urllib.request.Request(
        f"{local['server_url']}/api/v1/tenants/{shown['tenant_id']}/task-stats",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(stats) as answer:
        assert answer.status == 200
    bad = cluster.hewer("token", "inspect", "not-a-token")
    assert bad.returncode == 1 and "not a Hewer token" in bad.stderr

    # A read-only token reads but cannot start anything.
    read = cluster.hewer("token", "create", "--scope", "read").stdout.strip()
    assert json.loads(cluster.hewer("token", "inspect", read).stdout)["scope"] == "read"
    assert shown["scope"] == "admin"
    read_env = dict(env, HEWER_TOKEN=read, HEWER_SERVER_URL=local["server_url"])
    listed = cluster.hewer("worker", "list", "--json", env=read_env)
    assert listed.returncode == 0, listed.stderr
    denied = cluster.hewer("run", "it-noop", env=read_env)
    assert denied.returncode != 0 and "may not call" in denied.stderr


def test_engine_refuses_to_start_on_an_unreachable_database(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEWER_")}
    env.update(HEWER_STATE_DIR=str(tmp_path / "state"), HEWER_PORT="0", HEWER_API_PORT="0")
    url = f"postgresql://postgres:s3cret@127.0.0.1:{port}/hewer"
    result = subprocess.run(
        [*HEWER, "engine", "--database-url", url],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "cannot start the engine" in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_help_names_environment_variables() -> None:
    for command in (
        ["engine"],
        ["worker", "start"],
        ["worker", "dev"],
        ["run"],
        ["token", "create"],
    ):
        out = subprocess.run(
            [*HEWER, *command, "--help"], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout
        assert "env var: HEWER_" in out, command


def test_worker_dev_restarts_on_code_change(cluster: Cluster) -> None:
    app_dir = cluster.tmp / "devapp"
    app_dir.mkdir()
    module = app_dir / "devapp_module.py"
    module.write_text(DEV_APP.format(version=1))
    cluster.spawn("worker", "dev", "devapp_module:worker", cwd=app_dir)
    first = run_until_ok(cluster, "run", "version")
    assert json.loads(first.stdout) == {"version": {"version": 1}}

    module.write_text(DEV_APP.format(version=2))

    def reloaded() -> bool:
        result = cluster.hewer("run", "version")
        return result.returncode == 0 and json.loads(result.stdout)["version"]["version"] == 2

    wait_for(reloaded, timeout=60, interval=0.3, what="worker restarted with new code")


def test_worker_started_before_the_engine_waits_for_it(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEWER_")}
    env.update(
        HEWER_DATABASE=str(tmp_path / "hewer.db"),
        HEWER_STATE_DIR=str(tmp_path / "state"),
        HEWER_PORT=str(port),
        HEWER_API_PORT="0",
        HEWER_HEARTBEAT_INTERVAL="0.2",
        PYTHONUNBUFFERED="1",
    )
    c = Cluster(env, tmp_path, [])
    minted = c.hewer("token", "create")
    assert minted.returncode == 0, minted.stderr
    c.env["HEWER_TOKEN"] = minted.stdout.strip()
    try:
        worker = c.spawn("worker", "start", "tests.integration.app:make_worker")
        wait_for(lambda: "engine not reachable" in c.logs(), timeout=30, what="worker waiting")
        assert worker.poll() is None
        c.spawn("engine")
        result = run_until_ok(c, "run", "it-noop", "--input", '{"n": 5}')
        assert json.loads(result.stdout)["it-noop"]["pid"] == worker.pid
    finally:
        for proc in reversed(c.procs):
            proc.send_signal(signal.SIGTERM)
        for proc in c.procs:
            proc.wait(timeout=30)
