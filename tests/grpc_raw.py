"""Calling any gRPC method the engine serves by its full name, with raw bytes: what the
descriptor-driven tests (hostile input, scopes) share."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor

from hewer.engine.grpc.relay import method_shapes


def input_type(method: str) -> Descriptor:
    """The request message type of ``/service/Method``."""
    service_name, _, name = method.strip("/").rpartition("/")
    service = descriptor_pool.Default().FindServiceByName(service_name)
    return service.FindMethodByName(name).input_type


def call_raw(
    channel: grpc.Channel,
    method: str,
    payload: bytes,
    metadata: list[tuple[str, str]],
    *,
    timeout: float = 10,
    stream_timeout: float = 3,
) -> grpc.StatusCode:
    """The status ``method`` answers ``payload`` with (a stream: its first message, or
    its end); a stream request sends the one message."""
    client_streams, server_streams = method_shapes()[method]
    identity = (lambda b: b, lambda b: b)
    try:
        if not client_streams and not server_streams:
            channel.unary_unary(method, *identity)(payload, metadata=metadata, timeout=timeout)
        elif not client_streams:
            for _ in channel.unary_stream(method, *identity)(
                payload, metadata=metadata, timeout=stream_timeout
            ):
                break
        elif not server_streams:
            channel.stream_unary(method, *identity)(
                iter([payload]), metadata=metadata, timeout=timeout
            )
        else:
            for _ in channel.stream_stream(method, *identity)(
                iter([payload]), metadata=metadata, timeout=stream_timeout
            ):
                break
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK
