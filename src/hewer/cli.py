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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from hewer.config import EngineSettings

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
@log_level_option
def engine(log_level: str, **given: Any) -> None:
    """Run the engine (gRPC on 127.0.0.1:7070, state in ./hewer.db)."""
    _setup_logging(log_level)
    settings = _engine_settings(**given)
    asyncio.run(_serve_engine(settings))


async def _serve_engine(settings: EngineSettings) -> None:
    from hewer.engine.app import Engine

    engine = Engine(settings)
    await engine.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("stopping engine")
    await engine.stop()


# ---------------------------------------------------------------------- tokens


@main.group()
def token() -> None:
    """Manage API tokens."""


@token.command("create")
@engine_options
@_option("--tenant", "HEWER_TENANT", default="default", show_default=True, help="Tenant name.")
@click.option("--name", default="cli", show_default=True, help="A label for the token.")
def token_create(tenant: str, name: str, **given: Any) -> None:
    """Mint a token against the database and print it (the engine need not run)."""
    from hewer.engine.app import mint_token

    settings = _engine_settings(**given)
    click.echo(asyncio.run(mint_token(settings, tenant, name)))


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


@main.group()
def worker() -> None:
    """Run workers."""


@worker.command("start")
@click.argument("target")
@log_level_option
def worker_start(target: str, log_level: str) -> None:
    """Run the worker TARGET (MODULE:ATTR) until SIGTERM/SIGINT; exits 0 after a graceful stop."""
    _setup_logging(log_level)
    _start_worker(target)


def _start_worker(target: str) -> None:
    from hewer.errors import HewerError

    worker = load_worker(target)
    try:
        worker.start()
    except HewerError as exc:
        raise click.ClickException(str(exc)) from None


@worker.command("dev")
@click.argument("target")
@log_level_option
def worker_dev(target: str, log_level: str) -> None:
    """Run the worker TARGET and restart it whenever code under the current directory changes."""
    import watchfiles

    _setup_logging(log_level)
    watchfiles.run_process(
        Path.cwd(),
        target=_run_dev_worker,
        args=(target, log_level),
        watch_filter=watchfiles.PythonFilter(),
        callback=lambda changes: logger.info("code changed, restarting worker"),
    )


def _run_dev_worker(target: str, log_level: str) -> None:
    _setup_logging(log_level)
    try:
        _start_worker(target)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


# ---------------------------------------------------------------------- runs


@main.command("run")
@click.argument("workflow")
@click.option("--input", "input_json", default="{}", show_default=True, help="Input as JSON.")
@click.option("--no-wait", is_flag=True, help="Print the run id and exit without waiting.")
@log_level_option
def run(workflow: str, input_json: str, no_wait: bool, log_level: str) -> None:
    """Trigger WORKFLOW, wait for it, and print its output as JSON.

    Connection settings come from HEWER_TOKEN / HEWER_HOST_PORT, or the local engine's token.
    """
    _setup_logging(log_level)
    try:
        data = json.loads(input_json)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--input") from None
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--input")
    from hewer import Hewer
    from hewer.errors import HewerError

    hw = Hewer()
    try:
        ref = hw.runs.trigger(workflow, data)
        if no_wait:
            click.echo(ref.run_id)
            return
        click.echo(json.dumps(ref.result(), indent=2, sort_keys=True))
    except HewerError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        hw.close()


if __name__ == "__main__":
    main()
