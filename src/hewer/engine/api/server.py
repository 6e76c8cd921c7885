"""Serving the REST app with uvicorn on the engine's own event loop.

The socket is bound by us first (so port 0 resolves to a real port before tokens are
minted), then handed to uvicorn. uvicorn's ``serve()`` is not used: it installs its own
signal handlers, and the engine process owns signals.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from pathlib import Path
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

REQUEST_READ_SECONDS = 10.0
"""Default of how long a request's head and body may take to arrive (from its first byte,
or from the connection's start or the previous response): slow clients cannot hold
connections."""
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_LINES = 100
MAX_CONNECTIONS = 1000
"""Connections served at once; more are answered 503 and closed at once."""
KEEP_ALIVE_SECONDS = 5
_BLANK_LINE = re.compile(rb"\n\r?\n")
_READING = (h11.IDLE, h11.SEND_BODY)  # the client's states while its request arrives


def _refusal(status: int, reason: str, message: str) -> bytes:
    body = message.encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with what it lacks against hostile clients: a deadline for
    reading each request (slowloris), limits on the size and number of header lines (431),
    and a bound on open connections."""

    read_seconds = REQUEST_READ_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head = bytearray()
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > MAX_CONNECTIONS:
            self._refuse(503, "Service Unavailable", "too many connections; try again later")
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            if not self._head:
                self._arm()  # a new request: its own deadline
            self._head += data
            # Where h11 itself ends a head: a blank line, CRLF or bare LF.
            end = _BLANK_LINE.search(self._head)
            head = self._head if end is None else self._head[: end.start()]
            if len(head) > MAX_HEADER_BYTES or head.count(b"\n") >= MAX_HEADER_LINES:
                self._refuse(
                    431,
                    "Request Header Fields Too Large",
                    f"request headers are limited to {MAX_HEADER_BYTES} bytes and "
                    f"{MAX_HEADER_LINES} lines",
                )
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._head = bytearray()  # the head is h11's now; the next one starts afresh
        if self.conn.their_state not in _READING:
            # All of it is in (DONE, or MUST_CLOSE after "Connection: close"): the app
            # takes its time answering.
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # the next request on this connection

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self._head:
            self.transport.close()  # an idle connection: nothing to answer
        else:
            self._refuse(
                408, "Request Timeout", f"the request took over {self.read_seconds:g}s to send"
            )

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self._disarm()
        if not self.transport.is_closing():
            logger.debug("HTTP %d to %s: %s", status, self.client, message)
            self.transport.write(_refusal(status, reason, message))
            self.transport.close()


class ApiServer:
    """``bind()`` then ``await start()``; ``await stop(grace)`` is idempotent."""

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        read_seconds: float = REQUEST_READ_SECONDS,
        tls: tuple[Path, Path, Path | None] | None = None,
    ) -> None:
        """``tls``: certificate, key, and the CA client certificates must be signed by
        (None: no client certificates asked for)."""
        self.tls = tls
        self.app = app
        self.host = host
        self.read_seconds = read_seconds
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
            http=type("Guarded", (GuardedH11Protocol,), {"read_seconds": self.read_seconds}),
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            # uvicorn answers 503 from this many on; GuardedH11Protocol refuses beyond it.
            limit_concurrency=MAX_CONNECTIONS + 1,
            **self._ssl_options(),
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

    def _ssl_options(self) -> dict[str, Any]:
        if self.tls is None:
            return {}
        cert, key, client_ca = self.tls
        options: dict[str, Any] = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
        if client_ca is not None:
            options.update(ssl_ca_certs=str(client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        return options

    async def stop(self) -> None:
        server, self._server = self._server, None
        sock, self._socket = self._socket, None
        if server is not None:
            server.should_exit = True
            await server.shutdown(sockets=[sock] if sock is not None else None)
        elif sock is not None:
            sock.close()
