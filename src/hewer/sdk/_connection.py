"""Where the engine is and how to talk to it: token, address, channels, call metadata.

Token and address are resolved lazily (on first use), so building a ``Hewer`` at import
time never touches the filesystem.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import random
import socket
import ssl
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from hewer import tls
from hewer.config import LOOPBACK_HOSTS, ClientSettings
from hewer.errors import ConfigurationError

logger = logging.getLogger(__name__)

LOCAL_HOSTS = LOOPBACK_HOSTS

# A worker sits on long-lived streams; keepalive pings detect half-dead connections (an
# engine replica paused or cut off: its socket stays open) within 8 s, so the worker moves
# to another replica, and keep NATs from dropping idle ones. The reconnect backoff caps keep
# a channel from waiting minutes (gRPC's default cap is 120 s) to notice that a restarted
# engine is back.
_KEEPALIVE_MS = 4_000
_KEEPALIVE_TIMEOUT_MS = 4_000
_MAX_RECONNECT_BACKOFF_MS = 5_000
_INITIAL_RECONNECT_BACKOFF_MS = 100


def host_of(host_port: str) -> str:
    """The host part of ``host:port`` (``[::1]:7070`` style brackets allowed)."""
    text = host_port.strip()
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else text
    if text.count(":") > 1:
        # A bare IPv6 address without a port.
        return text
    return text.rsplit(":", 1)[0] if ":" in text else text


def is_local(host_port: str) -> bool:
    """True when ``host_port`` (or every address of a list) names this machine's loopback."""
    return all(host_of(one).lower() in LOCAL_HOSTS for one in addresses(host_port))


def addresses(host_port: str) -> list[str]:
    """The addresses of ``a:7070,b:7070`` (one for a plain ``host:port``)."""
    return [part.strip() for part in host_port.split(",") if part.strip()] or [host_port]


def channel_target(host_port: str) -> str:
    """The gRPC target for an engine address, or for several (``a:7070,b:7070``: replicas).

    Several addresses become one static target of resolved IPs in random order (so that
    clients spread over the replicas); gRPC's pick_first connects to the first that answers
    and moves to the next when its connection breaks. Names are resolved when the channel is
    made; for replicas that come and go behind a DNS name, give that one name (gRPC
    re-resolves it) instead of a list."""
    parts = addresses(host_port)
    if len(parts) == 1:
        return parts[0]
    v4: list[str] = []
    v6: list[str] = []
    failures: list[str] = []
    for part in parts:
        host = host_of(part)
        port = part.rsplit(":", 1)[1] if ":" in part else ""
        if not port.isdigit():
            raise ConfigurationError(f"engine address {part!r} has no port (host:port)")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError as exc:
            failures.append(f"{part}: {exc}")
            continue
        for family, _, _, _, sockaddr in infos:
            ip = str(sockaddr[0])
            if family == socket.AF_INET and f"{ip}:{port}" not in v4:
                v4.append(f"{ip}:{port}")
            elif family == socket.AF_INET6 and f"[{ip}]:{port}" not in v6:
                v6.append(f"[{ip}]:{port}")
    # One target holds one family; IPv4 where there is any (loopback names resolve to both).
    chosen, scheme = (v4, "ipv4") if v4 else (v6, "ipv6")
    if not chosen:
        # Names that do not resolve now (a DNS blip, replicas being replaced): gRPC resolves
        # the first itself and keeps retrying, and the next channel tries the list again.
        logger.warning("cannot resolve any engine address now: %s", "; ".join(failures))
        return parts[0]
    if failures:
        logger.warning("engine addresses left out: %s", "; ".join(failures))
    random.shuffle(chosen)
    return f"{scheme}:{','.join(chosen)}"


def token_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, decoded without verifying it (the engine verifies).

    Returns an empty dict for a token that is not a JWT.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def resolve_token(settings: ClientSettings) -> str:
    """``settings.token``, else the token file a local engine wrote (local engines only)."""
    if settings.token:
        return settings.token.strip()
    if settings.host_port is None or is_local(settings.host_port):
        path = settings.token_file
        try:
            token = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ConfigurationError(
                f"no API token: set HEWER_TOKEN, or start a local engine "
                f"(`hewer engine`) so that {path} exists"
            ) from None
        except OSError as exc:
            raise ConfigurationError(f"cannot read the token file {path}: {exc}") from exc
        if not token:
            raise ConfigurationError(f"the token file {path} is empty; set HEWER_TOKEN")
        return token
    raise ConfigurationError(
        f"no API token for the remote engine at {settings.host_port}: set HEWER_TOKEN"
    )


@dataclass(frozen=True)
class ClientTls:
    """How a client speaks TLS to the engine: the CA it trusts (None: the system's roots),
    its own certificate and key under mTLS, and the name the engine's certificate must carry
    (None: the host dialed)."""

    root_ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return tls.channel_credentials(
            self.root_ca,
            self.cert,
            self.key,
            settings=("HEWER_TLS_ROOT_CA_FILE", "HEWER_TLS_CERT_FILE", "HEWER_TLS_KEY_FILE"),
        )

    def ssl_context(self) -> ssl.SSLContext:
        """For HTTPS calls to the engine's REST API."""
        return tls.client_context(self.root_ca, self.cert, self.key)


@dataclass(frozen=True)
class Connection:
    """A resolved engine endpoint plus credentials; makes channels on demand."""

    token: str
    address: str
    tenant_id: str | None = None
    max_message_bytes: int = 4 * 1024 * 1024
    tls: ClientTls | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata every call carries."""
        return (("authorization", f"bearer {self.token}"),)

    def channel_options(self) -> list[tuple[str, Any]]:
        """gRPC channel arguments shared by sync and async channels."""
        return [
            ("grpc.keepalive_time_ms", _KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
            # What gRPC core (1.7x) really waits for a ping's answer: 60 s unless set.
            ("grpc.http2.ping_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", _INITIAL_RECONNECT_BACKOFF_MS),
            ("grpc.min_reconnect_backoff_ms", _INITIAL_RECONNECT_BACKOFF_MS),
            ("grpc.max_reconnect_backoff_ms", _MAX_RECONNECT_BACKOFF_MS),
        ]

    def _secure_options(self) -> list[tuple[str, Any]]:
        options = self.channel_options()
        if self.tls is not None and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return options

    def sync_channel(self) -> grpc.Channel:
        """A new blocking channel (TLS if the connection says so)."""
        target = channel_target(self.address)
        if self.tls is None:
            return grpc.insecure_channel(
                target, options=self.channel_options(), compression=grpc.Compression.Gzip
            )
        return grpc.secure_channel(
            target,
            self.tls.credentials(),
            options=self._secure_options(),
            compression=grpc.Compression.Gzip,
        )

    def aio_channel(self) -> grpc.aio.Channel:
        """A new asyncio channel; call only with a running event loop."""
        target = channel_target(self.address)
        if self.tls is None:
            return grpc.aio.insecure_channel(
                target, options=self.channel_options(), compression=grpc.Compression.Gzip
            )
        return grpc.aio.secure_channel(
            target,
            self.tls.credentials(),
            options=self._secure_options(),
            compression=grpc.Compression.Gzip,
        )


def resolve_connection(settings: ClientSettings) -> Connection:
    """Work out token and address from settings (and the token's claims)."""
    token = resolve_token(settings)
    claims = token_claims(token)
    address = settings.host_port
    if not address:
        claimed = claims.get("grpc_broadcast_address")
        if not isinstance(claimed, str) or not claimed:
            raise ConfigurationError(
                "no engine address: set HEWER_HOST_PORT (the token carries no "
                "grpc_broadcast_address claim)"
            )
        address = claimed
    tenant = claims.get("sub")
    logger.debug("engine address %s", address)
    claimed_url = claims.get("server_url")
    server_url = settings.server_url or (claimed_url if isinstance(claimed_url, str) else None)
    mode = settings.tls_mode(server_url)
    return Connection(
        token=token,
        address=address,
        tenant_id=tenant if isinstance(tenant, str) else None,
        max_message_bytes=settings.max_message_bytes,
        tls=None
        if mode == "none"
        else ClientTls(
            root_ca=settings.tls_root_ca_file,
            cert=settings.tls_cert_file if mode == "mtls" else None,
            key=settings.tls_key_file if mode == "mtls" else None,
            server_name=settings.tls_server_name,
        ),
    )


def status_code(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status of an RPC error, or None for anything else."""
    if not isinstance(exc, grpc.RpcError):
        return None
    code = getattr(exc, "code", None)
    if code is None:
        return None
    value = code()
    return value if isinstance(value, grpc.StatusCode) else None


def status_details(exc: BaseException) -> str:
    """The engine's error text for an RPC error (``str(exc)`` otherwise)."""
    details = getattr(exc, "details", None)
    if callable(details):
        text = details()
        if isinstance(text, str) and text:
            return text
    return str(exc)


# Codes after which a call may be repeated: the engine was unreachable, overloaded or
# restarting. Anything else is an answer, and repeating the call would not change it.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


class ChannelPool:
    """Channels a client shares: one blocking channel, and one asyncio channel per loop.

    asyncio channels are bound to the loop that made them, so they are created lazily inside
    a running loop and never reused from another one.
    """

    def __init__(self, resolve: Callable[[], Connection]) -> None:
        self._resolve = resolve
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._sync: grpc.Channel | None = None
        self._aio: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, grpc.aio.Channel] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def connection(self) -> Connection:
        """The resolved connection (resolved on first use; raises ConfigurationError)."""
        with self._lock:
            if self._connection is None:
                self._connection = self._resolve()
            return self._connection

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata every call carries."""
        return self.connection.metadata

    def sync(self) -> grpc.Channel:
        """The shared blocking channel."""
        connection = self.connection
        with self._lock:
            if self._sync is None:
                self._sync = connection.sync_channel()
            return self._sync

    def aio(self) -> grpc.aio.Channel:
        """The running loop's asyncio channel."""
        loop = asyncio.get_running_loop()
        connection = self.connection
        with self._lock:
            channel = self._aio.get(loop)
            if channel is None:
                channel = connection.aio_channel()
                self._aio[loop] = channel
            return channel

    def close(self) -> None:
        """Close the blocking channel (asyncio ones close with ``aclose`` on their loop)."""
        with self._lock:
            channel, self._sync = self._sync, None
        if channel is not None:
            channel.close()

    async def aclose(self) -> None:
        """Close the running loop's asyncio channel."""
        loop = asyncio.get_running_loop()
        with self._lock:
            channel = self._aio.pop(loop, None)
        if channel is not None:
            await channel.close(None)
