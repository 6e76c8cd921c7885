"""The engine's gRPC server options (the server itself is built by the engine, with its
services behind :class:`hewer.engine.grpc.relay.Switch`)."""

from __future__ import annotations

from grpc import aio

MAX_CONCURRENT_STREAMS = 1000


def new_server(max_message_bytes: int) -> aio.Server:
    """An empty server with the engine's options (services are added by the caller)."""
    return aio.server(options=server_options(max_message_bytes))


# Connections without a call for this long are closed (GOAWAY; clients reconnect when they
# next call): idle connections do not pile up.
MAX_CONNECTION_IDLE_MS = 10 * 60 * 1000


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Options that let SDK clients (every 5 s; hatchet-sdk every 10 s) and relaying
    replicas (every 1 s) ping without being sent GOAWAY. Ping strikes stay unlimited: a
    worker resumed after a stall (SIGSTOP, a long GC) may send its overdue pings at once,
    and a GOAWAY then would delay the results it is retrying."""
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
        ("grpc.http2.min_ping_interval_without_data_ms", 1000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
