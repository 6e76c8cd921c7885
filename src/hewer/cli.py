"""The ``hewer`` command: engine, workers, tokens and runs.

Every flag mirrors an environment variable (shown in ``--help``); a flag wins over the
variable, which wins over the default.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import pydantic

from hewer.config import EngineSettings
from hewer.errors import ConfigurationError

if TYPE_CHECKING:
    from hewer.sdk import Hewer, WorkerInfo

logger = logging.getLogger("hewer.cli")

LOG_FORMAT = "%(asctime)s %(levelname)-5s %(name)s: %(message)s"


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)


F = TypeVar("F", bound=Callable[..., Any])


def _option(name: str, env: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(name, envvar=env, show_envvar=True, **kwargs)


log_level_option = _option(
    "--log-level",
    "HEWER_LOG_LEVEL",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Logging level.",
)


def _engine_settings(**given: Any) -> EngineSettings:
    return EngineSettings(**{k: v for k, v in given.items() if v is not None})


def engine_options(fn: F) -> F:
    """Options that say where the engine and its database are."""
    for decorator in reversed(
        [
            _option("--host", "HEWER_HOST", help="gRPC listen host [default: 127.0.0.1]"),
            _option("--port", "HEWER_PORT", type=int, help="gRPC listen port [default: 7070]"),
            _option(
                "--database",
                "HEWER_DATABASE",
                type=click.Path(path_type=Path),
                help="SQLite database file [default: ./hewer.db]",
            ),
            _option(
                "--database-url",
                "HEWER_DATABASE_URL",
                help="Database URL, postgresql://user@host:5432/db (production, replicas) or "
                "sqlite:///path/to/file.db; takes the place of --database",
            ),
            _option(
                "--database-pool-size",
                "HEWER_DATABASE_POOL_SIZE",
                type=int,
                help="Connections kept open to PostgreSQL [default: 10]",
            ),
            _option(
                "--state-dir",
                "HEWER_STATE_DIR",
                type=click.Path(path_type=Path),
                help="Local state directory; the engine writes the default tenant's token "
                "to <state-dir>/token [default: ./.hewer]",
            ),
            _option(
                "--broadcast-address",
                "HEWER_BROADCAST_ADDRESS",
                help="host:port that workers should dial, written into tokens [default: host:port]",
            ),
            _option(
                "--api-host",
                "HEWER_API_HOST",
                help="HTTP API listen host [default: the gRPC host]",
            ),
            _option(
                "--api-port",
                "HEWER_API_PORT",
                type=int,
                help="HTTP API listen port, 0 = any free port [default: 8080]",
            ),
            _option(
                "--api-url",
                "HEWER_API_URL",
                help="HTTP API base URL written into tokens as server_url "
                "[default: http://<broadcast host>:<api port>]",
            ),
        ]
    ):
        fn = decorator(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hewer")
def main() -> None:
    """Hewer: durable task orchestration, wire-compatible with Hatchet."""


# ---------------------------------------------------------------------- engine


@main.command()
@engine_options
@_option(
    "--heartbeat-interval",
    "HEWER_HEARTBEAT_INTERVAL",
    help="Expected worker heartbeat period, e.g. 4s [default: 4s]",
)
@_option(
    "--inactive-after",
    "HEWER_INACTIVE_AFTER",
    help="Silence after which a worker is INACTIVE and its tasks re-queued [default: 30s]",
)
@_option(
    "--replica-id",
    "HEWER_REPLICA_ID",
    help="This engine's name among replicas sharing a PostgreSQL database "
    "[default: <host name>:<gRPC port>]",
)
@_option(
    "--replica-host",
    "HEWER_REPLICA_HOST",
    help="Host the other replicas reach this one at [default: the listen host, or the "
    "host name when listening on every interface]",
)
@_option(
    "--lease-ttl",
    "HEWER_LEASE_TTL",
    help="Term of the scheduling lease: a replica that stops renewing it is taken over "
    "after about this long [default: 5s]",
)
@_option(
    "--relay-wait",
    "HEWER_RELAY_WAIT",
    help="How long a replica holds a call while no replica schedules before answering "
    "UNAVAILABLE [default: 10s]",
)
@_option(
    "--tls-cert",
    "HEWER_TLS_CERT",
    type=click.Path(path_type=Path),
    help="PEM certificate the engine presents on both ports (TLS on; with --tls-key)",
)
@_option("--tls-key", "HEWER_TLS_KEY", type=click.Path(path_type=Path), help="PEM key")
@_option(
    "--tls-client-ca",
    "HEWER_TLS_CLIENT_CA",
    type=click.Path(path_type=Path),
    help="PEM CA bundle; clients must present a certificate it signed (mTLS)",
)
@_option(
    "--tls-root-ca",
    "HEWER_TLS_ROOT_CA",
    type=click.Path(path_type=Path),
    help="PEM CA bundle trusted when relaying to another replica [default: --tls-client-ca, "
    "else the system's roots]",
)
@_option(
    "--http-request-timeout",
    "HEWER_HTTP_REQUEST_TIMEOUT",
    help="How long an HTTP request's headers and body may take to arrive before the "
    "connection is cut off (408) [default: 10s]",
)
@_option(
    "--shutdown-grace",
    "HEWER_SHUTDOWN_GRACE",
    help="How long a stopping engine lets calls in flight finish; a second SIGTERM/SIGINT "
    "exits at once [default: 2s]",
)
@log_level_option
def engine(log_level: str, **given: Any) -> None:
    """Run the engine (gRPC on 127.0.0.1:7070, HTTP API on 127.0.0.1:8080, state in
    ./hewer.db)."""
    _setup_logging(log_level)
    try:
        settings = _engine_settings(**given)
    except pydantic.ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise click.ClickException(f"cannot start the engine: {problems}") from None
    try:
        asyncio.run(_serve_engine(settings))
    except (OSError, ConfigurationError) as exc:
        raise click.ClickException(f"cannot start the engine: {exc}") from None


async def _serve_engine(settings: EngineSettings) -> None:
    from hewer.engine.app import Engine
    from hewer.errors import StoreError

    try:
        engine = Engine(settings)
        await engine.start()
    except StoreError as exc:
        raise click.ClickException(
            f"cannot start the engine: database {settings.store_display}: {exc}"
        ) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            # Whatever the engine wrote is committed; what it held in memory is rebuilt
            # from the database by the next start.
            logger.warning("second %s: exiting now", sig.name)
            os._exit(1)
        logger.info(
            "received %s: stopping (within %s; send it again to exit at once)",
            sig.name,
            settings.shutdown_grace,
        )
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop.wait()
    await engine.stop()
    logger.info("engine stopped")


# ---------------------------------------------------------------------- tokens


@main.group()
def token() -> None:
    """Manage API tokens."""


@token.command("create")
@engine_options
@_option("--tenant", "HEWER_TENANT", default="default", show_default=True, help="Tenant name.")
@click.option("--name", default="cli", show_default=True, help="A label for the token.")
@click.option(
    "--scope",
    type=click.Choice(["admin", "client", "worker", "read"]),
    default="admin",
    show_default=True,
    help="What the token may do: everything (admin); trigger, cancel and read runs, register "
    "workflows (client); run workers and spawn child runs from their tasks (worker); read "
    "only (read).",
)
def token_create(tenant: str, name: str, scope: str, **given: Any) -> None:
    """Mint a token against the database and print it (the engine need not run)."""
    from hewer.engine.app import mint_token
    from hewer.engine.core.scopes import Scope

    settings = _engine_settings(**given)
    click.echo(asyncio.run(mint_token(settings, tenant, name, Scope(scope))))


@token.command("inspect")
@click.argument("token_value", metavar="TOKEN", envvar="HEWER_TOKEN")
def token_inspect(token_value: str) -> None:
    """Print what a token names, as JSON: its tenant id (which URLs such as the Task Stats
    API's need), addresses and expiry. The signature is not checked: the engine does that."""
    from hewer.engine.core.auth import unverified_claims

    try:
        claims = unverified_claims(token_value.strip())
    except Exception as exc:  # pyjwt's errors: not a token at all
        raise click.ClickException(f"not a Hewer token: {exc}") from None
    expires = claims.get("exp")
    shown = {
        "tenant_id": claims.get("sub"),
        "token_id": claims.get("token_id"),
        "scope": claims.get("scope", "admin"),
        "grpc_address": claims.get("grpc_broadcast_address"),
        "server_url": claims.get("server_url"),
        "expires_at": _iso(datetime.fromtimestamp(expires, UTC))
        if isinstance(expires, int | float)
        else None,
    }
    click.echo(json.dumps(shown, indent=2))


@token.command("revoke")
@click.argument("token_or_id")
@engine_options
def token_revoke(token_or_id: str, **given: Any) -> None:
    """Revoke a token (the token itself or its id); engines refuse it within seconds."""
    from hewer.engine.app import revoke_token

    settings = _engine_settings(**given)
    if not asyncio.run(revoke_token(settings, token_or_id)):
        raise click.ClickException("no such active token")
    click.echo("revoked")


# ---------------------------------------------------------------------- workers


def load_worker(spec: str) -> Any:
    """Import ``module:attribute`` (relative to the current directory) and return it."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise click.BadParameter(f"expected MODULE:ATTR, got {spec!r}", param_hint="TARGET")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from exc
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise click.BadParameter(f"{module_name!r} has no attribute {attr!r}") from None
    return target() if callable(target) and not hasattr(target, "start") else target


def client_options(fn: F) -> F:
    """Options that say which engine a client command talks to, and as whom."""
    for decorator in reversed(
        [
            _option(
                "--token",
                "HEWER_TOKEN",
                help="API token [default: the local engine's token in <state-dir>/token]",
            ),
            _option(
                "--host-port",
                "HEWER_HOST_PORT",
                help="Engine gRPC address host:port [default: from the token]",
            ),
            _option(
                "--server-url",
                "HEWER_SERVER_URL",
                help="Engine HTTP API base URL [default: from the token]",
            ),
            _option(
                "--state-dir",
                "HEWER_STATE_DIR",
                type=click.Path(path_type=Path),
                help="Where a local engine left its token [default: ./.hewer]",
            ),
        ]
    ):
        fn = decorator(fn)
    return fn


@contextmanager
def _client(**given: Any) -> Iterator[Hewer]:
    """A client from the connection flags (else the environment); Hewer errors become a
    one-line message and exit status 1."""
    from hewer import ClientSettings, Hewer
    from hewer.errors import HewerError

    try:
        hw = Hewer(settings=ClientSettings(**{k: v for k, v in given.items() if v is not None}))
    except ValueError as exc:
        raise click.ClickException(f"invalid settings: {exc}") from None
    try:
        yield hw
    except HewerError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        hw.close()


@main.group()
def worker() -> None:
    """Run and manage workers."""


@worker.command("start")
@click.argument("target")
@_option(
    "--autoscale",
    "HEWER_AUTOSCALE",
    metavar="MIN:MAX",
    help="Run between MIN and MAX worker processes, as many as the queue of the worker's "
    "tasks asks for (MIN may be 0).",
)
@_option(
    "--autoscale-threshold",
    "HEWER_AUTOSCALE_THRESHOLD",
    type=click.IntRange(min=0),
    help="Queued tasks above which one more process is started [default: the worker's slots]",
)
@_option(
    "--autoscale-interval",
    "HEWER_AUTOSCALE_INTERVAL",
    default="2s",
    show_default=True,
    help="How often the queue is read.",
)
@_option(
    "--autoscale-up-after",
    "HEWER_AUTOSCALE_UP_AFTER",
    default="10s",
    show_default=True,
    help="How long the queue must stay above the threshold before a process is added.",
)
@_option(
    "--autoscale-idle-after",
    "HEWER_AUTOSCALE_IDLE_AFTER",
    default="60s",
    show_default=True,
    help="How long the processes must be idle before one is retired.",
)
@click.option(
    "--healthcheck-port",
    type=click.IntRange(0, 65535),
    help="Serve /health and /metrics on this port, over HEWER_WORKER_HEALTHCHECK_PORT and "
    "the worker's own healthcheck_port (with --autoscale: the first process's; the others "
    "take the next ports).",
)
@log_level_option
def worker_start(
    target: str,
    autoscale: str | None,
    autoscale_threshold: int | None,
    autoscale_interval: str,
    autoscale_up_after: str,
    autoscale_idle_after: str,
    healthcheck_port: int | None,
    log_level: str,
) -> None:
    """Run the worker TARGET (MODULE:ATTR) until SIGTERM/SIGINT; exits 0 after a graceful stop."""
    _setup_logging(log_level)
    if autoscale is None:
        _start_worker(target, healthcheck_port)
        return
    from hewer.autoscale import AutoscaleError, Policy, Supervisor, parse_range
    from hewer.durations import InvalidDuration, parse_duration

    try:
        minimum, maximum = parse_range(autoscale)
    except AutoscaleError as exc:
        raise click.BadParameter(str(exc), param_hint="--autoscale") from None
    periods: list[float] = []
    for flag, text in (
        ("--autoscale-interval", autoscale_interval),
        ("--autoscale-up-after", autoscale_up_after),
        ("--autoscale-idle-after", autoscale_idle_after),
    ):
        try:
            seconds = parse_duration(text).total_seconds()
        except InvalidDuration as exc:
            raise click.BadParameter(str(exc), param_hint=flag) from None
        if seconds <= 0:
            raise click.BadParameter(f"must be longer than 0, got {text!r}", param_hint=flag)
        periods.append(seconds)
    interval, up_after, idle_after = periods
    worker = load_worker(target)
    # The first process's port, the others the next ones: from the flag, else the worker's
    # own (its code, else HEWER_WORKER_HEALTHCHECK_PORT).
    base_port = healthcheck_port if healthcheck_port is not None else worker.healthcheck_port
    if base_port is not None and not 0 < base_port <= 65536 - maximum:
        raise click.BadParameter(
            f"{maximum} processes need ports {base_port}..{base_port + maximum - 1}: give a "
            f"port between 1 and {65536 - maximum}",
            param_hint="--healthcheck-port",
        )
    names = sorted({t.name for wf in worker.workflows for t in wf.tasks})
    policy = Policy(
        minimum=minimum,
        maximum=maximum,
        threshold=worker.slots if autoscale_threshold is None else autoscale_threshold,
        slots=worker.slots,
        interval=interval,
        up_after=up_after,
        idle_after=idle_after,
    )
    from hewer.sdk._admin import Metrics

    metrics = Metrics(worker.client)

    def load() -> tuple[int, int]:
        stats = metrics.task_stats(names)
        return (
            sum(int(stats[n]["queued"]["total"]) for n in names),
            sum(int(stats[n]["running"]["total"]) for n in names),
        )

    def command(index: int) -> list[str]:
        argv = [sys.executable, "-m", "hewer", "worker", "start", target, "--log-level", log_level]
        if base_port is not None:
            argv += ["--healthcheck-port", str(base_port + index)]
        return argv

    # Each child is one worker: it must not read the autoscaling settings (it would become a
    # supervisor itself), and takes its health port from the flag it is given.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HEWER_AUTOSCALE") and k != "HEWER_WORKER_HEALTHCHECK_PORT"
    }
    sys.exit(Supervisor(command, load, policy, env=env).run())


def _start_worker(target: str, healthcheck_port: int | None = None) -> None:
    from hewer.errors import HewerError

    worker = load_worker(target)
    if healthcheck_port is not None:
        worker.healthcheck_port = healthcheck_port
    try:
        worker.start()
    except HewerError as exc:
        raise click.ClickException(str(exc)) from None


@worker.command("dev")
@click.argument("target", required=False)
@click.option(
    "--reload/--no-reload",
    "reload",
    default=None,
    help="Restart the worker when a watched file changes [default: the project file's "
    "reload, else on].",
)
@click.option(
    "--watch",
    "watch",
    multiple=True,
    metavar="GLOB",
    help="Files whose changes restart the worker (repeatable; replaces the project file's "
    "watch) [default: **/*.py].",
)
@click.option(
    "--ignore",
    "ignore",
    multiple=True,
    metavar="GLOB",
    help="Files whose changes never do (repeatable; replaces the project file's ignore).",
)
@client_options
@log_level_option
def worker_dev(
    target: str | None,
    reload: bool | None,
    watch: tuple[str, ...],
    ignore: tuple[str, ...],
    log_level: str,
    **given: Any,
) -> None:
    """Run the worker TARGET (MODULE:ATTR) and restart it whenever a watched file changes.

    \b
    Engine: with no token configured (HEWER_TOKEN / --token) and no engine answering where
    the worker would dial (HEWER_HOST_PORT, else the address in <state-dir>/token, else
    HEWER_HOST:HEWER_PORT, 127.0.0.1:7070), an embedded engine is started in the
    background: `hewer engine` on SQLite in <state-dir>/dev.db, listening there and on
    HEWER_API_PORT (8080), logging to <state-dir>/engine.log. It is kept across reloads.
    Ctrl-C or SIGTERM stops the worker (gracefully), then the embedded engine; exit 0.

    \b
    Project file: ./hewer.toml's [dev] table if hewer.toml exists, else ./pyproject.toml's
    [tool.hewer.dev] (never both). Keys: run = "MODULE:ATTR" (TARGET wins over it),
    pre_cmds = [shell commands run once before anything starts; one that fails aborts
    with its exit status], watch = [globs, default "**/*.py"], ignore = [globs],
    reload = true|false. Flags win over the file. Globs are relative to this directory;
    ** spans directories, a glob without / matches at any depth. Always ignored:
    .hewer/**, the state directory, and watchfiles' defaults (.git, .venv, __pycache__,
    node_modules, editor swap files).
    """
    from hewer import dev

    _setup_logging(log_level)
    options = dev.DevOptions(
        target=target,
        reload=reload,
        watch=watch,
        ignore=ignore,
        log_level=log_level,
        client={k: v for k, v in given.items() if v is not None},
    )
    sys.exit(dev.run(options))


STATES = ("active", "paused", "inactive", "stopped")


@worker.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(STATES, case_sensitive=False),
    help="Only workers in this state (repeatable) [default: all].",
)
@client_options
@log_level_option
def worker_list(as_json: bool, states: tuple[str, ...], log_level: str, **given: Any) -> None:
    """List the tenant's workers: name, id, state, slots used/total, labels, last heartbeat."""
    _setup_logging(log_level)
    with _client(**given) as hw:
        workers = hw.workers.list()
    wanted = {s.lower() for s in states}
    workers = [w for w in workers if not wanted or w.status in wanted]
    if as_json:
        click.echo(json.dumps([_worker_dict(w) for w in workers], indent=2))
    elif not workers:
        click.echo("no workers", err=True)
    else:
        click.echo(worker_table(workers, datetime.now(UTC)))


@worker.command("pause")
@click.argument("worker_id")
@click.option("--json", "as_json", is_flag=True, help="Print the worker as JSON.")
@client_options
@log_level_option
def worker_pause(worker_id: str, as_json: bool, log_level: str, **given: Any) -> None:
    """Stop assigning new tasks to WORKER_ID; tasks it is running go on."""
    _setup_logging(log_level)
    with _client(**given) as hw:
        _show_worker(hw.workers.pause(worker_id), as_json)


@worker.command("resume")
@click.argument("worker_id")
@click.option("--json", "as_json", is_flag=True, help="Print the worker as JSON.")
@client_options
@log_level_option
def worker_resume(worker_id: str, as_json: bool, log_level: str, **given: Any) -> None:
    """Let the paused WORKER_ID take new tasks again."""
    _setup_logging(log_level)
    with _client(**given) as hw:
        _show_worker(hw.workers.resume(worker_id), as_json)


def _show_worker(info: WorkerInfo, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_worker_dict(info), indent=2))
    else:
        click.echo(f"worker {info.name} ({info.id}) is {info.status.upper()}")


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at is not None else None


def _worker_dict(w: WorkerInfo) -> dict[str, Any]:
    return {
        "id": w.id,
        "name": w.name,
        "state": w.status.upper(),
        "status_reason": w.status_reason,
        "status_changed_at": _iso(w.status_changed_at),
        "slots_used": w.slots_used,
        "slots_total": w.slots_total,
        "labels": w.labels,
        "last_heartbeat_at": _iso(w.last_heartbeat_at),
        "connected": w.connected,
        "actions": list(w.actions),
    }


def _ago(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "never"
    seconds = max(0.0, (now - at).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{seconds:.0f}s ago"


def worker_table(workers: Sequence[WorkerInfo], now: datetime) -> str:
    """Workers as a plain, column-aligned table."""
    header = ("NAME", "ID", "STATE", "SLOTS", "LABELS", "LAST HEARTBEAT")
    rows = [
        (
            w.name,
            w.id,
            w.status.upper(),
            f"{w.slots_used}/{w.slots_total}",
            ",".join(f"{k}={v}" for k, v in sorted(w.labels.items())) or "-",
            _ago(w.last_heartbeat_at, now),
        )
        for w in workers
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    )


# ---------------------------------------------------------------------- runs


class _DefaultGroup(click.Group):
    """A group whose first argument, when it names no subcommand, goes to a default one:
    ``hewer run WORKFLOW ...`` is ``hewer run trigger WORKFLOW ...``."""

    default_command = "trigger"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return ["WORKFLOW [OPTIONS] | COMMAND [ARGS]..."]

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        default = self.commands[self.default_command]
        sub = click.Context(default, info_name=self.default_command, parent=ctx)
        rows = [
            record
            for param in default.get_params(sub)
            if isinstance(param, click.Option)
            and param.name != "help"
            and (record := param.get_help_record(sub)) is not None
        ]
        with formatter.section("Options of hewer run WORKFLOW"):
            formatter.write_dl(rows)
        super().format_options(ctx, formatter)


@main.group("run", cls=_DefaultGroup)
def run() -> None:
    """Trigger a workflow (hewer run WORKFLOW --input JSON), or cancel runs.

    Connection settings come from HEWER_TOKEN / HEWER_HOST_PORT, or the local engine's token.
    """


@run.command("trigger")
@click.argument("workflow")
@click.option("--input", "input_json", default="{}", show_default=True, help="Input as JSON.")
@click.option("--no-wait", is_flag=True, help="Print the run id and exit without waiting.")
@client_options
@log_level_option
def run_trigger(
    workflow: str, input_json: str, no_wait: bool, log_level: str, **given: Any
) -> None:
    """Trigger WORKFLOW, wait for it, and print its output as JSON."""
    _setup_logging(log_level)
    try:
        data = json.loads(input_json)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--input") from None
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--input")
    with _client(**given) as hw:
        ref = hw.runs.trigger(workflow, data)
        if no_wait:
            click.echo(ref.run_id)
            return
        click.echo(json.dumps(ref.result(), indent=2, sort_keys=True))


def _point_in_time(text: str, param_hint: str) -> datetime:
    """``"1h"`` (that long ago) or an ISO 8601 time (naive = UTC)."""
    from hewer.durations import InvalidDuration, parse_duration

    try:
        return datetime.now(UTC) - parse_duration(text)
    except InvalidDuration:
        pass
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a duration (e.g. 90m) nor an ISO 8601 time",
            param_hint=param_hint,
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@run.command("cancel")
@click.argument("ids", nargs=-1)
@click.option("--since", help="Cancel runs created since this long ago (e.g. 2h) or this ISO time.")
@click.option("--until", help="... and created until this long ago or this ISO time.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["queued", "running"], case_sensitive=False),
    help="... and in this state (repeatable).",
)
@click.option(
    "--workflow", "workflows", multiple=True, help="... and of this workflow (repeatable)."
)
@click.option(
    "--meta", "metadata", multiple=True, help="... and with this KEY=VALUE additional metadata."
)
@client_options
@log_level_option
def run_cancel(
    ids: tuple[str, ...],
    since: str | None,
    until: str | None,
    statuses: tuple[str, ...],
    workflows: tuple[str, ...],
    metadata: tuple[str, ...],
    log_level: str,
    **given: Any,
) -> None:
    """Cancel the runs (or tasks) IDS, or every run matching the filter options; prints
    the ids of the tasks cancelled.

    Runs that are unknown or already finished cancel nothing (not an error).
    """
    _setup_logging(log_level)
    from hewer import RunFilter

    filtering = bool(since or until or statuses or workflows or metadata)
    if ids and filtering:
        raise click.UsageError("give run ids or filter options, not both")
    if not ids and not filtering:
        raise click.UsageError("give run ids to cancel, or filter options (see --help)")
    run_filter = None
    if filtering:
        pairs = {}
        for entry in metadata:
            key, sep, value = entry.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"{entry!r} is not KEY=VALUE", param_hint="--meta")
            pairs[key] = value
        run_filter = RunFilter(
            since=_point_in_time(since, "--since") if since else datetime.fromtimestamp(0, UTC),
            until=_point_in_time(until, "--until") if until else None,
            statuses=statuses,
            workflows=workflows,
            additional_metadata=pairs,
        )
    with _client(**given) as hw:
        cancelled = hw.runs.cancel(list(ids), filter=run_filter)
    for task_id in cancelled:
        click.echo(task_id)
    click.echo(
        f"cancelled {len(cancelled)} task(s)"
        if cancelled
        else "nothing to cancel (unknown ids, or runs already finished)",
        err=True,
    )


if __name__ == "__main__":
    main()
