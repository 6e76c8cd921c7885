"""`hewer worker start --autoscale MIN:MAX` with real processes: a supervisor that grows
the number of worker processes while the queue stays full and retires them when idle, and
gives up on children that cannot start."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import jwt

from tests.acceptance.test_cli import HEWER, REPO, Cluster, cluster
from tests.helpers import wait_for

__all__ = ["cluster"]  # the fixture, imported for this module's tests

APP = """
import asyncio
import os
import pathlib

from hewer import Context, Hewer

RELEASE = pathlib.Path(os.environ["AUTOSCALE_RELEASE"])
hw = Hewer()


@hw.task(name="scaled")
async def scaled(input: dict, ctx: Context) -> dict:
    while not RELEASE.exists():  # held until the test lets every task finish
        await asyncio.sleep(0.02)
    return {"pid": os.getpid()}


worker = hw.worker("scaled-worker", slots=2, workflows=[scaled])
"""

FAST = [
    "--autoscale-interval",
    "0.1s",
    "--autoscale-up-after",
    "0.4s",
    "--autoscale-idle-after",
    "0.8s",
]


def _api(c: Cluster) -> tuple[str, str, str]:
    token = (c.tmp / "state" / "token").read_text().strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    return str(claims["server_url"]), str(claims["sub"]), token


def workers(c: Cluster) -> list[dict[str, Any]]:
    url, tenant, token = _api(c)
    request = urllib.request.Request(
        f"{url}/api/v1/tenants/{tenant}/worker", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request) as answer:
        rows: list[dict[str, Any]] = json.loads(answer.read())["rows"] or []
    return [w for w in rows if w["name"] == "scaled-worker"]


def active(c: Cluster) -> int:
    return sum(w.get("state") == "ACTIVE" for w in workers(c))


def _app(c: Cluster) -> Path:
    app_dir = c.tmp / "app"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(APP)
    c.env["AUTOSCALE_RELEASE"] = str(c.tmp / "release")
    return app_dir


def test_the_supervisor_adds_workers_while_the_queue_is_full_and_retires_them_when_idle(
    cluster: Cluster,
) -> None:
    app_dir = _app(cluster)
    supervisor = cluster.spawn(
        "worker", "start", "app:worker", "--autoscale", "1:3", "--autoscale-threshold", "0",
        *FAST, cwd=app_dir,
    )  # fmt: skip
    wait_for(lambda: active(cluster) == 1, timeout=30, what="the minimum of one worker")

    # Eight held tasks for 2-slot workers: the queue stays full, so workers are added one at
    # a time up to the maximum, never beyond it.
    trigger = (
        "import json, sys\n"
        "from hewer import Hewer\n"
        "hw = Hewer()\n"
        "refs = [hw.runs.trigger('scaled', {}) for _ in range(8)]\n"
        "print(json.dumps([r.run_id for r in refs]), flush=True)\n"
        "print(json.dumps(sorted({r.result()['scaled']['pid'] for r in refs})))\n"
    )
    waiter = subprocess.Popen(
        [sys.executable, "-c", trigger],
        env=cluster.env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiter.stdout is not None
        assert len(json.loads(waiter.stdout.readline())) == 8
        seen: list[int] = []

        def three() -> bool:
            seen.append(active(cluster))
            return seen[-1] == 3

        wait_for(three, timeout=60, what="three workers for a full queue")
        assert max(seen) <= 3

        # Released, the tasks finish on the three processes; idle, two are retired.
        (cluster.tmp / "release").write_text("go")
        out, _ = waiter.communicate(timeout=60)
        assert waiter.returncode == 0
        pids = json.loads(out.strip().splitlines()[-1])
        assert len(pids) == 3 and supervisor.pid not in pids
    finally:
        if waiter.poll() is None:
            waiter.kill()
    wait_for(lambda: active(cluster) == 1, timeout=60, what="back to the minimum when idle")
    stopped = [w for w in workers(cluster) if w.get("state") == "STOPPED"]
    assert len(stopped) == 2  # retired gracefully (SIGTERM), not lost

    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=60) == 0, cluster.logs()
    wait_for(lambda: active(cluster) == 0, timeout=30, what="every child stopped with it")
    logs = cluster.logs()
    assert logs.count("autoscale: started worker") == 3
    assert logs.count("autoscale: retiring worker") == 2


def test_children_that_keep_failing_stop_the_supervisor(cluster: Cluster) -> None:
    app_dir = _app(cluster)
    with socket.socket() as busy:  # every child's health port is taken: each exits at start
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        supervisor = cluster.spawn(
            "worker", "start", "app:worker", "--autoscale", "1:1",
            "--healthcheck-port", str(port), *FAST, cwd=app_dir,
        )  # fmt: skip
        assert supervisor.wait(timeout=120) == 1
    logs = cluster.logs()
    assert "workers in a row exited" in logs and "giving up" in logs


def test_a_bad_range_is_refused_before_anything_starts(tmp_path: Path) -> None:
    for bad in ("3:1", "x", "0:0", "-1:2"):
        result = subprocess.run(
            [*HEWER, "worker", "start", "app:worker", "--autoscale", bad],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, (bad, result.stderr)
        assert "--autoscale" in result.stderr and "MIN" in result.stderr


def _children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_configured_by_environment_and_a_second_signal_kills_draining_children(
    cluster: Cluster,
) -> None:
    app_dir = _app(cluster)
    cluster.env.update(
        HEWER_AUTOSCALE="2:2",
        HEWER_AUTOSCALE_INTERVAL="0.1s",
        HEWER_GRACE_PERIOD="120s",  # the drain would outlast the test: only a kill ends it
    )
    supervisor = cluster.spawn("worker", "start", "app:worker", cwd=app_dir)
    wait_for(lambda: active(cluster) == 2, timeout=30, what="two workers from HEWER_AUTOSCALE")
    children = _children(supervisor.pid)
    assert len(children) == 2
    # Each child is one worker, not a supervisor of its own (they do not read HEWER_AUTOSCALE).
    assert all(not _children(pid) for pid in children)

    trigger = (
        "from hewer import Hewer\nhw = Hewer()\n[hw.runs.trigger('scaled', {}) for _ in range(2)]\n"
    )
    subprocess.run(
        [sys.executable, "-c", trigger], env=cluster.env, cwd=REPO, check=True, timeout=60
    )
    url, tenant, token = _api(cluster)

    def running() -> int:
        request = urllib.request.Request(
            f"{url}/api/v1/tenants/{tenant}/task-stats?taskNames=scaled",
            headers={"Authorization": f"Bearer {token}"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request) as answer:
            return int(json.loads(answer.read())["scaled"]["running"]["total"])

    wait_for(lambda: running() == 2, timeout=30, what="both held tasks running")
    supervisor.send_signal(signal.SIGTERM)  # the children drain: their tasks are held
    wait_for(
        lambda: cluster.logs().count("stopping: no new tasks; 1 running") == 2,
        timeout=30,
        what="both workers draining their held task",
    )
    assert all(_alive(pid) for pid in children)
    supervisor.send_signal(signal.SIGTERM)  # a second one kills them
    assert supervisor.wait(timeout=30) == 1
    wait_for(lambda: not any(_alive(pid) for pid in children), timeout=10, what="children killed")
    logs = cluster.logs()
    assert logs.count("autoscaling 2..2 workers") == 1
    assert "Traceback" not in logs
