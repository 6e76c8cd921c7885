"""The engine's gRPC server: one listener carrying every Hatchet-compatible service."""

from __future__ import annotations

from grpc import aio

from hewer._proto import dispatcher_pb2_grpc, events_pb2_grpc, workflows_pb2_grpc
from hewer._proto.hewer.v1 import worker_pb2_grpc as hewer_v1_grpc
from hewer._proto.v1 import workflows_pb2_grpc as v1_workflows_pb2_grpc
from hewer.engine.core.auth import TokenAuthority
from hewer.engine.core.service import EngineCore
from hewer.engine.grpc.admin import AdminServicer
from hewer.engine.grpc.dispatcher import DispatcherServicer
from hewer.engine.grpc.events import EventsServicer
from hewer.engine.grpc.hewer_v1 import RunsServicer, WorkerServicer
from hewer.engine.grpc.workflows import WorkflowServicer

MAX_CONCURRENT_STREAMS = 1000


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Options that let SDK clients ping every 10 s without being sent GOAWAY."""
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


def build_server(
    core: EngineCore, auth: TokenAuthority, host: str, port: int, max_message_bytes: int
) -> tuple[aio.Server, int]:
    """A server with every service added and bound; returns it and the bound port."""
    server = aio.server(options=server_options(max_message_bytes))
    dispatcher_pb2_grpc.add_DispatcherServicer_to_server(DispatcherServicer(core, auth), server)
    events_pb2_grpc.add_EventsServiceServicer_to_server(EventsServicer(core, auth), server)
    workflows_pb2_grpc.add_WorkflowServiceServicer_to_server(WorkflowServicer(core, auth), server)
    v1_workflows_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(core, auth), server)
    worker = WorkerServicer(core, auth)
    worker.max_message_bytes = max_message_bytes
    hewer_v1_grpc.add_WorkerServicer_to_server(worker, server)
    hewer_v1_grpc.add_RunsServicer_to_server(RunsServicer(core, auth), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind gRPC to {host}:{port}")
    return server, bound
