"""Settings for the engine and the client, read from the environment (prefix ``HEWER_``).

Environment is read only when a settings object is built (at an entry point), never at import.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hewer import defaults
from hewer.durations import parse_duration

DEFAULT_GRPC_HOST = "127.0.0.1"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_GRPC_PORT = 7070
DEFAULT_STATE_DIR = Path(".hewer")
TOKEN_FILE_NAME = "token"


def _duration(value: object) -> object:
    """Accept "5s", "1m30s" or a number of seconds where a timedelta is expected."""
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    return value


class EngineSettings(BaseSettings):
    """Engine configuration; every field is also the env var ``HEWER_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="HEWER_", extra="ignore")

    host: str = Field(DEFAULT_GRPC_HOST, description="gRPC listen host")
    port: int = Field(DEFAULT_GRPC_PORT, description="gRPC listen port (0 = pick a free one)")
    broadcast_address: str | None = Field(
        None, description="host:port workers use to reach the engine (baked into tokens)"
    )
    api_host: str | None = Field(
        None, description="HTTP API listen host (default: the gRPC listen host)"
    )
    api_port: int = Field(
        8080, description="HTTP API listen port (0 = pick a free one); named in tokens"
    )
    api_url: str | None = Field(
        None,
        description="HTTP API base URL written into tokens as server_url "
        "(default: http://<advertised host>:<api port>)",
    )
    database: Path = Field(Path("hewer.db"), description="SQLite database file")
    database_url: str | None = Field(
        None,
        description="database URL: postgresql://user@host:port/db or sqlite:///path "
        "(default: the SQLite file named by database)",
    )
    database_pool_size: int = Field(
        10, ge=1, description="connections the engine keeps to PostgreSQL (not for SQLite)"
    )
    state_dir: Path = Field(
        DEFAULT_STATE_DIR, description="directory for local state (the default tenant's token)"
    )
    heartbeat_interval: timedelta = Field(
        timedelta(seconds=defaults.HEARTBEAT_INTERVAL_S),
        description="how often workers are expected to heartbeat",
    )
    inactive_after: timedelta = Field(
        timedelta(seconds=30), description="silence after which a worker is INACTIVE"
    )
    max_message_bytes: int = Field(4 * 1024 * 1024, description="gRPC message size limit")
    max_reassignments: int = Field(
        3,
        ge=-1,
        description="times a task may lose its worker before it fails (0: fail at the first "
        "loss; -1: never give up)",
    )
    token_ttl: timedelta = Field(timedelta(days=90), description="lifetime of minted tokens")
    replica_id: str | None = Field(
        None,
        description="this engine's name among replicas sharing a PostgreSQL database "
        "(default: <host name>:<gRPC port>; a restarted replica of the same name takes its "
        "lease back at once)",
    )
    replica_host: str | None = Field(
        None,
        description="host other replicas reach this one at (default: the listen host, or "
        "the machine's host name when listening on every interface)",
    )
    lease_ttl: timedelta = Field(
        timedelta(seconds=5),
        description="term of the scheduling lease among replicas: a replica that stops "
        "renewing it is taken over after about this long (PostgreSQL only)",
    )
    relay_wait: timedelta = Field(
        timedelta(seconds=10),
        description="how long a replica holds a call while no replica schedules (a "
        "takeover) before answering UNAVAILABLE",
    )
    tls_cert: Path | None = Field(
        None, description="PEM certificate (chain) the engine presents on both ports: TLS on"
    )
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(
        None,
        description="PEM CA bundle: clients must present a certificate it signed (mTLS)",
    )
    tls_root_ca: Path | None = Field(
        None,
        description="PEM CA bundle this engine trusts when it relays to another replica "
        "(default: tls_client_ca, else the system's roots)",
    )
    http_request_timeout: timedelta = Field(
        timedelta(seconds=10),
        description="how long an HTTP request's headers and body may take to arrive before "
        "the connection is closed (408)",
    )
    shutdown_grace: timedelta = Field(
        timedelta(seconds=2),
        description="how long a stopping engine lets calls in flight finish (a second "
        "SIGTERM/SIGINT stops it at once)",
    )

    _coerce = field_validator(
        "heartbeat_interval",
        "shutdown_grace",
        "inactive_after",
        "token_ttl",
        "lease_ttl",
        "relay_wait",
        "http_request_timeout",
        mode="before",
    )(_duration)

    @field_validator("http_request_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("HEWER_HTTP_REQUEST_TIMEOUT must be more than 0")
        return value

    @model_validator(mode="after")
    def _tls_pairs(self) -> EngineSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("HEWER_TLS_CERT and HEWER_TLS_KEY go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("HEWER_TLS_CLIENT_CA (mTLS) needs HEWER_TLS_CERT and HEWER_TLS_KEY")
        return self

    @property
    def tls(self) -> bool:
        """Whether both ports speak TLS."""
        return self.tls_cert is not None

    @property
    def store_url(self) -> str:
        """Where the store is: ``database_url`` as given (never normalised as a path, which
        would fold its ``//``), else the SQLite file."""
        return self.database_url or str(self.database)

    @property
    def store_display(self) -> str:
        """``store_url`` fit for a log line: a password in it is masked."""
        url = self.store_url
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def advertised_address(self) -> str:
        if self.broadcast_address:
            return self.broadcast_address
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{host}:{self.port}"

    def replica_address(self, port: int, listen_host: str) -> str:
        """host:port at which other replicas reach this one's listener on ``port``, bound
        to ``listen_host``."""
        host = self.replica_host
        if not host:
            wildcard = listen_host in ("0.0.0.0", "::", "")
            host = socket.gethostname() if wildcard else listen_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{port}"

    @property
    def api_listen_host(self) -> str:
        return self.api_host if self.api_host is not None else self.host

    @property
    def server_url(self) -> str:
        """The REST base URL clients use (the token's ``server_url`` claim)."""
        if self.api_url:
            return self.api_url.rstrip("/")
        host = self.advertised_address.rsplit(":", 1)[0]
        api_host = self.api_listen_host
        if api_host not in ("0.0.0.0", "::", "") and api_host != self.host:
            # The API listens on an address of its own: that is where clients reach it.
            host = f"[{api_host}]" if ":" in api_host else api_host
        return f"{'https' if self.tls else 'http'}://{host}:{self.api_port}"

    @property
    def token_file(self) -> Path:
        return self.state_dir / TOKEN_FILE_NAME


class ClientSettings(BaseSettings):
    """Client and worker configuration; every field is also the env var ``HEWER_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="HEWER_", extra="ignore")

    token: str | None = Field(None, description="API token (default: the local engine's token)")
    host_port: str | None = Field(
        None,
        description="engine gRPC address host:port, or several replicas' as "
        "host:port,host:port (default: from the token)",
    )
    server_url: str | None = Field(
        None, description="engine HTTP API base URL (default: the token's server_url claim)"
    )
    state_dir: Path = Field(DEFAULT_STATE_DIR, description="where a local engine left its token")
    namespace: str = Field("", description="prefix applied to workflow names")
    heartbeat_interval: timedelta = Field(
        timedelta(seconds=defaults.HEARTBEAT_INTERVAL_S),
        description="how often the worker heartbeats",
    )
    grace_period: timedelta = Field(
        timedelta(seconds=30), description="how long a stopping worker waits for in-flight tasks"
    )
    max_message_bytes: int = Field(4 * 1024 * 1024, description="gRPC message size limit")
    worker_healthcheck_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="port of the worker's /health and /metrics server (off when unset)",
    )
    worker_healthcheck_host: str = Field(
        "0.0.0.0", description="address the worker's health server binds"
    )
    worker_healthcheck_loop_threshold: timedelta = Field(
        timedelta(seconds=5),
        description="a worker whose event loop is blocked longer than this is UNHEALTHY",
    )

    tls_strategy: Literal["none", "tls", "mtls"] | None = Field(
        None,
        description="none, tls or mtls (default: tls when a TLS file below is set or the "
        "engine's URL is https, else none)",
    )
    tls_root_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle the engine's certificate is checked against "
        "(default: the system's roots)",
    )
    tls_cert_file: Path | None = Field(None, description="PEM client certificate (mTLS)")
    tls_key_file: Path | None = Field(None, description="PEM key of tls_cert_file")
    tls_server_name: str | None = Field(
        None, description="name the engine's certificate must carry (default: the host dialed)"
    )

    _coerce = field_validator(
        "heartbeat_interval", "grace_period", "worker_healthcheck_loop_threshold", mode="before"
    )(_duration)

    @model_validator(mode="after")
    def _tls_files(self) -> ClientSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "HEWER_TLS_CERT_FILE and HEWER_TLS_KEY_FILE go together: give both or neither"
            )
        if self.tls_strategy == "mtls" and self.tls_cert_file is None:
            raise ValueError("HEWER_TLS_STRATEGY=mtls needs HEWER_TLS_CERT_FILE and _KEY_FILE")
        return self

    def tls_mode(self, server_url: str | None) -> str:
        """``tls_strategy``, or what the other settings and the engine's URL imply."""
        if self.tls_strategy is not None:
            return self.tls_strategy
        if self.tls_cert_file is not None:
            return "mtls"
        if self.tls_root_ca_file is not None or (server_url or "").startswith("https:"):
            return "tls"
        return "none"

    @property
    def token_file(self) -> Path:
        return self.state_dir / TOKEN_FILE_NAME
