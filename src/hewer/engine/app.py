"""The engine process: store, domain core, gRPC server and REST API, started and stopped
in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Any, TypeGuard

from grpc import aio
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from hewer import tls
from hewer.config import LOOPBACK_HOSTS, EngineSettings
from hewer.engine.api.app import build_app
from hewer.engine.api.ops import build_ops_app
from hewer.engine.api.relay import ApiSwitch
from hewer.engine.api.server import ApiServer
from hewer.engine.core.auth import TokenAuthority, Unauthenticated, unverified_claims
from hewer.engine.core.clock import Clock, SystemClock
from hewer.engine.core.lease import LeaseKeeper
from hewer.engine.core.scopes import Scope
from hewer.engine.core.service import EngineCore
from hewer.engine.grpc.relay import Relay, Switch, local_handlers
from hewer.engine.grpc.server import new_server
from hewer.engine.metrics import EngineMetrics
from hewer.store import Store, open_store
from hewer.store._protocol import Leases

logger = logging.getLogger(__name__)

DEFAULT_TENANT = "default"


class Engine:
    """A running engine. ``async with Engine(settings) as engine: ...``

    On SQLite the engine always schedules. On PostgreSQL several engines may share the
    database: each listens and accepts every call, the one holding the scheduling lease
    serves them with its engine core, and the others relay them to it (see
    :mod:`hewer.engine.core.lease` and :mod:`hewer.engine.grpc.relay`)."""

    def __init__(
        self, settings: EngineSettings, *, clock: Clock | None = None, store: Store | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.store = store or open_store(settings.store_url, pool_size=settings.database_pool_size)
        self.core = self._new_core()
        """The engine core of the current (or last) term of scheduling."""
        self._core_fresh = True  # never started: the first term uses it
        self._server: aio.Server | None = None
        self._api: ApiServer | None = None
        self.auth = TokenAuthority(self.store, self.clock)
        self._stopped = asyncio.Event()
        self.port = settings.port
        self.api_port = settings.api_port
        self.token = ""
        self.default_tenant_id = ""
        self.keeper: LeaseKeeper | None = None
        self.relay: Relay | None = None
        self._switch = Switch()
        self._api_switch = ApiSwitch(None, settings.relay_wait.total_seconds())
        self.metrics = EngineMetrics(self.store)
        self._api_switch.ops = build_ops_app(self.store, self.metrics, self._role)
        self._health = HealthServicer()
        self._scheduling = False
        self._term: int | None = None
        self._roles: asyncio.Task[None] | None = None
        self._changing: asyncio.Future[None] | None = None
        self.terms = 0  # terms of scheduling begun by this process

    def _new_core(self) -> EngineCore:
        s = self.settings
        return EngineCore(
            self.store,
            self.clock,
            inactive_after=s.inactive_after.total_seconds(),
            max_reassignments=None if s.max_reassignments < 0 else s.max_reassignments,
            max_message_bytes=s.max_message_bytes,
        )

    @property
    def address(self) -> str:
        return self.settings.advertised_address

    @property
    def api_url(self) -> str:
        """The REST API's base URL (what tokens carry as ``server_url``)."""
        return self.settings.server_url

    @property
    def scheduling(self) -> bool:
        """Whether this engine serves calls with its own core now (else it relays them)."""
        return self._scheduling

    async def start(self) -> None:
        check_tls(self.settings)
        raise_open_files_limit()
        quiet_accept_errors(asyncio.get_running_loop())
        await self.store.open()
        tenant = await self.store.tenant_ensure(DEFAULT_TENANT, self.clock.now())
        self.default_tenant_id = tenant.id
        await self.auth.load()
        s = self.settings
        server = new_server(s.max_message_bytes)
        server.add_generic_rpc_handlers((self._switch,))
        # Answered by every replica itself (the switch knows none of its methods).
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = f"{s.host}:{s.port}"
        if s.tls_cert is not None and s.tls_key is not None:
            port = server.add_secure_port(
                address, tls.server_credentials(s.tls_cert, s.tls_key, s.tls_client_ca)
            )
        else:
            port = server.add_insecure_port(address)
        if port == 0:
            await self.store.close()
            raise OSError(f"could not bind gRPC to {s.host}:{s.port}")
        api = ApiServer(
            self._api_switch,
            s.api_listen_host,
            s.api_port,
            read_seconds=s.http_request_timeout.total_seconds(),
            tls=(s.tls_cert, s.tls_key, s.tls_client_ca)
            if s.tls_cert is not None and s.tls_key is not None
            else None,
        )
        try:
            # Both listeners are bound before tokens are minted: they carry the real ports.
            api_port = api.bind()
        except OSError:
            await server.stop(None)
            await self.store.close()
            raise
        self.port, self.api_port = port, api_port
        if (s.port, s.api_port) != (port, api_port):
            self.settings = s.model_copy(update={"port": port, "api_port": api_port})
        self.token, token_is_new = await self._local_token()
        self._server, self._api = server, api
        try:
            if _shared(self.store):
                await self._start_replica(self.store)
            else:
                await self._lead(None)
            await server.start()
            await api.start()
        except BaseException:
            await self.stop(grace=0)
            raise
        await self._health.set(grpc_health.OVERALL_HEALTH, health_pb2.HealthCheckResponse.SERVING)
        # Written once the server listens: a client that finds the file can connect.
        if token_is_new:
            write_private(self.settings.token_file, self.token)
        logger.info(
            "hewer engine listening on %s, HTTP API on %s (database %s%s); token for tenant "
            "%r in %s (more with: hewer token create)",
            self.address,
            self.api_url,
            self.settings.store_display,
            "" if self.keeper is None else f", replica {self.keeper.replica_id}",
            DEFAULT_TENANT,
            self.settings.token_file,
        )
        exposed = [
            host
            for host in {self.settings.host, self.settings.api_host or self.settings.host}
            if host.lower() not in LOOPBACK_HOSTS
        ]
        if exposed and not self.settings.tls:
            logger.warning(
                "listening beyond loopback (%s) without TLS: tokens and task data cross the "
                "network in clear text; keep these ports on a private network or put a "
                "TLS-terminating proxy in front",
                ", ".join(sorted(exposed)),
            )

    # -- replicas ---------------------------------------------------------------------------

    async def _start_replica(self, store: Leases) -> None:
        s = self.settings
        keeper = LeaseKeeper(
            store,
            self.clock,
            replica_id=s.replica_id or f"{socket.gethostname()}:{self.port}",
            grpc_address=s.replica_address(self.port, s.host),
            api_address=s.replica_address(self.api_port, s.api_listen_host),
            ttl=s.lease_ttl.total_seconds(),
        )
        self.keeper = keeper
        credentials, context = relay_tls(s)
        self.relay = Relay(
            keeper, s.max_message_bytes, s.relay_wait.total_seconds(), credentials=credentials
        )
        self._api_switch.tls = context
        self._switch.relay_with(self.relay)
        self._api_switch.keeper = keeper
        await keeper.start()
        await self._follow_lease()
        self._roles = asyncio.create_task(self._roles_forever(keeper), name="hewer-roles")

    async def _roles_forever(self, keeper: LeaseKeeper) -> None:
        while True:
            changed = keeper.watch()
            # Shielded: a stop() arriving mid-change waits for it (see stop), rather than
            # leaving a half-stopped core running.
            self._changing = asyncio.ensure_future(self._follow_lease())
            try:
                await asyncio.shield(self._changing)
            except Exception:
                logger.exception("could not change this replica's role; trying again")
                await asyncio.sleep(keeper.interval)
                continue
            await changed.wait()

    async def _follow_lease(self) -> None:
        """Schedule while the lease is held here, relay otherwise."""
        keeper = self.keeper
        assert keeper is not None
        want = keeper.token
        if want == self._term:
            return
        assert isinstance(self.store, Leases)
        if self._scheduling and want is not None and want == (self._term or 0) + 1:
            # Taken back by this replica with the very next token (its renewal had failed,
            # nobody claimed it meanwhile): nothing was decided elsewhere, so the core goes
            # on under the new token.
            self.store.fence(keeper.lease, want)
            self._term = want
            logger.info("scheduling lease renewed as term %d", want)
            return
        if self._scheduling:
            await self._step_down()
        if want is not None:
            self.store.fence(keeper.lease, want)
            await self._lead(want)

    async def _lead(self, token: int | None) -> None:
        """Begin a term of scheduling: a core of our own, built from the database."""
        core = self.core if self._core_fresh else self._new_core()
        self._core_fresh = False
        self.core = core
        if self.keeper is not None:
            core.loop.on_fenced = self.keeper.fenced
        try:
            await core.start()
            if self.terms or (token is not None and token > 1):
                # A term after another one (here or on another replica): workers are still
                # delivering the reports the last holder did not take; judge no deadline
                # until they could have (as after a database outage).
                core.loop.back_at = self.clock.monotonic()
        except Exception as exc:
            # Whatever failed (the database, or a bug on rebuilding), this replica must not
            # sit on a lease it cannot use: every other replica would relay to it.
            logger.error("could not take up scheduling: %s", exc, exc_info=exc)
            await core.stop(grace=0)
            if self.keeper is None:
                raise
            await self.keeper.give_up()
            return
        core.loop.on_commit = self.metrics.committed
        self.metrics.core = core
        self._switch.local = local_handlers(core, self.auth, self.settings.max_message_bytes)
        self._api_switch.local = build_app(core, self.auth, self.metrics)
        self._scheduling, self._term = True, token
        self.terms += 1
        if token is not None:
            logger.info("scheduling (term %d)", token)

    async def _step_down(self) -> None:
        """End the term: new calls are relayed, the core's streams close (their workers
        reconnect and are relayed to the replica that schedules now)."""
        self._switch.local = None
        self._api_switch.local = None
        self.metrics.core = None
        self._scheduling, self._term = False, None
        logger.warning("no longer scheduling; relaying calls to the replica that does")
        await self.core.stop(grace=0)

    # -- tokens -----------------------------------------------------------------------------
    async def _local_token(self) -> tuple[str, bool]:
        """The default tenant's token (reused from the state dir while still valid), and
        whether it is new."""
        path = self.settings.token_file
        if path.exists():
            existing = path.read_text(encoding="utf-8").strip()
            try:
                principal = await self.auth.verify(existing)
                claims = unverified_claims(existing)
                if (
                    principal.tenant_id == self.default_tenant_id
                    and claims.get("grpc_broadcast_address") == self.address
                    and claims.get("server_url") == self.settings.server_url
                ):
                    return existing, False
            except Unauthenticated:
                pass
        token = await self.auth.mint(
            self.default_tenant_id,
            "local",
            self.settings.token_ttl.total_seconds(),
            server_url=self.settings.server_url,
            grpc_address=self.address,
        )
        return token, True

    def _role(self) -> dict[str, Any]:
        """This replica's part, for /health and /ready (nothing on SQLite: one engine)."""
        keeper = self.keeper
        if keeper is None:
            return {}
        holder = keeper.replica_id if keeper.token is not None else keeper.holder
        return {
            "replica": keeper.replica_id,
            "scheduling": self._scheduling,
            "scheduler": holder if isinstance(holder, str) else holder and holder.holder,
        }

    async def stop(self, grace: float | None = None) -> None:
        """Stop: calls in flight get ``grace`` seconds (default: the shutdown_grace setting)
        to finish, then the core writes what it holds and the lease is handed over."""
        if grace is None:
            grace = self.settings.shutdown_grace.total_seconds()
        await self._health.enter_graceful_shutdown()
        roles, self._roles = self._roles, None
        if roles is not None:
            roles.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await roles
        if self._changing is not None:
            with contextlib.suppress(Exception):
                await self._changing  # a change of role under way ends first
        if self._api is not None:
            api, self._api = self._api, None
            await api.stop()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        self._switch.local = None
        self._api_switch.local = None
        self._scheduling = False
        await self.core.stop()
        if self.keeper is not None:
            # After the core stopped writing: the next replica may take over at once.
            await self.keeper.stop()
        if self.relay is not None:
            await self.relay.close()
        await self._api_switch.close()
        await self.store.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _shared(store: Store) -> TypeGuard[Leases]:
    """Whether several engines may share the store (it keeps a scheduling lease)."""
    return isinstance(store, Leases)


def write_private(path: Path, text: str) -> None:
    """Write a secret file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode applies only to a file it creates
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")


async def mint_token(
    settings: EngineSettings, tenant: str, name: str, scope: Scope = Scope.ADMIN
) -> str:
    """Mint a token straight against the database (the engine need not be running)."""
    clock = SystemClock()
    store = open_store(settings.store_url, pool_size=settings.database_pool_size)
    await store.open()
    try:
        found = await store.tenant_ensure(tenant, clock.now())
        auth = TokenAuthority(store, clock)
        await auth.load()
        return await auth.mint(
            found.id,
            name,
            settings.token_ttl.total_seconds(),
            server_url=settings.server_url,
            grpc_address=settings.advertised_address,
            scope=scope,
        )
    finally:
        await store.close()


async def revoke_token(settings: EngineSettings, token_or_id: str) -> bool:
    """Revoke a token (given as the token itself or its id); False if unknown or revoked."""
    token_id = token_or_id
    if token_or_id.count(".") == 2:
        token_id = str(unverified_claims(token_or_id).get("token_id", ""))
    store = open_store(settings.store_url, pool_size=settings.database_pool_size)
    await store.open()
    try:
        return await store.token_revoke(token_id, SystemClock().now())
    finally:
        await store.close()


# Highest soft limit on open files the engine asks for: each connection is a descriptor, and
# the default soft limit (1,024 on many systems) is reached by a modest fleet.
MAX_OPEN_FILES = 1 << 20
ACCEPT_ERROR_LOG_SECONDS = 10.0


def raise_open_files_limit() -> None:
    """Raise this process's soft limit on open files to its hard limit (bounded)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            logger.debug("could not raise the open files limit to %d: %s", target, exc)


class _QuietAcceptErrors:
    """A loop exception handler: failed accepts (out of file descriptors, usually) are
    logged once per interval with a count, instead of once per attempt; everything else
    goes to the handler that was there before."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.last = -ACCEPT_ERROR_LOG_SECONDS
        self.count = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if "accept" not in message or not isinstance(context.get("exception"), OSError):
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.count += 1
        now = loop.time()
        if now - self.last >= ACCEPT_ERROR_LOG_SECONDS:
            logger.error(
                "accepting connections fails (%d time(s) in the last %.0fs): %s",
                self.count,
                ACCEPT_ERROR_LOG_SECONDS,
                context.get("exception"),
            )
            self.last, self.count = now, 0


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Install ``_QuietAcceptErrors`` on ``loop`` (once)."""
    previous = loop.get_exception_handler()
    if not isinstance(previous, _QuietAcceptErrors):
        loop.set_exception_handler(_QuietAcceptErrors(previous))


def check_tls(settings: EngineSettings) -> None:
    """Refuse TLS files that cannot serve (ConfigurationError, one line naming them)."""
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls.check_pair(settings.tls_cert, settings.tls_key, "HEWER_TLS_CERT", "HEWER_TLS_KEY")
    for path, setting in (
        (settings.tls_client_ca, "HEWER_TLS_CLIENT_CA"),
        (settings.tls_root_ca, "HEWER_TLS_ROOT_CA"),
    ):
        if path is not None:
            tls.check_ca(path, setting)


def relay_tls(settings: EngineSettings) -> tuple[Any, Any]:
    """(gRPC channel credentials, ssl context) a replica relays to another with, or
    (None, None) without TLS. It trusts ``tls_root_ca`` (else ``tls_client_ca``, else the
    system's roots) and, under mTLS, presents its own certificate."""
    if not settings.tls:
        return None, None
    root = settings.tls_root_ca or settings.tls_client_ca
    mutual = settings.tls_client_ca is not None
    cert = settings.tls_cert if mutual else None
    key = settings.tls_key if mutual else None
    credentials = tls.channel_credentials(
        root, cert, key, settings=("HEWER_TLS_ROOT_CA", "HEWER_TLS_CERT", "HEWER_TLS_KEY")
    )
    return credentials, tls.client_context(root, cert, key)
