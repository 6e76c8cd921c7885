"""Waiting for results on hewer.v1.Runs/Wait with fake stubs: many run ids per request,
many results per response, and the fallback to SubscribeToWorkflowRuns for good."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from hewer._proto import dispatcher_pb2
from hewer._proto.hewer.v1 import worker_pb2
from hewer.sdk import _runs, _wire
from hewer.sdk._runs import RunClient
from hewer.sdk._time import Backoff


class Unimplemented(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNIMPLEMENTED

    def details(self) -> str:
        return "Method not found!"


def finished(run_id: str) -> Any:
    return dispatcher_pb2.WorkflowRunEvent(
        workflow_run_id=run_id,
        event_type=dispatcher_pb2.WORKFLOW_RUN_EVENT_TYPE_FINISHED,
        results=[dispatcher_pb2.StepRunResult(task_name="t", output=f'{{"id":"{run_id}"}}')],
    )


class Engine:
    """Fake Wait and SubscribeToWorkflowRuns: records each request's run ids and answers
    every run asked for, ``per_response`` at a time (Wait)."""

    def __init__(self, *, wait: bool = True, per_response: int = 1000) -> None:
        self.wait = wait
        self.per_response = per_response
        self.wait_requests: list[list[str]] = []
        self.subscribe_requests: list[str] = []
        self.wait_calls = 0
        self.subscribe_calls = 0

    # --- async ---------------------------------------------------------------------------

    def aio_wait(self, requests: AsyncIterator[Any], **kwargs: Any) -> Any:
        self.wait_calls += 1
        return _AioCall(self._aio_answers(requests, batched=True))

    def aio_subscribe(self, requests: AsyncIterator[Any], **kwargs: Any) -> Any:
        self.subscribe_calls += 1
        return _AioCall(self._aio_answers(requests, batched=False))

    async def _aio_answers(self, requests: AsyncIterator[Any], batched: bool) -> Any:
        if batched and not self.wait:
            raise Unimplemented()
        async for request in requests:
            for message in self._answer(request, batched):
                yield message

    def _answer(self, request: Any, batched: bool) -> list[Any]:
        if not batched:
            self.subscribe_requests.append(request.workflow_run_id)
            return [finished(request.workflow_run_id)]
        ids = list(request.run_ids)
        self.wait_requests.append(ids)
        chunks = [ids[i : i + self.per_response] for i in range(0, len(ids), self.per_response)]
        return [worker_pb2.WaitResponse(events=[finished(r) for r in chunk]) for chunk in chunks]

    # --- blocking ------------------------------------------------------------------------

    def sync_wait(self, requests: Iterator[Any], **kwargs: Any) -> Any:
        self.wait_calls += 1
        return _SyncCall(self, requests, batched=True)

    def sync_subscribe(self, requests: Iterator[Any], **kwargs: Any) -> Any:
        self.subscribe_calls += 1
        return _SyncCall(self, requests, batched=False)


class _AioCall:
    def __init__(self, answers: Any) -> None:
        self._answers = answers

    def __aiter__(self) -> Any:
        return self._answers

    def cancel(self) -> None:
        pass

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED


class _SyncCall:
    """Reads requests on a thread of its own, like gRPC does."""

    def __init__(self, engine: Engine, requests: Iterator[Any], batched: bool) -> None:
        self._out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._engine = engine
        self._batched = batched
        if batched and not engine.wait:
            self._out.put(Unimplemented())
            return
        threading.Thread(target=self._read, args=(requests,), daemon=True).start()

    def _read(self, requests: Iterator[Any]) -> None:
        for request in requests:
            for message in self._engine._answer(request, self._batched):
                self._out.put(message)

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> None:
        self._out.put(None)


class Pool:
    metadata = (("authorization", "bearer t"),)

    def sync(self) -> str:
        return "sync-channel"

    def aio(self) -> str:
        return "aio-channel"


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Engine:
    fake = Engine()

    def runs_stub(channel: str) -> Any:
        wait = fake.aio_wait if channel == "aio-channel" else fake.sync_wait
        return type("Runs", (), {"Wait": staticmethod(wait)})

    def dispatcher_stub(channel: str) -> Any:
        subscribe = fake.aio_subscribe if channel == "aio-channel" else fake.sync_subscribe
        return type("Dispatcher", (), {"SubscribeToWorkflowRuns": staticmethod(subscribe)})

    monkeypatch.setattr(_wire, "hewer_runs_stub", runs_stub)
    monkeypatch.setattr(_wire, "dispatcher_stub", dispatcher_stub)
    return fake


def client() -> RunClient:
    return RunClient(Pool(), backoff=Backoff(initial=0.001, cap=0.01))  # type: ignore[arg-type]


async def test_async_waiters_share_requests_and_responses(engine: Engine) -> None:
    engine.per_response = 7
    runs = client()
    ids = [f"run-{i}" for i in range(50)]
    events = await asyncio.gather(*(runs.aio_wait(i) for i in ids))
    assert [e.run_id for e in events] == ids
    # Everything subscribed before the request went out is in it; answered 7 per message.
    assert engine.wait_requests == [ids]
    assert engine.wait_calls == 1 and engine.subscribe_calls == 0
    # A run waited for twice is asked for once.
    twice = await asyncio.gather(runs.aio_wait("again"), runs.aio_wait("again"))
    assert [e.run_id for e in twice] == ["again", "again"]
    assert engine.wait_requests[-1] == ["again"]
    await runs.aclose()


async def test_runs_subscribed_while_the_stream_is_open_go_in_one_request(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first run is answered only once the others were subscribed too.
    release = asyncio.Event()
    answer = engine._aio_answers

    async def held(requests: AsyncIterator[Any], batched: bool) -> Any:
        async for message in answer(requests, batched):
            await release.wait()
            yield message

    monkeypatch.setattr(engine, "_aio_answers", held)
    runs = client()
    first = asyncio.ensure_future(runs.aio_wait("first"))
    async with asyncio.timeout(5):
        while engine.wait_requests != [["first"]]:
            await asyncio.sleep(0.001)
    later = [asyncio.ensure_future(runs.aio_wait(f"later-{i}")) for i in range(5)]
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *later), 5)
    assert engine.wait_requests == [["first"], [f"later-{i}" for i in range(5)]]
    await runs.aclose()


def test_blocking_wait_many_asks_for_all_runs_in_one_request(engine: Engine) -> None:
    runs = client()
    ids = [f"run-{i}" for i in range(10)]
    events = runs.wait_many(ids)
    assert [e.run_id for e in events] == ids
    assert engine.wait_requests == [ids]
    assert runs.wait("one").run_id == "one"
    assert engine.subscribe_calls == 0


def test_more_runs_than_one_request_takes_go_in_several(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_runs, "MAX_RUNS_PER_WAIT", 4)
    runs = client()
    ids = [f"run-{i}" for i in range(10)]
    assert [e.run_id for e in runs.wait_many(ids)] == ids
    assert engine.wait_requests == [ids[0:4], ids[4:8], ids[8:10]]


def test_an_engine_without_wait_makes_the_client_subscribe_for_good(engine: Engine) -> None:
    engine.wait = False
    runs = client()
    assert [e.run_id for e in runs.wait_many(["a", "b"])] == ["a", "b"]
    assert engine.subscribe_requests == ["a", "b"]

    async def more() -> list[str]:
        events = await asyncio.gather(runs.aio_wait("c"), runs.aio_wait("d"))
        await runs.aclose()
        return [e.run_id for e in events]

    assert asyncio.run(more()) == ["c", "d"]
    assert runs.wait("e").run_id == "e"
    # Asked once, answered UNIMPLEMENTED; never again, blocking or async.
    assert engine.wait_calls == 1
    assert engine.subscribe_requests == ["a", "b", "c", "d", "e"]
