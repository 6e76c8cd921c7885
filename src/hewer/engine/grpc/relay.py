"""Replicas that do not schedule relay their callers to the one that does.

Every gRPC call reaches the engine through :class:`Switch`. While this replica holds the
scheduling lease, the switch hands calls to the services built on its engine core; otherwise
it forwards them, as raw bytes with their metadata and deadline, to the replica named by the
lease. A worker's action stream, a client's run subscription and every unary call are
relayed the same way, so clients may connect to any replica. When the scheduling replica
goes away, its relayed calls end with UNAVAILABLE and the clients call again; by then the
relay waits (bounded) for the next holder, so the call lands there.

The relay adds no state of its own: what must survive a lost relay (an assignment sent but
not acknowledged, a result not yet written) is covered by the engine's acknowledgement and
fencing rules, exactly as for a stream broken between a worker and the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf.descriptor import FileDescriptor
from grpc import aio

from hewer._proto import (
    dispatcher_pb2,
    dispatcher_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    workflows_pb2,
    workflows_pb2_grpc,
)
from hewer._proto.hewer.v1 import worker_pb2 as hewer_v1
from hewer._proto.hewer.v1 import worker_pb2_grpc as hewer_v1_grpc
from hewer._proto.v1 import dispatcher_pb2 as v1_dispatcher_pb2
from hewer._proto.v1 import dispatcher_pb2_grpc as v1_dispatcher_pb2_grpc
from hewer._proto.v1 import workflows_pb2 as v1_workflows_pb2
from hewer._proto.v1 import workflows_pb2_grpc as v1_workflows_pb2_grpc
from hewer.engine.core.auth import TokenAuthority
from hewer.engine.core.lease import RELAYED_HEADER, LeaseKeeper
from hewer.engine.core.service import EngineCore
from hewer.engine.grpc._common import tolerant
from hewer.engine.grpc.admin import AdminServicer
from hewer.engine.grpc.dispatcher import DispatcherServicer
from hewer.engine.grpc.durable import V1DispatcherServicer
from hewer.engine.grpc.events import EventsServicer
from hewer.engine.grpc.hewer_v1 import RunsServicer, WorkerServicer
from hewer.engine.grpc.workflows import WorkflowServicer

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # generic in the type stubs only
    _GenericHandler = grpc.GenericRpcHandler[Any, Any]
else:
    _GenericHandler = grpc.GenericRpcHandler

_FILES: tuple[FileDescriptor, ...] = (
    dispatcher_pb2.DESCRIPTOR,
    events_pb2.DESCRIPTOR,
    workflows_pb2.DESCRIPTOR,
    v1_workflows_pb2.DESCRIPTOR,
    v1_dispatcher_pb2.DESCRIPTOR,
    hewer_v1.DESCRIPTOR,
)

# Headers the transport sets on each hop; the rest of a call's metadata (its token above
# all) travels with it.
_HOP_HEADERS = frozenset({"user-agent", "content-type", "te", "host", "accept-encoding"})

# How long a relayed call waits for a replica to take the lease over before it is answered
# UNAVAILABLE (a takeover needs about the lease's term).
DEFAULT_WAIT_S = 10.0


def method_shapes() -> dict[str, tuple[bool, bool]]:
    """Every method the engine serves: full name -> (request streams, response streams)."""
    shapes: dict[str, tuple[bool, bool]] = {}
    for file in _FILES:
        for service in file.services_by_name.values():
            for method in service.methods:
                shapes[f"/{service.full_name}/{method.name}"] = (
                    method.client_streaming,
                    method.server_streaming,
                )
    return shapes


class _Collector:
    """Stands in for a server when the generated ``add_*_to_server`` functions register a
    servicer: keeps the method handlers they build."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers come through add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        for name, handler in handlers.items():
            self.handlers[f"/{service}/{name}"] = handler


def local_handlers(
    core: EngineCore, auth: TokenAuthority, max_message_bytes: int
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The method handlers of every service, served by ``core``."""
    collector = _Collector()
    server = cast(aio.Server, collector)
    dispatcher_pb2_grpc.add_DispatcherServicer_to_server(DispatcherServicer(core, auth), server)
    events_pb2_grpc.add_EventsServiceServicer_to_server(EventsServicer(core, auth), server)
    workflows_pb2_grpc.add_WorkflowServiceServicer_to_server(WorkflowServicer(core, auth), server)
    v1_workflows_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(core, auth), server)
    v1_dispatcher_pb2_grpc.add_V1DispatcherServicer_to_server(
        V1DispatcherServicer(core, auth), server
    )
    worker = WorkerServicer(core, auth)
    worker.max_message_bytes = max_message_bytes
    hewer_v1_grpc.add_WorkerServicer_to_server(worker, server)
    hewer_v1_grpc.add_RunsServicer_to_server(RunsServicer(core, auth), server)
    return {method: tolerant(method, h) for method, h in collector.handlers.items()}


class Switch(_GenericHandler):
    """Routes each call to this replica's services (``local``) or to the relay."""

    def __init__(self) -> None:
        self.local: dict[str, grpc.RpcMethodHandler[Any, Any]] | None = None
        self._relayed: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def relay_with(self, relay: Relay) -> None:
        """Relay calls through ``relay`` while ``local`` is None (else they are refused)."""
        self._relayed = {m: relay.handler(m, *shape) for m, shape in method_shapes().items()}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        local = self.local
        if local is not None:
            return local.get(method)
        return self._relayed.get(method)


class Relay:
    """Forwards calls to the replica holding the scheduling lease."""

    def __init__(
        self,
        keeper: LeaseKeeper,
        max_message_bytes: int,
        wait_s: float = DEFAULT_WAIT_S,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.keeper = keeper
        self.wait_s = wait_s
        self._credentials = credentials
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # A paused scheduling replica keeps its socket open: notice within 3 s.
            ("grpc.keepalive_time_ms", 1_000),
            ("grpc.keepalive_timeout_ms", 2_000),
            ("grpc.http2.ping_timeout_ms", 2_000),  # what gRPC core really waits for
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1_000),
        ]
        self._address: str | None = None
        self._channel: aio.Channel | None = None
        self.relayed = 0  # calls forwarded, for /metrics and tests

    async def close(self) -> None:
        channel, self._channel, self._address = self._channel, None, None
        if channel is not None:
            await channel.close(grace=None)

    # -- handlers ---------------------------------------------------------------------------

    def handler(
        self, method: str, streams_in: bool, streams_out: bool
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """A handler relaying ``method``: the request (bytes, or a stream of them) goes up
        as it came, the answer (one, or a stream) comes back the same way."""

        def open_call(channel: aio.Channel, request: Any, context: Any) -> Any:
            make: dict[tuple[bool, bool], Callable[..., Any]] = {
                (False, False): channel.unary_unary,
                (False, True): channel.unary_stream,
                (True, False): channel.stream_unary,
                (True, True): channel.stream_stream,
            }
            metadata, timeout = self._metadata(context), context.time_remaining()
            multicallable = make[(streams_in, streams_out)](method, None, None)
            return multicallable(request, metadata=metadata, timeout=timeout)

        if streams_out:

            async def relay_stream(
                request: Any, context: aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[bytes]:
                call = open_call(await self._channel_for(context), request, context)
                async for message in self._responses(call, context):
                    yield message

            wrap = (
                grpc.stream_stream_rpc_method_handler
                if streams_in
                else (grpc.unary_stream_rpc_method_handler)
            )
            return wrap(relay_stream)

        async def relay_one(request: Any, context: aio.ServicerContext[Any, Any]) -> bytes:
            call = open_call(await self._channel_for(context), request, context)
            try:
                return cast(bytes, await call)
            except aio.AioRpcError as exc:
                await self._failed(exc, context)
                raise  # unreachable: _failed aborted the call

        wrap = (
            grpc.stream_unary_rpc_method_handler
            if streams_in
            else (grpc.unary_unary_rpc_method_handler)
        )
        return wrap(relay_one)

    async def _responses(
        self, call: Any, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        try:
            async for message in call:
                yield message
        except aio.AioRpcError as exc:
            await self._failed(exc, context)
        finally:
            # The caller went away (or the stream ended): the upstream call ends with it.
            call.cancel()

    # -- plumbing ---------------------------------------------------------------------------

    async def _channel_for(self, context: aio.ServicerContext[Any, Any]) -> aio.Channel:
        """The channel to the replica that schedules, waiting (bounded by the call's own
        deadline) while a takeover is under way."""
        timeout = context.time_remaining()
        wait = self.wait_s if timeout is None else max(0.0, min(self.wait_s, timeout - 0.05))
        metadata = context.invocation_metadata() or ()
        if any(key == RELAYED_HEADER for key, _ in metadata):
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"relayed to replica {self.keeper.replica_id}, which does not schedule; "
                "retry shortly",
            )
        holder = await self.keeper.wait_holder(within=wait)
        if holder is None or holder.holder == self.keeper.replica_id:
            # (Ourselves: the lease was just taken here and the services are being built.)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "no engine replica is scheduling right now (a takeover is under way); "
                "retry shortly",
            )
        assert holder is not None
        self.relayed += 1
        return self._channel_to(holder.grpc_address)

    def _metadata(self, context: aio.ServicerContext[Any, Any]) -> list[tuple[str, str | bytes]]:
        forwarded: list[tuple[str, str | bytes]] = [
            (key, value)
            for key, value in context.invocation_metadata() or ()
            if not key.startswith((":", "grpc-")) and key not in _HOP_HEADERS
        ]
        forwarded.append((RELAYED_HEADER, self.keeper.replica_id))
        return forwarded

    def _channel_to(self, address: str) -> aio.Channel:
        if self._address != address or self._channel is None:
            old = self._channel
            self._channel = (
                aio.insecure_channel(address, options=self._options)
                if self._credentials is None
                else aio.secure_channel(address, self._credentials, options=self._options)
            )
            self._address = address
            if old is not None:
                # Calls still on it end by themselves (their replica is gone or stepped down).
                task = asyncio.get_running_loop().create_task(old.close(grace=5.0))
                task.add_done_callback(_quiet)
        return self._channel

    async def _failed(self, exc: aio.AioRpcError, context: aio.ServicerContext[Any, Any]) -> None:
        code = exc.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            self.keeper.poke()  # the holder may be gone: look at the lease again now
        details = exc.details() or ""
        if code is grpc.StatusCode.CANCELLED and context.cancelled():
            return
        await context.abort(code, details)


def _quiet(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
