"""The SDK's durable stream against a scripted ``V1Dispatcher`` over real gRPC on loopback:
what it says after a reconnect, and what a body sees when the stream breaks mid-request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from hewer._proto.v1 import dispatcher_pb2 as pb
from hewer._proto.v1 import dispatcher_pb2_grpc as pb_grpc
from hewer.sdk import _wire
from hewer.sdk._durable import DurableStream, Evicted

TASK = "task-1"


class Scripted(pb_grpc.V1DispatcherServicer):  # type: ignore[misc]
    """Connection 1 breaks when a wait_for arrives; later ones answer and record."""

    def __init__(self) -> None:
        self.connections = 0
        self.seen: list[list[str]] = []
        self.evicted: list[tuple[str, int]] = []
        self.status: list[list[tuple[str, int, int]]] = []
        self.memos = 0
        self.registered: list[str] = []
        self.release = asyncio.Event()
        self.completed: list[tuple[int, int]] = []  # (connection, node)

    async def DurableTask(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        self.connections += 1
        number = self.connections
        seen: list[str] = []
        self.seen.append(seen)
        async for req in request_iterator:
            kind = req.WhichOneof("message")
            seen.append(kind)
            if kind == "register_worker":
                self.registered.append(req.register_worker.worker_id)
                yield pb.DurableTaskResponse(
                    register_worker=pb.DurableTaskResponseRegisterWorker(worker_id="w")
                )
            elif kind == "wait_for" and number == 1:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "engine going away")
            elif kind == "wait_for":
                ref = pb.DurableEventLogEntryRef(
                    durable_task_external_id=TASK, invocation_count=1, node_id=1
                )
                yield pb.DurableTaskResponse(
                    wait_for_ack=pb.DurableTaskEventWaitForAckResponse(ref=ref)
                )
            elif kind == "worker_status":
                entries = [
                    (e.durable_task_external_id, e.invocation_count, e.node_id)
                    for e in req.worker_status.waiting_entries
                ]
                self.status.append(entries)
                for task_id, inv, node in entries:
                    ref = pb.DurableEventLogEntryRef(
                        durable_task_external_id=task_id, invocation_count=inv, node_id=node
                    )
                    yield pb.DurableTaskResponse(
                        entry_completed=pb.DurableTaskEventLogEntryCompletedResponse(
                            ref=ref, payload=b'{"CREATE":{}}'
                        )
                    )
            elif kind == "memo":
                m = req.memo
                self.memos += 1
                if self.memos == 1:
                    await self.release.wait()  # the first answer comes late
                ref = pb.DurableEventLogEntryRef(
                    durable_task_external_id=m.durable_task_external_id,
                    invocation_count=m.invocation_count,
                    node_id=self.memos,
                )
                yield pb.DurableTaskResponse(
                    memo_ack=pb.DurableTaskEventMemoAckResponse(ref=ref, memo_already_existed=False)
                )
            elif kind == "complete_memo":
                self.completed.append((number, req.complete_memo.ref.node_id))
            elif kind == "evict_invocation":
                m = req.evict_invocation
                self.evicted.append((m.durable_task_external_id, m.invocation_count))
                yield pb.DurableTaskResponse(
                    eviction_ack=pb.DurableTaskEvictionAckResponse(
                        durable_task_external_id=m.durable_task_external_id,
                        invocation_count=m.invocation_count,
                    )
                )


async def _serve(servicer: Scripted) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    pb_grpc.add_V1DispatcherServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _wait_request() -> Any:
    return _wire.durable_wait_request(TASK, 1, [], str, None)


async def _until(check: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not check():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.01)


async def test_a_request_cut_off_by_a_broken_stream_evicts_its_invocation() -> None:
    servicer = Scripted()
    server, address = await _serve(servicer)
    channel = grpc.aio.insecure_channel(address)
    stream = DurableStream(lambda: _wire.durable_stub(channel), (), lambda: "w")
    try:
        with pytest.raises(Evicted, match="broke"):
            await stream.request((TASK, 1), _wait_request())
        # Its body cannot know which node it got; later calls of that invocation are
        # refused too, and the engine is told to start the next invocation.
        with pytest.raises(Evicted):
            await stream.request((TASK, 1), _wait_request())
        await _until(lambda: servicer.evicted == [(TASK, 1)], "the eviction sent on reconnect")
        assert servicer.seen[1][:2] == ["register_worker", "evict_invocation"]
        # Another invocation goes on as usual, and its completion reaches it.
        stream.forget((TASK, 1))
        ack = await stream.request((TASK, 1), _wait_request())
        done = await stream.wait((TASK, 1), ack.ref.node_id)
        assert done.payload == b'{"CREATE":{}}' and not done.failure
        assert servicer.status[-1] == [(TASK, 1, 1)]
    finally:
        await stream.close()
        await channel.close()
        await server.stop(0)


async def test_waits_are_declared_again_after_a_reconnect() -> None:
    servicer = Scripted()
    servicer.connections = 1  # no scripted break: every wait_for is answered
    server, address = await _serve(servicer)
    channel = grpc.aio.insecure_channel(address)
    stream = DurableStream(lambda: _wire.durable_stub(channel), (), lambda: "w")
    try:
        await stream.ensure_started()
        # A wait declared while the stream is down is said once it is back.
        await server.stop(0)
        await _until(lambda: not stream._registered.is_set(), "the stream noticed")
        waiting = asyncio.ensure_future(stream.wait((TASK, 2), 5))
        await _until(lambda: (TASK, 2, 5) in stream._waits, "the wait registered")
        server, _ = await _serve_on(servicer, address)
        done = await asyncio.wait_for(waiting, 15)
        assert done.payload == b'{"CREATE":{}}'
        assert (TASK, 2, 5) in servicer.status[-1]
    finally:
        await stream.close()
        await channel.close()
        await server.stop(0)


async def _serve_on(servicer: Scripted, address: str) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    pb_grpc.add_V1DispatcherServicer_to_server(servicer, server)
    server.add_insecure_port(address)
    await server.start()
    return server, address


def _memo_request() -> Any:
    return _wire.durable_memo_request(TASK, 1, b"k")


async def test_a_late_answer_to_a_cancelled_request_is_not_handed_to_the_next() -> None:
    servicer = Scripted()
    servicer.connections = 1  # no scripted break
    server, address = await _serve(servicer)
    channel = grpc.aio.insecure_channel(address)
    stream = DurableStream(lambda: _wire.durable_stub(channel), (), lambda: "w")
    try:
        first = asyncio.ensure_future(stream.request((TASK, 1), _memo_request()))
        await _until(lambda: servicer.memos == 1, "the first memo reached the engine")
        first.cancel()  # the body gave up waiting (a timeout around it, say)
        second = asyncio.ensure_future(stream.request((TASK, 1), _memo_request()))
        servicer.release.set()
        ack = await asyncio.wait_for(second, 10)
        assert ack.ref.node_id == 2, "the second request got the first one's answer"
    finally:
        await stream.close()
        await channel.close()
        await server.stop(0)


async def test_memoised_values_are_said_again_after_a_reconnect() -> None:
    servicer = Scripted()
    servicer.connections = 1
    servicer.release.set()
    server, address = await _serve(servicer)
    channel = grpc.aio.insecure_channel(address)
    stream = DurableStream(lambda: _wire.durable_stub(channel), (), lambda: "w")
    try:
        done = _wire.durable_complete_memo_request(TASK, 1, 7, b"k", b'"v"')
        await stream.complete_memo((TASK, 1, 7), done)
        await _until(lambda: servicer.completed == [(2, 7)], "the value stored")
        await server.stop(0)
        await _until(lambda: not stream._registered.is_set(), "the stream noticed")
        server, _ = await _serve_on(servicer, address)
        await stream.ensure_started()
        await _until(lambda: (3, 7) in servicer.completed, "the value said again")
        stream.forget((TASK, 1))  # the body ended: nothing more to say
        assert stream._completes == {}
    finally:
        await stream.close()
        await channel.close()
        await server.stop(0)


async def test_the_stream_registers_again_when_its_worker_does() -> None:
    servicer = Scripted()
    servicer.connections = 1
    servicer.release.set()
    server, address = await _serve(servicer)
    channel = grpc.aio.insecure_channel(address)
    worker = ["w-1"]
    stream = DurableStream(lambda: _wire.durable_stub(channel), (), lambda: worker[0])
    try:
        await stream.ensure_started()
        worker[0] = "w-2"  # the worker's listener registered again, under a new id
        ack = await asyncio.wait_for(stream.request((TASK, 1), _memo_request()), 10)
        assert ack.ref.node_id == 1
        assert servicer.registered == ["w-1", "w-2"]
        assert servicer.seen[-1][:3] == ["register_worker", "register_worker", "memo"]
    finally:
        await stream.close()
        await channel.close()
        await server.stop(0)
