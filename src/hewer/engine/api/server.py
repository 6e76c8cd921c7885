"""Serving the REST app with uvicorn on the engine's own event loop.

The socket is bound by us first (so port 0 resolves to a real port before tokens are
minted), then handed to uvicorn. uvicorn's ``serve()`` is not used: it installs its own
signal handlers, and the engine process owns signals.
"""

from __future__ import annotations

import logging
import socket

import uvicorn
from starlette.types import ASGIApp

logger = logging.getLogger(__name__)


class ApiServer:
    """``bind()`` then ``await start()``; ``await stop(grace)`` is idempotent."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.port = port
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None

    def bind(self) -> int:
        """Bind the listening socket; returns the bound port. Raises OSError."""
        if self._socket is not None:
            return self.port
        host = self.host or "0.0.0.0"
        infos = socket.getaddrinfo(
            host, self.requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise OSError(
                f"could not bind the HTTP API to {host}:{self.requested_port}: {exc}"
            ) from exc
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        return self.port

    async def start(self, grace: float = 2.0) -> None:
        sock = self._socket
        if sock is None:
            raise RuntimeError("bind() the API server before starting it")
        config = uvicorn.Config(
            self.app,
            http="h11",
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=max(int(grace), 1),
        )
        config.load()
        server = uvicorn.Server(config)
        # What uvicorn's own serve() sets up before startup(); "off" = no ASGI lifespan.
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server = server

    async def stop(self) -> None:
        server, self._server = self._server, None
        sock, self._socket = self._socket, None
        if server is not None:
            server.should_exit = True
            await server.shutdown(sockets=[sock] if sock is not None else None)
        elif sock is not None:
            sock.close()
