"""``hewer worker dev``: a worker that restarts on code changes, with an engine of its own
when none is there.

The command supervises up to two child processes: the worker (``hewer worker start``,
restarted whenever a watched file changes) and, when no engine is configured or reachable,
an embedded engine (``hewer engine`` on SQLite under the state directory, started once and
kept across reloads). Both children run in sessions of their own, so a Ctrl-C in the
terminal reaches only this process, which then stops them in order: the worker first (so
that it can finish and report what it runs), then the engine.

Settings come from a project file (``hewer.toml``'s ``[dev]`` table, else
``pyproject.toml``'s ``[tool.hewer.dev]``), overridden by the command's flags.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import click
import grpc
import watchfiles
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hewer._children import supervised_child
from hewer.config import ClientSettings, EngineSettings
from hewer.sdk._connection import addresses, host_of, is_local, token_claims

logger = logging.getLogger("hewer.dev")

HEWER_TOML = "hewer.toml"
PYPROJECT_TOML = "pyproject.toml"
DEFAULT_WATCH = ("**/*.py",)
DATABASE_NAME = "dev.db"
ENGINE_LOG_NAME = "engine.log"

PROBE_TIMEOUT_S = 1.0
"""How long an address may take to answer before it counts as not an engine."""
ENGINE_READY_TIMEOUT_S = 30.0
"""How long the embedded engine may take to answer ``/ready`` and accept its token."""
ENGINE_STOP_SLACK_S = 10.0
"""Beyond its shutdown grace, how long a stopping engine gets before it is killed."""
RELOAD_STOP_TIMEOUT_S = 5.0
"""How long the old worker gets to stop on a reload before it is killed (a developer
waiting for new code should not wait out the whole grace period of running tasks)."""
POLL_S = 0.05
WATCH_TIMEOUT_MS = 250
"""How often the watcher hands control back, so that dead children are noticed."""

# Settings of an engine meant to be reached from elsewhere; an embedded engine is reached
# only from this machine, on the addresses worked out here.
_ENGINE_ENV_DROPPED = (
    "HEWER_DATABASE_URL",
    "HEWER_BROADCAST_ADDRESS",
    "HEWER_API_URL",
    "HEWER_REPLICA_ID",
    "HEWER_REPLICA_HOST",
)
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")
# No arguments: every field from the environment (spelled so that mypy, which sees the
# fields as required keywords, accepts the call).
_FROM_ENVIRONMENT: dict[str, Any] = {}


# ------------------------------------------------------------------------ project file


class ProjectFileError(click.ClickException):
    """A project file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class DevConfig:
    """What the project file says (defaults where it says nothing)."""

    source: str | None = None
    """``"hewer.toml"``, ``"pyproject.toml"`` or None when there is no dev table."""
    pre_cmds: tuple[str, ...] = ()
    run: str | None = None
    watch: tuple[str, ...] = DEFAULT_WATCH
    ignore: tuple[str, ...] = ()
    reload: bool = True


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ProjectFileError(f"{path.name}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ProjectFileError(f"{path.name}: cannot read it: {exc}") from None


def _pyproject_dev(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """``[tool.hewer.dev]`` of a parsed pyproject.toml (None when absent)."""
    tool = data.get("tool")
    if not isinstance(tool, dict) or "hewer" not in tool:
        return None
    hewer = tool["hewer"]
    if not isinstance(hewer, dict):
        raise ProjectFileError(f"{PYPROJECT_TOML}: [tool.hewer] must be a table")
    for key in hewer:
        if key != "dev":
            raise ProjectFileError(
                f"{PYPROJECT_TOML}: unknown key {key!r} in [tool.hewer] (known: dev)"
            )
    table = hewer.get("dev", {})
    if not isinstance(table, dict):
        raise ProjectFileError(f"{PYPROJECT_TOML}: [tool.hewer.dev] must be a table")
    return table


def load_project_config(root: Path) -> DevConfig:
    """The dev settings of the project in ``root``.

    ``hewer.toml`` wins when it exists (its ``[dev]`` table, even if empty); otherwise
    ``pyproject.toml``'s ``[tool.hewer.dev]``. The two are never merged: one place says
    how the project runs."""
    hewer_toml = root / HEWER_TOML
    pyproject = root / PYPROJECT_TOML
    if hewer_toml.is_file():
        data = _read_toml(hewer_toml)
        for key in data:
            if key != "dev":
                raise ProjectFileError(
                    f"{HEWER_TOML}: unknown key {key!r} (known: the [dev] table)"
                )
        table = data.get("dev", {})
        if not isinstance(table, dict):
            raise ProjectFileError(f"{HEWER_TOML}: dev must be a table ([dev])")
        if pyproject.is_file():
            with contextlib.suppress(click.ClickException):
                if _pyproject_dev(_read_toml(pyproject)) is not None:
                    logger.warning(
                        "both %s and %s [tool.hewer.dev] exist: using %s only",
                        HEWER_TOML,
                        PYPROJECT_TOML,
                        HEWER_TOML,
                    )
        return _dev_config(table, HEWER_TOML, "[dev]")
    if pyproject.is_file():
        found = _pyproject_dev(_read_toml(pyproject))
        if found is not None:
            return _dev_config(found, PYPROJECT_TOML, "[tool.hewer.dev]")
    return DevConfig()


_KEYS = ("pre_cmds", "run", "watch", "ignore", "reload")


def _dev_config(table: Mapping[str, Any], source: str, where: str) -> DevConfig:
    def bad(key: str, expected: str) -> ProjectFileError:
        value = table[key]
        return ProjectFileError(
            f"{source}: {where} {key} must be {expected}, got {type(value).__name__} {value!r}"
        )

    def strings(key: str, *, globs: bool = False) -> tuple[str, ...] | None:
        if key not in table:
            return None
        value = table[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(key, "a list of strings")
        if globs or key == "pre_cmds":
            for item in value:
                if not item.strip():
                    raise ProjectFileError(f"{source}: {where} {key} has an empty entry")
        if globs:
            for item in value:
                try:
                    glob_regex(item)
                except ValueError as exc:
                    raise ProjectFileError(f"{source}: {where} {key}: {exc}") from None
        return tuple(value)

    for key in table:
        if key not in _KEYS:
            raise ProjectFileError(
                f"{source}: unknown key {key!r} in {where} (known: {', '.join(_KEYS)})"
            )
    run = table.get("run")
    if run is not None:
        if not isinstance(run, str):
            raise bad("run", "a string MODULE:ATTR")
        if not _is_target(run):
            raise ProjectFileError(f"{source}: {where} run must be MODULE:ATTR, got {run!r}")
    reload = table.get("reload", True)
    if not isinstance(reload, bool):
        raise bad("reload", "true or false")
    watch = strings("watch", globs=True)
    return DevConfig(
        source=source,
        pre_cmds=strings("pre_cmds") or (),
        run=run,
        watch=DEFAULT_WATCH if watch is None else watch,
        ignore=strings("ignore", globs=True) or (),
        reload=reload,
    )


def _is_target(spec: str) -> bool:
    module, sep, attr = spec.partition(":")
    return bool(sep and module.strip() and attr.strip())


# ------------------------------------------------------------------------ globs


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as a regex over ``/``-separated paths relative to the project directory.

    ``**`` as a whole path segment matches any number of directories (none included),
    ``*`` and ``?`` stay within one segment, ``[...]`` is a character class. A pattern with
    a ``/`` (other than a trailing one) is anchored at the project directory; one without
    matches at any depth, as in .gitignore. Raises ValueError for an empty pattern."""
    text = pattern.strip().replace(os.sep, "/")
    while text.startswith("./"):
        text = text[2:]
    anchored = "/" in text.rstrip("/")
    text = text.strip("/")
    if not text:
        raise ValueError(f"{pattern!r} is not a glob")
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("**", i) and (i == 0 or text[i - 1] == "/"):
            end = i + 2
            if end == n:
                out.append(".*")
                i = end
                continue
            if text[end] == "/":
                out.append("(?:[^/]+/)*")
                i = end + 1
                continue
        if c == "*":
            while i < n and text[i] == "*":
                i += 1
            out.append("[^/]*")
            continue
        if c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and text[j] in "!^":
                j += 1
            if j < n and text[j] == "]":
                j += 1
            while j < n and text[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
            else:
                inner = text[i + 1 : j]
                if inner[:1] in ("!", "^"):
                    inner = "^" + inner[1:]
                out.append("[" + inner.replace("\\", "\\\\") + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile(("" if anchored else "(?:.*/)?") + "".join(out))


class GlobSet:
    """Globs matched against a relative path; a glob that matches a directory covers
    everything below it."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        self._regexes = tuple(glob_regex(p) for p in patterns)

    def matches(self, relative: str) -> bool:
        parts = relative.split("/")
        for end in range(len(parts), 0, -1):
            candidate = "/".join(parts[:end])
            if any(r.fullmatch(candidate) for r in self._regexes):
                return True
        return False


class DevFilter(watchfiles.DefaultFilter):
    """Changes to files matching ``watch`` and none of ``ignore`` (nor watchfiles' default
    ignores, judged on the path below ``root`` so that the project's own location never
    counts)."""

    def __init__(self, root: Path, watch: Sequence[str], ignore: Sequence[str]) -> None:
        super().__init__()
        self.root = str(root)
        self.watch = GlobSet(watch)
        self.ignore = GlobSet(ignore)

    def relative(self, path: str) -> str | None:
        relative = os.path.relpath(path, self.root)
        if relative == "." or relative == ".." or relative.startswith(".." + os.sep):
            return None
        return relative.replace(os.sep, "/")

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        relative = self.relative(path)
        if relative is None:
            return False
        parts = relative.split("/")
        if any(part in self._ignore_dirs for part in parts):
            return False
        if any(r.search(parts[-1]) for r in self._ignore_entity_regexes):
            return False
        return self.watch.matches(relative) and not self.ignore.matches(relative)


def always_ignored(root: Path, state_dir: Path) -> list[str]:
    """What is never watched: the engine's files (its database changes all the time)."""
    ignored = [".hewer/**"]
    with contextlib.suppress(ValueError):
        inside = (root / state_dir).resolve().relative_to(root.resolve()).as_posix()
        if inside not in (".", ".hewer"):
            ignored.append(f"/{inside}/**")
    return ignored


# ------------------------------------------------------------------------ finding an engine


class Probe(enum.Enum):
    ENGINE = "an engine answers"
    FREE = "nothing listens"
    OTHER = "something that is not a Hewer engine listens"


def split_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``[v6]:port``; None if it has no port."""
    host = host_of(address)
    tail = address.strip().rsplit(":", 1)
    if len(tail) != 2 or not tail[1].isdigit() or not host or host == address.strip():
        return None
    return host, int(tail[1])


def dial_host(host: str) -> str:
    return "127.0.0.1" if host in _WILDCARD_HOSTS else host


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> Probe:
    """What listens at ``address``: an engine (anything that speaks gRPC), nothing, or
    something else."""
    parts = split_address(address)
    if parts is None:
        return Probe.FREE
    host, port = parts
    try:
        with socket.create_connection((dial_host(host), port), timeout=timeout):
            pass
    except OSError:
        return Probe.FREE
    channel = grpc.insecure_channel(address)
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        # A gRPC server without the health service still answered as one.
        return Probe.ENGINE if code == grpc.StatusCode.UNIMPLEMENTED else Probe.OTHER
    finally:
        channel.close()
    return Probe.ENGINE


@dataclass(frozen=True)
class UseEngine:
    """Run the worker against an engine that is configured or already there."""

    reason: str
    worker_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StartEngine:
    """Start an embedded engine listening here."""

    host: str
    port: int
    reason: str


def choose_engine(client: ClientSettings, engine: EngineSettings) -> UseEngine | StartEngine:
    """Which engine the worker uses.

    A token (flag or HEWER_TOKEN) means an engine is configured: no probing. Otherwise the
    address the worker would dial is asked: HEWER_HOST_PORT if set, else the one in the
    state directory's token file, else where ``hewer engine`` would listen here
    (HEWER_HOST/HEWER_PORT, 127.0.0.1:7070). Where no engine answers and the address is
    local, an embedded engine is started there."""
    if client.token:
        return UseEngine("a token is configured (HEWER_TOKEN / --token)")
    if client.host_port:
        named = client.host_port
        single = len(addresses(named)) == 1
        if single and split_address(named) is None:
            raise click.ClickException(f"HEWER_HOST_PORT {named!r} is not host:port")
        found = probe(named) if single else Probe.ENGINE
        if found is Probe.ENGINE:
            return UseEngine(
                f"an engine answers at {named}" if single else f"engines are at {named}"
            )
        if not is_local(named):
            return UseEngine(
                f"the engine at {named} does not answer yet (the worker waits for it; an "
                "embedded engine is started only for a local address)"
            )
        if found is Probe.OTHER:
            raise click.ClickException(
                f"cannot start the embedded engine: {named} (HEWER_HOST_PORT) is in use by "
                "a program that is not a Hewer engine; set HEWER_HOST_PORT to a free address"
            )
        host, port = split_address(named) or ("", 0)
        return StartEngine(host, port, f"no engine answers at {named}")
    claimed = _token_file_address(client.token_file)
    if claimed and probe(claimed) is Probe.ENGINE:
        return UseEngine(f"the engine in {client.token_file} answers at {claimed}")
    default = f"{dial_host(engine.host)}:{engine.port}"
    if engine.port == 0:
        return StartEngine(engine.host, 0, "no engine is configured")
    found = probe(default)
    if found is Probe.ENGINE:
        return UseEngine(f"an engine answers at {default}", {"HEWER_HOST_PORT": default})
    if found is Probe.OTHER:
        raise click.ClickException(
            f"cannot start the embedded engine: {default} is in use by a program that is not "
            "a Hewer engine; set HEWER_HOST_PORT to a free address, e.g. 127.0.0.1:7071"
        )
    return StartEngine(engine.host, engine.port, f"no engine answers at {default}")


def _token_file_address(path: Path) -> str | None:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    claimed = token_claims(token).get("grpc_broadcast_address")
    return claimed if isinstance(claimed, str) and claimed else None


# ------------------------------------------------------------------------ child processes


def _status(code: int) -> int:
    """A child's exit status as a shell reports it (128 + N when killed by signal N)."""
    return 128 - code if code < 0 else code


def _stop_process(
    proc: subprocess.Popen[bytes],
    timeout: float | None,
    forced: Callable[[], bool],
) -> int:
    """SIGTERM, then wait up to ``timeout`` (None: for as long as it takes) or until
    ``forced()``; then SIGKILL. Returns the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.poll() is None:
        if forced() or (deadline is not None and time.monotonic() > deadline):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=POLL_S)
    return _status(proc.returncode)


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_status(url: str, token: str | None = None, timeout: float = 1.0) -> int | None:
    """The HTTP status ``GET url`` answers, or None if nothing answers. No proxy: the
    engine is local, whatever http_proxy says."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def _bind_error(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be listened on now (None: it can)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            # As the engine's listeners do: connections of an earlier run in TIME_WAIT
            # do not make a port busy.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        return exc
    return None


def _free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports free on ``host`` now."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind((dial_host(host), 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


class EmbeddedEngine:
    """``hewer engine`` on SQLite under the state directory, as a child process whose
    output goes to ``<state-dir>/engine.log``."""

    def __init__(
        self,
        host: str,
        port: int,
        api_port: int,
        state_dir: Path,
        log_level: str,
        settings: EngineSettings,
    ) -> None:
        self.host = host
        self.port = port
        self.api_host = settings.api_host if settings.api_host is not None else host
        self.api_port = api_port
        self.state_dir = state_dir
        self.database = state_dir / DATABASE_NAME
        self.log_path = state_dir / ENGINE_LOG_NAME
        self.log_level = log_level
        self.stop_timeout = settings.shutdown_grace.total_seconds() + ENGINE_STOP_SLACK_S
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        host = dial_host(self.host)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def api_url(self) -> str:
        host = dial_host(self.api_host)
        return (
            f"http://[{host}]:{self.api_port}" if ":" in host else f"http://{host}:{self.api_port}"
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def check_ports(self) -> None:
        """Fail with one line when a port is taken (the engine would fail less clearly)."""
        for what, host, port, setting in (
            ("gRPC", self.host, self.port, "HEWER_HOST_PORT"),
            ("HTTP API", self.api_host, self.api_port, "HEWER_API_PORT"),
        ):
            error = _bind_error(host, port)
            if error is not None:
                reason = "is in use" if error.errno == errno.EADDRINUSE else f"({error})"
                raise click.ClickException(
                    f"cannot start the embedded engine: {what} port {dial_host(host)}:{port} "
                    f"{reason}; set {setting} to a free one"
                )

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in _ENGINE_ENV_DROPPED}
        command = [
            sys.executable,
            "-m",
            "hewer",
            "engine",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--api-host",
            self.api_host,
            "--api-port",
            str(self.api_port),
            "--database",
            str(self.database),
            "--state-dir",
            str(self.state_dir),
            "--log-level",
            self.log_level,
        ]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **supervised_child(),
            )

    def exited(self) -> int | None:
        """The engine's exit status if it has exited."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return _status(self.proc.returncode)

    def last_words(self) -> str:
        """The last meaningful line the engine logged (its error, if it died)."""
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        for line in reversed(lines):
            if line.strip():
                # Relayed inside a message of our own, which has its own "Error:".
                return line.strip().removeprefix("Error: ")
        return ""

    def wait_ready(self, stopping: Callable[[], bool]) -> str | None:
        """Wait until ``/ready`` answers 200 and the token the engine wrote is accepted;
        returns that token (None if ``stopping()`` turned true first). Raises
        ClickException if the engine dies or takes too long."""
        deadline = time.monotonic() + ENGINE_READY_TIMEOUT_S
        token_file = self.state_dir / "token"
        while not stopping():
            status = self.exited()
            if status is not None:
                said = self.last_words()
                raise click.ClickException(
                    f"the embedded engine exited with status {status} before it was ready"
                    + (f": {said}" if said else "")
                    + f" (log: {self.log_path})"
                )
            if _http_status(f"{self.api_url}/ready") == 200:
                token = self._accepted_token(token_file)
                if token is not None:
                    return token
            if time.monotonic() > deadline:
                raise click.ClickException(
                    f"the embedded engine was not ready within {ENGINE_READY_TIMEOUT_S:.0f}s "
                    f"(log: {self.log_path})"
                )
            time.sleep(POLL_S)
        return None

    def _accepted_token(self, path: Path) -> str | None:
        """The token in ``path`` if this engine accepts it. The file may still be one an
        earlier engine left: the engine replaces it just after it starts answering."""
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        tenant = token_claims(token).get("sub")
        if not token or not isinstance(tenant, str):
            return None
        status = _http_status(f"{self.api_url}/api/v1/tenants/{tenant}/worker", token)
        return token if status is not None and status != 401 and status < 500 else None

    def stop(self, forced: Callable[[], bool]) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        logger.info("stopping the embedded engine (pid %d)", self.proc.pid)
        status = _stop_process(self.proc, self.stop_timeout, forced)
        logger.info("embedded engine stopped (exit status %d)", status)


# ------------------------------------------------------------------------ the session


@dataclass(frozen=True)
class DevOptions:
    """What the command line says; None/empty: the project file decides."""

    target: str | None
    reload: bool | None
    watch: tuple[str, ...]
    ignore: tuple[str, ...]
    log_level: str
    client: Mapping[str, Any]
    """Connection flags given (token, host_port, server_url, state_dir)."""


class _Stop:
    """Signals received. The handler only counts, so it is safe whatever the main thread
    was doing (an Event's lock could be held by the very code it interrupts);
    ``is_set`` is what watchfiles polls."""

    def __init__(self) -> None:
        self.count = 0
        self.name = ""

    def is_set(self) -> bool:
        return self.count > 0

    def forced(self) -> bool:
        return self.count > 1

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.name = signal.Signals(signum).name


_CLIENT_ENV = {
    "token": "HEWER_TOKEN",
    "host_port": "HEWER_HOST_PORT",
    "server_url": "HEWER_SERVER_URL",
    "state_dir": "HEWER_STATE_DIR",
}


class DevSession:
    """One run of ``hewer worker dev``."""

    def __init__(self, options: DevOptions, root: Path | None = None) -> None:
        self.options = options
        self.root = (root or Path.cwd()).resolve()
        self.config = load_project_config(self.root)
        target = options.target or self.config.run
        if not target:
            raise click.UsageError(
                f"give the worker as TARGET (MODULE:ATTR), or set run in {HEWER_TOML} [dev] "
                f"or {PYPROJECT_TOML} [tool.hewer.dev]"
            )
        if not _is_target(target):
            raise click.BadParameter(f"expected MODULE:ATTR, got {target!r}", param_hint="TARGET")
        self.target = target
        self.reload = self.config.reload if options.reload is None else options.reload
        try:
            self.client = ClientSettings(**options.client)
            # Read from the environment, as `hewer engine` would read it here.
            self.engine_settings = EngineSettings(**_FROM_ENVIRONMENT)
        except ValueError as exc:
            raise click.ClickException(f"invalid settings: {exc}") from None
        self.state_dir = self.client.state_dir
        watch = options.watch or self.config.watch
        ignore = options.ignore or self.config.ignore
        for glob in (*watch, *ignore):
            try:
                glob_regex(glob)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--watch/--ignore") from None
        self.watch = tuple(watch)
        self.ignore = (*always_ignored(self.root, self.state_dir), *ignore)
        self.stop = _Stop()
        self.engine: EmbeddedEngine | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    # -- entry -----------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the exit status."""
        previous = {
            sig: signal.signal(sig, self.stop.handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            return self._run()
        finally:
            try:
                # Only after an error: every normal way out has stopped the worker already.
                self._stop_worker(self.client.grace_period.total_seconds() + 5)
            finally:
                if self.engine is not None:
                    self.engine.stop(self.stop.forced)
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def _run(self) -> int:
        if self.config.source is not None:
            logger.info("dev settings from %s", self.config.source)
        status = self._pre_cmds()
        if status is not None:
            return status
        env = self._worker_env()
        choice = choose_engine(self.client, self.engine_settings)
        if self.stop.is_set():
            return self._stopped()
        if isinstance(choice, StartEngine):
            token = self._start_engine(choice)
            if token is None:
                return 0
            assert self.engine is not None
            env.update(HEWER_TOKEN=token, HEWER_HOST_PORT=self.engine.address)
        else:
            logger.info("using the configured engine: %s", choice.reason)
            env.update(choice.worker_env)
        if self.stop.is_set():
            return self._stopped()
        if self.reload:
            return self._supervise_reloading(env)
        return self._supervise(env)

    # -- steps -----------------------------------------------------------------------------

    def _pre_cmds(self) -> int | None:
        for command in self.config.pre_cmds:
            logger.info("pre_cmds: %s", command)
            done = subprocess.run(command, shell=True, cwd=self.root, check=False)
            if self.stop.is_set():
                return self._stopped()
            if done.returncode != 0:
                status = _status(done.returncode)
                click.echo(
                    f"Error: {self.config.source}: pre_cmds: {command!r} failed with exit "
                    f"status {status}",
                    err=True,
                )
                return status
        return None

    def _worker_env(self) -> dict[str, str]:
        # A dev worker is one process: an autoscaling setting meant for `worker start`
        # would turn it into a supervisor the reloads cannot restart.
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEWER_AUTOSCALE")}
        env["HEWER_LOG_LEVEL"] = self.options.log_level
        for key, value in self.options.client.items():
            if key in _CLIENT_ENV and value is not None:
                env[_CLIENT_ENV[key]] = str(value)
        return env

    def _start_engine(self, choice: StartEngine) -> str | None:
        settings = self.engine_settings
        port, api_port = choice.port, settings.api_port
        missing = [p for p in (port, api_port) if p == 0]
        if missing:
            # Chosen here rather than by the engine: its addresses must be known before it
            # says them, to ask it whether it is ready.
            free = iter(_free_ports(choice.host, len(missing)))
            port = port or next(free)
            api_port = api_port or next(free)
        engine = EmbeddedEngine(
            choice.host, port, api_port, self.state_dir, self.options.log_level, settings
        )
        engine.check_ports()
        logger.info("%s and no token is configured: starting an embedded engine", choice.reason)
        self.engine = engine
        engine.start()
        token = engine.wait_ready(self.stop.is_set)
        if token is None:
            return None
        logger.info(
            "embedded engine ready (pid %s): gRPC %s, HTTP API %s, database %s, log %s "
            "(from this directory: hewer run WORKFLOW)",
            engine.pid,
            engine.address,
            engine.api_url,
            engine.database,
            engine.log_path,
        )
        return token

    def _start_worker(self, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "hewer", "worker", "start", self.target],
            cwd=self.root,
            env=dict(env),
            **supervised_child(),
        )
        logger.debug("worker process %d started", self.worker.pid)
        return self.worker

    def _stop_worker(self, timeout: float | None) -> int | None:
        worker, self.worker = self.worker, None
        if worker is None:
            return None
        if worker.poll() is not None:
            return _status(worker.returncode)
        return _stop_process(worker, timeout, self.stop.forced)

    def _engine_died(self) -> int | None:
        if self.engine is None:
            return None
        status = self.engine.exited()
        if status is None:
            return None
        said = self.engine.last_words()
        logger.error(
            "the embedded engine exited with status %d%s (log: %s); stopping",
            status,
            f": {said}" if said else "",
            self.engine.log_path,
        )
        self._stop_worker(RELOAD_STOP_TIMEOUT_S)
        return 1

    def _stopped(self) -> int:
        steps = [
            *(["the worker"] if self.worker is not None else []),
            *(["the embedded engine"] if self.engine is not None else []),
        ]
        logger.info(
            "received %s: stopping%s", self.stop.name, f" {', then '.join(steps)}" if steps else ""
        )
        status = self._stop_worker(None)
        if self.stop.forced():
            return 1
        if status not in (None, 0):
            logger.warning("the worker exited with status %d while stopping", status)
        return 0

    def _supervise(self, env: Mapping[str, str]) -> int:
        """No reload: run the worker once; its exit ends the session with its status."""
        logger.info("hot reload is off")
        worker = self._start_worker(env)
        while not self.stop.is_set():
            died = self._engine_died()
            if died is not None:
                return died
            if worker.poll() is not None:
                self.worker = None
                status = _status(worker.returncode)
                logger.info("the worker exited with status %d", status)
                return status
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=WATCH_TIMEOUT_MS / 1000)
        return self._stopped()

    def _supervise_reloading(self, env: Mapping[str, str]) -> int:
        watch_filter = DevFilter(self.root, self.watch, self.ignore)
        logger.info(
            "hot reload: watching %s under %s, ignoring %s",
            ", ".join(self.watch),
            self.root,
            ", ".join(self.ignore),
        )
        worker = self._start_worker(env)
        reported = False
        for changes in watchfiles.watch(
            self.root,
            watch_filter=watch_filter,
            stop_event=self.stop,
            rust_timeout=WATCH_TIMEOUT_MS,
            yield_on_timeout=True,
            raise_interrupt=False,
        ):
            died = self._engine_died()
            if died is not None:
                return died
            if not reported and worker.poll() is not None:
                reported = True
                logger.warning(
                    "the worker exited with status %d; it restarts on the next change",
                    _status(worker.returncode),
                )
            if not changes:
                continue
            changed = sorted({watch_filter.relative(path) or path for _, path in changes})
            shown = ", ".join(changed[:5])
            if len(changed) > 5:
                shown += f" and {len(changed) - 5} more"
            logger.info("changed: %s; restarting the worker", shown)
            self._stop_worker(RELOAD_STOP_TIMEOUT_S)
            if self.stop.is_set():
                break
            worker = self._start_worker(env)
            reported = False
        return self._stopped()


def run(options: DevOptions) -> int:
    """``hewer worker dev``; returns the exit status."""
    return DevSession(options).run()
