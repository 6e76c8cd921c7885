"""`hewer worker dev` as a developer runs it: real `hewer` processes in a project directory,
with an embedded engine of its own when none is there, reloads on code changes, and a
project file (hewer.toml / pyproject.toml)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hewer.dev import GlobSet
from tests.helpers import wait_for

HEWER = [sys.executable, "-m", "hewer"]

APP = """
import os

from hewer import Context, Hewer

VERSION = {version}
print(f"app version {{VERSION}} imported", flush=True)
hw = Hewer()


@hw.task(name="version")
def version(input: dict, ctx: Context) -> dict:
    return {{"version": VERSION, "pid": os.getpid()}}


worker = hw.worker("dev-worker", slots=2, workflows=[version])
"""

ENGINE_READY = re.compile(r"embedded engine ready \(pid (\d+)\)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        # A zombie is dead, only not yet reaped.
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class Project:
    """A project directory with an app module, and the processes started in it."""

    root: Path
    env: dict[str, str]
    grpc_port: int
    api_port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def write_app(self, version: int) -> None:
        (self.root / "app.py").write_text(APP.format(version=version))

    def spawn(self, *args: str, name: str = "dev") -> subprocess.Popen[bytes]:
        log = (self.root.parent / f"{name}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [*HEWER, *args], env=self.env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.procs.append(proc)
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        index = self.procs.index(proc)
        (path,) = self.root.parent.glob(f"*-{index}.log")
        return path.read_text()

    def hewer(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*HEWER, *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run_version(self) -> dict[str, Any]:
        """Trigger `version` until a worker has registered it; its output."""
        last: list[subprocess.CompletedProcess[str]] = []

        def attempt() -> bool:
            last[:] = [self.hewer("run", "version")]
            return last[0].returncode == 0

        wait_for(attempt, timeout=60, interval=0.2, what="hewer run version")
        output: dict[str, Any] = json.loads(last[0].stdout)["version"]
        return output

    def run_until(self, wanted: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """`run_version` until its output is ``wanted`` (a run may still reach a worker
        that is on its way out)."""
        seen: list[dict[str, Any]] = []

        def attempt() -> bool:
            seen[:] = [self.run_version()]
            return wanted(seen[0])

        wait_for(attempt, timeout=60, interval=0.1, what=what)
        return seen[0]


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    root = tmp_path / "project"
    root.mkdir()
    grpc_port, api_port = free_port(), free_port()
    while api_port == grpc_port:
        api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEWER_")}
    env.update(
        # Ports of their own, so that nothing on 7070/8080 is found or disturbed.
        HEWER_HOST_PORT=f"127.0.0.1:{grpc_port}",
        HEWER_API_PORT=str(api_port),
        HEWER_HEARTBEAT_INTERVAL="0.2",
        HEWER_INACTIVE_AFTER="1.5",
        HEWER_SHUTDOWN_GRACE="0.5",
        PYTHONUNBUFFERED="1",
    )
    p = Project(root, env, grpc_port, api_port)
    p.write_app(1)
    yield p
    for proc in reversed(p.procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in p.procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def engine_pid(p: Project, dev: subprocess.Popen[bytes]) -> int:
    def ready() -> int | None:
        assert dev.poll() is None, p.log_of(dev)
        found = ENGINE_READY.search(p.log_of(dev))
        return int(found.group(1)) if found else None

    return wait_for(ready, timeout=60, what="embedded engine ready")


def stop(p: Project, proc: subprocess.Popen[bytes], sig: signal.Signals) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {sig.name}:\n{p.log_of(proc)}") from None


def test_embedded_engine_runs_tasks_survives_reloads_and_stops_with_the_worker(
    project: Project,
) -> None:
    dev = project.spawn("worker", "dev", "app:worker", "--log-level", "debug")
    engine = engine_pid(project, dev)
    log = project.log_of(dev)
    assert f"gRPC {project.address}" in log
    assert f"HTTP API http://127.0.0.1:{project.api_port}" in log
    assert (project.root / ".hewer" / "dev.db").exists()

    first = project.run_version()
    assert first["version"] == 1
    log = project.log_of(dev)
    assert "starting worker 'dev-worker'" in log
    assert "'dev-worker' waiting for ['version:version']" in log
    assert "acquired action listener" in log
    wait_for(
        lambda: "heartbeat sent for worker" in project.log_of(dev),
        timeout=30,
        what="a heartbeat logged at debug level",
    )

    project.write_app(2)
    wait_for(
        lambda: "app version 2 imported" in project.log_of(dev),
        timeout=60,
        what="the new code imported",
    )
    second = project.run_until(lambda out: out["version"] == 2, "a run by the new code")
    assert second["pid"] != first["pid"]
    wait_for(lambda: not alive(first["pid"]), timeout=30, what="old worker gone")
    assert alive(engine), "the engine did not survive the reload"
    log = project.log_of(dev)
    assert len(ENGINE_READY.findall(log)) == 1
    assert "changed: app.py; restarting the worker" in log
    engine_log = (project.root / ".hewer" / "engine.log").read_text()
    assert engine_log.count("hewer engine listening on") == 1

    assert stop(project, dev, signal.SIGINT) == 0, project.log_of(dev)
    assert not alive(engine) and not alive(second["pid"])
    log = project.log_of(dev)
    # The worker first, gracefully; then the engine.
    assert log.index("worker dev-worker stopped") < log.index("stopping the embedded engine")
    assert "embedded engine stopped (exit status 0)" in log
    for port in (project.grpc_port, project.api_port):
        with socket.socket() as s:  # both ports are free again
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))


def test_project_file_gives_target_pre_cmds_and_no_reload(project: Project) -> None:
    (project.root / "hewer.toml").write_text(
        "[dev]\n"
        'run = "app:worker"\n'
        'pre_cmds = ["echo one > pre.txt", "echo two >> pre.txt"]\n'
        "reload = false\n"
    )
    dev = project.spawn("worker", "dev")
    engine = engine_pid(project, dev)
    assert (project.root / "pre.txt").read_text() == "one\ntwo\n"
    first = project.run_version()
    assert first["version"] == 1
    assert "hot reload is off" in project.log_of(dev)

    project.write_app(2)
    # No watcher runs, so nothing can restart the worker; runs over a while still reach
    # the first one (a reloading worker restarts within a fraction of this).
    until = time.monotonic() + 2.0
    while time.monotonic() < until:
        assert project.run_version() == first
    assert "restarting" not in project.log_of(dev)

    assert stop(project, dev, signal.SIGTERM) == 0, project.log_of(dev)
    assert not alive(engine) and not alive(first["pid"])


def test_watch_and_ignore_globs_decide_what_reloads(project: Project) -> None:
    (project.root / "pyproject.toml").write_text(
        '[project]\nname = "devapp"\n\n'
        "[tool.hewer.dev]\n"
        'run = "app:worker"\n'
        'watch = ["**/*.py", "conf/*.json"]\n'
        'ignore = ["generated/**"]\n'
    )
    (project.root / "generated").mkdir()
    (project.root / "conf").mkdir()
    dev = project.spawn("worker", "dev")
    engine_pid(project, dev)
    first = project.run_version()

    (project.root / "generated" / "models.py").write_text("X = 1\n")
    (project.root / "conf" / "settings.json").write_text("{}\n")
    wait_for(
        lambda: "changed: conf/settings.json; restarting" in project.log_of(dev),
        timeout=60,
        what="a reload for the watched json file",
    )
    project.run_until(lambda out: out["pid"] != first["pid"], "a run by the new worker")
    assert "generated" not in "".join(
        line for line in project.log_of(dev).splitlines() if "changed:" in line
    )
    assert stop(project, dev, signal.SIGINT) == 0


def test_flags_override_the_project_file_and_a_broken_app_recovers(project: Project) -> None:
    (project.root / "hewer.toml").write_text(
        '[dev]\nrun = "missing:worker"\nreload = false\nwatch = ["nothing/*"]\n'
    )
    (project.root / "app.py").write_text("this is not Python\n")
    dev = project.spawn("worker", "dev", "app:worker", "--reload", "--watch", "*.py")
    engine_pid(project, dev)
    wait_for(
        lambda: (
            "the worker exited with status 1; it restarts on the next change" in project.log_of(dev)
        ),
        timeout=60,
        what="the broken worker reported",
    )
    assert dev.poll() is None

    project.write_app(3)
    assert project.run_version()["version"] == 3
    assert "hot reload: watching *.py" in project.log_of(dev)
    assert stop(project, dev, signal.SIGINT) == 0, project.log_of(dev)


def test_with_an_engine_running_no_embedded_engine_is_started(project: Project) -> None:
    outside = dict(
        project.env,
        HEWER_PORT=str(project.grpc_port),
        HEWER_DATABASE=str(project.root.parent / "real.db"),
    )
    engine = subprocess.Popen(
        [*HEWER, "engine"],
        env=outside,
        cwd=project.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        token = project.root / ".hewer" / "token"
        wait_for(lambda: token.exists() or engine.poll() is not None, what="engine token")
        assert engine.poll() is None
        dev = project.spawn("worker", "dev", "app:worker")
        assert project.run_version()["version"] == 1
        log = project.log_of(dev)
        assert f"using the configured engine: an engine answers at {project.address}" in log
        assert "embedded engine" not in log
        assert not (project.root / ".hewer" / "dev.db").exists()
        assert stop(project, dev, signal.SIGINT) == 0, project.log_of(dev)
        assert engine.poll() is None, "the engine it did not start was stopped"
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(timeout=30)


@pytest.mark.parametrize(
    ("file", "text", "expected"),
    [
        ("hewer.toml", "[dev]\nrelaod = false\n", ["hewer.toml", "'relaod'", "[dev]"]),
        ("hewer.toml", '[dev]\nreload = "no"\n', ["hewer.toml", "reload", "true or false"]),
        ("hewer.toml", "[engine]\nport = 1\n", ["hewer.toml", "'engine'"]),
        (
            "pyproject.toml",
            '[tool.hewer.dev]\nwatch = "*.py"\n',
            ["pyproject.toml", "[tool.hewer.dev] watch", "a list of strings"],
        ),
        (
            "pyproject.toml",
            '[tool.hewer.dev]\nrun = "app"\n',
            ["pyproject.toml", "run", "MODULE:ATTR"],
        ),
        ("pyproject.toml", "[tool.hewer.dev\n", ["pyproject.toml", "not valid TOML"]),
    ],
)
def test_a_bad_project_file_is_refused_naming_the_file_and_key(
    project: Project, file: str, text: str, expected: list[str]
) -> None:
    (project.root / file).write_text(text)
    result = project.hewer("worker", "dev", "app:worker")
    assert result.returncode == 1, result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    for part in expected:
        assert part in message
    assert not (project.root / ".hewer").exists(), "nothing should have started"


def test_a_failing_pre_cmd_aborts_with_its_status_and_hewer_toml_wins(project: Project) -> None:
    (project.root / "pyproject.toml").write_text('[tool.hewer.dev]\npre_cmds = ["exit 3"]\n')
    result = project.hewer("worker", "dev", "app:worker")
    assert result.returncode == 3
    assert "pyproject.toml: pre_cmds: 'exit 3' failed with exit status 3" in result.stderr

    (project.root / "hewer.toml").write_text('[dev]\npre_cmds = ["true", "exit 4", "touch x"]\n')
    result = project.hewer("worker", "dev", "app:worker")
    assert result.returncode == 4, result.stderr
    assert "hewer.toml: pre_cmds: 'exit 4' failed" in result.stderr
    assert not (project.root / "x").exists()
    assert not (project.root / ".hewer").exists()

    missing = project.hewer("worker", "dev")
    assert missing.returncode == 2 and "run in hewer.toml [dev]" in missing.stderr


def test_taken_ports_fail_with_one_clear_line(project: Project) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", project.api_port))
        squatter.listen()
        result = project.hewer("worker", "dev", "app:worker")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: cannot start the embedded engine: HTTP API port 127.0.0.1:{project.api_port} "
        "is in use; set HEWER_API_PORT to a free one"
    )
    assert "Traceback" not in result.stderr

    with socket.socket() as squatter:  # listens, but speaks no gRPC
        squatter.bind(("127.0.0.1", project.grpc_port))
        squatter.listen()
        result = project.hewer("worker", "dev", "app:worker")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: cannot start the embedded engine: {project.address} (HEWER_HOST_PORT) is in "
        "use by a program that is not a Hewer engine; set HEWER_HOST_PORT to a free address"
    )
    assert not (project.root / ".hewer" / "engine.log").exists()


def test_an_engine_that_dies_while_starting_is_reported(project: Project) -> None:
    (project.root / ".hewer" / "dev.db").mkdir(parents=True)  # no database can open there
    result = project.hewer("worker", "dev", "app:worker")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: the embedded engine exited with status 1 before it was ready")
    assert "cannot start the engine" in last and "engine.log" in last
    assert "Traceback" not in result.stderr


def test_globs() -> None:
    python = GlobSet(["**/*.py"])
    assert python.matches("app.py") and python.matches("pkg/sub/mod.py")
    assert not python.matches("app.pyc") and not python.matches("notes.txt")
    anchored = GlobSet(["conf/*.json", ".venv/**"])
    assert anchored.matches("conf/a.json") and not anchored.matches("x/conf/a.json")
    assert not anchored.matches("conf/sub/a.json")
    assert anchored.matches(".venv/lib/site.py") and not anchored.matches("src/.venv/x.py")
    anywhere = GlobSet(["build", "*.gen.py", "data?/[!x]*.csv"])
    assert anywhere.matches("build/out.py") and anywhere.matches("a/build/out.py")
    assert anywhere.matches("a/b/m.gen.py")
    assert anywhere.matches("data1/a.csv") and not anywhere.matches("data1/x.csv")
