"""The engine process: store, domain core, gRPC server and REST API, started and stopped
in order."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from types import TracebackType

from grpc import aio

from hewer.config import EngineSettings
from hewer.engine.api.app import build_app
from hewer.engine.api.server import ApiServer
from hewer.engine.core.auth import TokenAuthority, Unauthenticated, unverified_claims
from hewer.engine.core.clock import Clock, SystemClock
from hewer.engine.core.service import EngineCore
from hewer.engine.grpc.server import build_server
from hewer.store import Store, open_store

logger = logging.getLogger(__name__)

DEFAULT_TENANT = "default"


class Engine:
    """A running engine. ``async with Engine(settings) as engine: ...``"""

    def __init__(
        self, settings: EngineSettings, *, clock: Clock | None = None, store: Store | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.store = store or open_store(settings.store_url, pool_size=settings.database_pool_size)
        self.core = EngineCore(
            self.store,
            self.clock,
            inactive_after=settings.inactive_after.total_seconds(),
            max_reassignments=None
            if settings.max_reassignments < 0
            else settings.max_reassignments,
        )
        self._server: aio.Server | None = None
        self._api: ApiServer | None = None
        self.auth = TokenAuthority(self.store, self.clock)
        self._stopped = asyncio.Event()
        self.port = settings.port
        self.api_port = settings.api_port
        self.token = ""
        self.default_tenant_id = ""

    @property
    def address(self) -> str:
        return self.settings.advertised_address

    @property
    def api_url(self) -> str:
        """The REST API's base URL (what tokens carry as ``server_url``)."""
        return self.settings.server_url

    async def start(self) -> None:
        await self.store.open()
        tenant = await self.store.tenant_ensure(DEFAULT_TENANT, self.clock.now())
        self.default_tenant_id = tenant.id
        await self.auth.load()
        s = self.settings
        server, port = build_server(self.core, self.auth, s.host, s.port, s.max_message_bytes)
        api = ApiServer(build_app(self.core, self.auth), s.api_listen_host, s.api_port)
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
            await self.core.start()
            await server.start()
            await api.start()
        except BaseException:
            await self.stop(grace=0)
            raise
        # Written once the server listens: a client that finds the file can connect.
        if token_is_new:
            write_private(self.settings.token_file, self.token)
        logger.info(
            "hewer engine listening on %s, HTTP API on %s (database %s); token for tenant %r "
            "in %s (more with: hewer token create)",
            self.address,
            self.api_url,
            self.settings.store_display,
            DEFAULT_TENANT,
            self.settings.token_file,
        )

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

    async def stop(self, grace: float = 2.0) -> None:
        if self._api is not None:
            api, self._api = self._api, None
            await api.stop()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        await self.core.stop()
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


def write_private(path: Path, text: str) -> None:
    """Write a secret file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")


async def mint_token(settings: EngineSettings, tenant: str, name: str) -> str:
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
